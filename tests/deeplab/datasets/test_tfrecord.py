"""TFRecord length headers are checked against the bytes left in the file before anything is read
for them, and before TensorFlow (whose reader allocates the claimed length: a process killed by
SIGSEGV, or a MemoryError) is given the file. A sha256 in dataset.json that matches excuses nothing:
whoever crafted the shard can write the manifest too."""
import hashlib
import json
import os
import struct
import tarfile

import pytest

from deeplab import report
from deeplab.datasets import manifest as manifest_lib
from deeplab.datasets import tfrecord
from deeplab.errors import UserError
from tests.conftest import TINY_TRAIN_FLAGS, assert_one_error_line, run_step

HUGE = 2 ** 60


def _write_records(path, records):
  with open(path, 'wb') as f:
    writer = tfrecord.RecordWriter(f)
    for record in records:
      writer.write(record)


def _record_offset(path, index):
  """The byte offset of record `index` (read from the honest headers before it)."""
  data, offset = path.read_bytes(), 0
  for _ in range(index):
    offset += 12 + struct.unpack('<Q', data[offset:offset + 8])[0] + 4
  return offset


def _claim_length(path, index, length):
  """Rewrites record `index`'s length header to `length`, with a valid length CRC."""
  offset = _record_offset(path, index)
  header = struct.pack('<Q', length)
  data = bytearray(path.read_bytes())
  data[offset:offset + 12] = header + tfrecord._masked_crc(header)
  path.write_bytes(bytes(data))
  return offset


def _flip_data_byte(path, index):
  """Flips a byte inside record `index`'s data: its data CRC no longer holds."""
  offset = _record_offset(path, index)
  data = bytearray(path.read_bytes())
  data[offset + 12] ^= 0xff
  path.write_bytes(bytes(data))
  return offset


def _sha256(path):
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _extract(archive, folder):
  with tarfile.open(archive) as tar:
    tar.extractall(folder, filter='data')
  return folder


def _rehash(folder):
  """dataset.json's sha256 of every shard set to the shard as it is now (as an attacker would)."""
  path = folder / manifest_lib.MANIFEST_NAME
  data = json.loads(path.read_text())
  for split in data['splits'].values():
    for shard in split['shards']:
      shard['sha256'] = _sha256(folder / shard['file'])
  path.write_text(json.dumps(data))


def _drop_hashes(folder):
  path = folder / manifest_lib.MANIFEST_NAME
  data = json.loads(path.read_text())
  for split in data['splits'].values():
    for shard in split['shards']:
      del shard['sha256']
  path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------- the readers

@pytest.mark.parametrize('claim', [HUGE, 2 ** 64 - 1])
def test_a_lying_length_is_named_before_anything_is_read_for_it(tmp_path, claim):
  path = tmp_path / 'x.tfrecord'
  _write_records(path, [b'one' * 10, b'two' * 10, b'three' * 10])
  offset = _claim_length(path, 1, claim)
  available = path.stat().st_size - offset - 16
  expected = (f'{path}: record 1 at byte {offset}: claims {claim} bytes of data but only '
              f'{available} are left in the file')
  records = tfrecord.read_records(str(path))
  assert next(records) == b'one' * 10  # the records before it are read
  with pytest.raises(ValueError) as raised:  # not a MemoryError: nothing was allocated
    next(records)
  assert str(raised.value) == expected
  check = tfrecord.check_records(str(path))
  assert (check.problem, check.num_records, check.sha256) == (expected, 1, _sha256(path))


def test_a_length_is_accepted_up_to_exactly_the_bytes_left(tmp_path):
  path = tmp_path / 'x.tfrecord'
  _write_records(path, [b'a' * 40])
  assert tfrecord.check_records(str(path)).problem == ''
  # One byte more than the file holds is refused; so is a header cut short.
  _claim_length(path, 0, 41)
  assert 'claims 41 bytes of data but only 40 are left' in tfrecord.check_records(str(path)).problem
  path.write_bytes(path.read_bytes()[:7])
  assert 'truncated header (7 of 12 bytes)' in tfrecord.check_records(str(path)).problem


def test_a_bad_data_crc_is_found_even_when_the_length_holds(tmp_path):
  path = tmp_path / 'x.tfrecord'
  _write_records(path, [b'a' * 40, b'b' * 3000])
  offset = _flip_data_byte(path, 1)
  check = tfrecord.check_records(str(path))
  assert check.problem == f'{path}: record 1 at byte {offset}: corrupt data (CRC mismatch)'
  assert check.sha256 == _sha256(path)  # the whole file, past the problem
  with pytest.raises(ValueError, match='record 1 at byte'):
    list(tfrecord.read_records(str(path)))


def _manifest(folder, shard, sha256):
  entry = {'file': shard, 'num_examples': 3}
  if sha256:
    entry['sha256'] = sha256
  return manifest_lib.Manifest('folder', 4, 255, list('abcd'), [[0, 0, 0]] * 4,
                               {'train': manifest_lib.SplitInfo(3, [entry])}, folder=str(folder))


@pytest.mark.parametrize('hashed', [True, False], ids=['sha256 matches', 'no sha256'])
@pytest.mark.parametrize('damage', ['length', 'data crc'])
def test_verified_shards_are_walked_whether_or_not_a_sha256_matches(tmp_path, hashed, damage):
  path = tmp_path / 'train-00000-of-00001.tfrecord'
  _write_records(path, [b'one' * 10, b'two' * 10, b'three' * 10])
  offset = _claim_length(path, 2, HUGE) if damage == 'length' else _flip_data_byte(path, 2)
  loaded = _manifest(tmp_path, path.name, _sha256(path) if hashed else None)
  with pytest.raises(UserError) as raised:
    loaded.verified_shard_paths('train')
  message = str(raised.value)
  assert message.startswith(f'{path}: record 2 at byte {offset}: ')
  assert ('claims 1152921504606846976 bytes' if damage == 'length' else 'CRC mismatch') in message
  assert "the TFRecord shard of split 'train' is corrupt" in message


