"""Benchmark of the TFRecord builder against the cost of just reading the data, in one run.

    python -m bench.build_data [--num_images=1000] [--image_size=375,500] [--rounds=3] [--keep=DIR]

Writes a synthetic PASCAL VOC layout of `num_images` VOC-sized images (90% train, 10% val) into a
temporary folder, then measures on the same files, interleaved round by round (bench/harness.py):
- the floor: one process reading every raw file and decoding every label (the least any builder
  must do);
- the build_data step (train + val) in a process of its own, with 1 worker and with one worker
  per core, at the images/s it reports (its build, without process start and packing).
Reports images/s, the per-round ratio of each build to the floor (target: >= 0.5 on all cores)
and the peak resident memory of the step's process tree (the step + its workers, sampled;
target: < 1 GB).
"""
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import harness  # noqa: E402
from deeplab.datasets import build, layouts, synthetic  # noqa: E402


class PeakMemory:
  """Samples the summed RSS of process `pid` and all its descendants until stopped."""

  def __init__(self, pid: int, interval: float = 0.05):
    self.pid = pid
    self.peak = 0
    self._interval = interval
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, sum(_rss(pid) for pid in _tree(self.pid)))
      self._stop.wait(self._interval)


def _tree(pid):
  pids = [pid]
  for task in _listdir(f'/proc/{pid}/task'):
    try:
      with open(f'/proc/{pid}/task/{task}/children') as f:
        for child in f.read().split():
          pids.extend(_tree(int(child)))
    except OSError:
      pass
  return pids


def _listdir(path):
  try:
    return os.listdir(path)
  except OSError:
    return []


def _rss(pid) -> int:
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def floor(examples) -> float:
  """Seconds to read every raw file and decode every label, in one process."""
  start = time.monotonic()
  for example in examples:
    with open(example.image, 'rb') as f:
      f.read()
    with open(example.label, 'rb') as f:
      np.asarray(Image.open(io.BytesIO(f.read())))
  return time.monotonic() - start


def measure(args) -> harness.Measurement:
  height, width = (int(v) for v in args.image_size.split(','))
  num_val = args.num_images // 10
  with tempfile.TemporaryDirectory(prefix='bench-build-data-') as tmp:
    raw = args.keep or os.path.join(tmp, 'raw')
    voc = layouts.get('pascal_voc_seg')
    if not os.path.isdir(raw):
      synthetic.write_dataset('pascal_voc_seg', raw, seed=0, num_train=args.num_images - num_val,
                              num_val=num_val, image_size=(height, width))
    root = voc.locate(raw)
    examples = [e for split in ('train', 'val') for e in voc.scan(root, split)[0]]
    floor(examples[:50])  # warm the page cache for every contender alike
    peaks = {}

    def build_with(workers):
      def run():
        out = tempfile.mkdtemp(dir=tmp)
        # The step in a process of its own, as users run it: this process may hold TensorFlow
        # (python -m bench ran the training benches before), which the build's memory must not
        # count.
        step = subprocess.Popen(
            [sys.executable, '-m', 'steps.build_data', '--dataset=pascal_voc_seg',
             f'--raw_data={raw}', f'--output={os.path.join(out, "tfrecords.tar.gz")}',
             '--splits=train,val', f'--num_workers={workers}'],
            env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        with PeakMemory(step.pid) as memory:
          stdout, stderr = step.communicate()
        if step.returncode:
          raise SystemExit(f'steps.build_data failed: {stderr[-2000:]}')
        peaks[workers] = max(peaks.get(workers, 0), memory.peak)
        shutil.rmtree(out)
        return harness.step_metric(stdout, 'images_per_sec')
      return run

    cores = build.default_num_workers()
    contenders = {'floor': lambda: len(examples) / floor(examples), 'build_1_worker': build_with(1)}
    if cores > 1:
      contenders[f'build_{cores}_workers'] = build_with(cores)
    values = harness.interleave(contenders, args.rounds)
  return harness.Measurement(
      'build_data', 'images/s', 'floor', values,
      target='all cores >= 0.5 x floor; peak RSS < 1 GiB',
      notes={f'peak_rss_mib_{workers}_workers': peak / 2 ** 20 for workers, peak in peaks.items()})


def add_arguments(parser):
  parser.add_argument('--num_images', type=int, default=1000)
  parser.add_argument('--image_size', default='375,500', help='height,width')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--keep', default='', help='generate into (or reuse) this folder')


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
