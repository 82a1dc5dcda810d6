"""Benchmark: what checking every shard before TensorFlow reads it costs, on the demo shards.

    python -m bench.shard_check [--rounds=7] [--repeat=20]

Every step that reads TFRecords first walks each shard (`tfrecord.check_records`: each record's
length against the bytes left, both CRCs, and the file's SHA-256, in one read). Contenders, in
MB/s over all shards of the demo dataset (build_data of the synthetic data with params.yaml's
settings), each pass repeated `repeat` times per round, interleaved round by round
(bench/harness.py), the page cache warm for all of them:
- `sha256` (the baseline): hashing the files alone, what the steps did before for shards with a
  checksum;
- `header_walk`: reading each 12-byte header and seeking past the data, the least that checks
  every length;
- `check_records`: the check the steps run;
- `tf_read`: TensorFlow's reader over the same shards (what the step does next anyway).
The target: the check costs at most 2.5 times the hash alone (ratio >= 0.4): it reads the bytes
once, like the hash, and adds the CRCs and a few Python calls per record (the demo's records are
about 7 KB, so the per-record calls weigh more than on real photos).
"""
import hashlib
import os
import tempfile
import time

from bench import harness
from bench.train_input import _make_tfrecords


def _sha256(path):
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def _header_walk(path):
  """The record count, checking each length by its header alone (what a seek-only walk costs)."""
  from deeplab.datasets import tfrecord
  size, offset, index = os.path.getsize(path), 0, 0
  with open(path, 'rb', buffering=0) as f:
    while offset < size:
      f.seek(offset)
      length = tfrecord._data_length(path, index, offset, f.read(12), size - offset)
      offset += 12 + length + 4
      index += 1
  return index


def _tf_read(tf, paths):
  return sum(1 for path in paths for _ in tf.compat.v1.io.tf_record_iterator(path))


def measure(args) -> harness.Measurement:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from deeplab.compat import tf
  from deeplab.datasets import tfrecord
  from deeplab.datasets.manifest import read_manifest

  with tempfile.TemporaryDirectory() as folder:
    manifest = read_manifest(_make_tfrecords(folder))
    paths = [p for split in manifest.splits for p in manifest.shard_paths(split)]
    megabytes = sum(os.path.getsize(p) for p in paths) / 1e6

    def rate(check):
      def run():
        started = time.perf_counter()
        for _ in range(args.repeat):
          check()
        return megabytes * args.repeat / (time.perf_counter() - started)
      return run

    checks = [tfrecord.check_records(p) for p in paths]
    assert not any(check.problem for check in checks), checks
    values = harness.interleave({
        'sha256': rate(lambda: [_sha256(p) for p in paths]),
        'header_walk': rate(lambda: [_header_walk(p) for p in paths]),
        'check_records': rate(lambda: [tfrecord.check_records(p) for p in paths]),
        'tf_read': rate(lambda: _tf_read(tf, paths)),
    }, args.rounds)
  return harness.Measurement(
      'shard_check', 'MB/s', 'sha256', values, target='check_records >= 0.4 x sha256',
      notes={'shard_megabytes': megabytes,
             'records': float(sum(check.num_records for check in checks))})


def add_arguments(parser):
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--repeat', type=int, default=20)


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
