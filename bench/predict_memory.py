"""Benchmark: peak memory of `predict` on one 12-megapixel photo, bounded vs. full-size inference.

    python -m bench.predict_memory [--rounds=2] [--megapixels=12]

A MobileNetV2 (depth multiplier 0.5, as the demo trains) is trained for one step on the synthetic
dataset and exported; `steps.predict` then segments one 4000x3000 JPEG (at 12 MP) in a fresh
process, once with the default --max_inference_pixels and once with 0 (the whole photo at full
size), alternately `rounds` times. The peak resident memory of each child comes from the kernel
(wait4's rusage). The JSON line reports the medians and their ratio.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')


def _run(*args):
  subprocess.run([sys.executable, '-m', *args], check=True, env=ENV, capture_output=True)


def _model(folder):
  raw, tfrecords = os.path.join(folder, 'raw'), os.path.join(folder, 'tfrecords.tar.gz')
  checkpoint, model = os.path.join(folder, 'checkpoint.tar.gz'), os.path.join(folder, 'model.tar.gz')
  _run('deeplab.datasets.synthetic', '--layout=folder', f'--output={raw}', '--seed=0',
       '--num_train=4', '--num_val=1')
  _run('steps.build_data', '--dataset=folder', f'--raw_data={raw}', f'--output={tfrecords}',
       '--num_shards=1', '--num_workers=1')
  _run('steps.train', f'--tfrecords={tfrecords}', f'--output={checkpoint}', '--depth_multiplier=0.5',
       '--training_number_of_steps=1', '--train_batch_size=2', '--train_crop_size=65,65',
       f'--train_logdir={os.path.join(folder, "logs")}')
  _run('steps.export', f'--checkpoint={checkpoint}', f'--output={model}')
  return model


def _peak_rss_mib(model, images, output, max_pixels):
  """(peak RSS in MiB, seconds) of one predict process."""
  started = time.perf_counter()
  process = subprocess.Popen(
      [sys.executable, '-m', 'steps.predict', f'--model={model}', f'--images={images}',
       f'--output={output}', f'--max_inference_pixels={max_pixels}'],
      env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _, status, usage = os.wait4(process.pid, 0)
  seconds = time.perf_counter() - started
  if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f'predict failed: {process.stderr.read().decode()[-2000:]}')
  return usage.ru_maxrss / 1024, seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--megapixels', type=float, default=12)
  args = parser.parse_args()
  from steps.predict import SPEC
  bounded_pixels = SPEC.parameter('max_inference_pixels').default
  with tempfile.TemporaryDirectory() as folder:
    model = _model(folder)
    images = os.path.join(folder, 'photo')
    os.makedirs(images)
    width = int((args.megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(width * 3 / 4)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (height // 40, width // 40, 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(
        os.path.join(images, 'photo.jpg'), quality=90)
    results = {'bounded': [], 'full_size': []}
    for _ in range(args.rounds):
      for name, pixels in (('bounded', bounded_pixels), ('full_size', 0)):
        results[name].append(_peak_rss_mib(model, images, os.path.join(folder, f'{name}.tar.gz'),
                                           pixels))
  summary = {name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
             for name, runs in results.items()}
  print(json.dumps({
      'benchmark': 'predict_memory', 'image': f'{width}x{height}', 'rounds': args.rounds,
      'max_inference_pixels': bounded_pixels,
      'bounded_peak_rss_mib': round(summary['bounded'][0]),
      'full_size_peak_rss_mib': round(summary['full_size'][0]),
      'bounded_seconds': round(summary['bounded'][1], 1),
      'full_size_seconds': round(summary['full_size'][1], 1),
      'memory_ratio': round(summary['bounded'][0] / summary['full_size'][0], 3),
      'load_average': os.getloadavg()[0]}), flush=True)


if __name__ == '__main__':
  main()