def test_a_shard_modified_since_its_sha256_is_named_as_such(tmp_path):
  path = tmp_path / 'train-00000-of-00001.tfrecord'
  _write_records(path, [b'one' * 10, b'two' * 10])
  written = _sha256(path)
  _claim_length(path, 1, HUGE)  # and its framing is bad too: the checksum speaks first
  with pytest.raises(UserError, match='corrupt or modified .its sha256 differs from dataset.json'):
    _manifest(tmp_path, path.name, written).verified_shard_paths('train')


def test_training_curves_stop_at_a_lying_events_record(tmp_path, caplog):
  """A checkpoint's TensorBoard events are TFRecord-framed too: evaluate reads them for the
  report's training curves."""
  from deeplab.compat import tf
  events = [tf.compat.v1.Event(step=step, summary=tf.compat.v1.Summary(value=[
      tf.compat.v1.Summary.Value(tag='loss', simple_value=1.0 / step)])) for step in (1, 2, 3)]
  path = tmp_path / 'events.out.tfevents.1.host'
  _write_records(path, [event.SerializeToString() for event in events])
  _claim_length(path, 2, HUGE)
  assert report.read_event_scalars(str(tmp_path)) == {'loss': [(1, 1.0), (2, 0.5)]}
  assert 'record 2 at byte' in caplog.text and 'the training curves end there' in caplog.text


# ----------------------------------------------------------------------------- the steps

@pytest.fixture
def lying_tfrecords(tmp_path, tiny_tfrecords):
  """The tiny dataset with record 1 of each shard claiming 2**60 bytes, dataset.json rehashed."""
  folder = _extract(tiny_tfrecords, tmp_path / 'lying')
  offsets = {}
  for shard in folder.glob('*.tfrecord'):
    offsets[shard.name.split('-')[0]] = (shard, _claim_length(shard, 1, HUGE))
  _rehash(folder)
  return folder, offsets


@pytest.mark.process
def test_train_on_a_lying_shard_with_a_matching_sha256_is_one_line_not_a_signal(tmp_path,
                                                                              lying_tfrecords):
  """Was: killed by SIGSEGV (exit -11) in TensorFlow's reader."""
  folder, offsets = lying_tfrecords
  shard, offset = offsets['train']
  out = tmp_path / 'out' / 'checkpoint.tar.gz'
  result = run_step('train', f'--tfrecords={folder}', f'--output={out}',
                    '--training_number_of_steps=1', f'--train_logdir={tmp_path / "work"}',
                    *TINY_TRAIN_FLAGS, cwd=tmp_path, check=False, isolated=True)
  assert_one_error_line(result, f'{shard}: record 1 at byte {offset}: claims 1152921504606846976 '
                        'bytes of data but only', "split 'train' is corrupt")
  assert not out.parent.exists() or os.listdir(out.parent) == []


@pytest.mark.parametrize('hashed', [True, False], ids=['sha256 matches', 'no sha256'])
def test_evaluate_on_a_lying_shard_is_one_line(tmp_path, lying_tfrecords, tiny_checkpoint, hashed):
  """Was: exit 139 with a matching sha256, a MemoryError traceback without one."""
  folder, offsets = lying_tfrecords
  if not hashed:
    _drop_hashes(folder)
  shard, offset = offsets['val']
  out = tmp_path / 'out' / 'metrics.json'
  result = run_step('evaluate', f'--tfrecords={folder}',
                               f'--checkpoint={tiny_checkpoint}', f'--output={out}', check=False)
  assert_one_error_line(result, f'{shard}: record 1 at byte {offset}: claims', "split 'val'")
  assert not out.parent.exists() or os.listdir(out.parent) == []


def test_train_on_a_crafted_data_crc_is_one_line_not_an_unexpected_error(tmp_path, tiny_tfrecords):
  """Was: `error: unexpected DataLossError` with a traceback, the sha256 matching."""
  folder = _extract(tiny_tfrecords, tmp_path / 'crafted')
  shard = next(folder.glob('train-*.tfrecord'))
  offset = _flip_data_byte(shard, 1)
  _rehash(folder)
  result = run_step('train', f'--tfrecords={folder}', f'--output={tmp_path / "c.tar.gz"}',
                               '--training_number_of_steps=1', f'--train_logdir={tmp_path / "work"}',
                               *TINY_TRAIN_FLAGS, check=False)
  assert_one_error_line(result, f'{shard}: record 1 at byte {offset}: corrupt data (CRC mismatch)')
  assert not (tmp_path / 'c.tar.gz').exists()


def test_export_checks_the_shards_it_reads_for_calibration(tmp_path, lying_tfrecords,
                                                           tiny_checkpoint):
  folder, offsets = lying_tfrecords
  shard, offset = offsets['train']
  out = tmp_path / 'model.tar.gz'
  result = run_step('export', f'--checkpoint={tiny_checkpoint}', f'--tfrecords={folder}',
                               '--export_formats=tflite', '--tflite_quantize=int8',
                               f'--output={out}', check=False)
  assert_one_error_line(result, f'{shard}: record 1 at byte {offset}: claims')
  assert not out.exists()
