"""Benchmark: peak memory of `predict` on one 12-megapixel photo, bounded vs. full-size inference.

    python -m bench.predict_memory [--rounds=2] [--megapixels=12]

A MobileNetV2 (depth multiplier 0.5, as the demo trains) is trained for one step on the synthetic
dataset and exported; `steps.predict` then segments one 4000x3000 JPEG (at 12 MP) in a fresh
process, once with the default --max_inference_pixels and once with 0 (the whole photo at full
size), interleaved `rounds` times (bench/harness.py). The peak resident memory of each child is
its VmHWM (harness.peak_rss_mib); the ratio full-size / bounded says how much memory the bound
saves.
"""
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

from bench import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')


def _run(*args):
  subprocess.run([sys.executable, '-m', *args], check=True, env=ENV, capture_output=True)


def export_demo_model(folder):
  """Trains the demo's MobileNetV2 for one step on the synthetic dataset and exports it; returns
  the path of model.tar.gz."""
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


def measure(args) -> harness.Measurement:
  from steps.predict import SPEC
  bounded_pixels = SPEC.parameter('max_inference_pixels').default
  seconds = {}
  with tempfile.TemporaryDirectory() as folder:
    model = export_demo_model(folder)
    images = os.path.join(folder, 'photo')
    os.makedirs(images)
    width = int((args.megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(width * 3 / 4)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (height // 40, width // 40, 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(
        os.path.join(images, 'photo.jpg'), quality=90)

    def predict_with(name, pixels):
      def run():
        peak, took = harness.peak_rss_mib(
            'steps.predict', [f'--model={model}', f'--images={images}',
                              f'--output={os.path.join(folder, f"{name}.tar.gz")}',
                              f'--max_inference_pixels={pixels}'], ENV)
        seconds.setdefault(name, []).append(took)
        return peak
      return run

    values = harness.interleave({'full_size': predict_with('full_size', 0),
                                 'bounded': predict_with('bounded', bounded_pixels)}, args.rounds)
  return harness.Measurement(
      'predict_memory', 'peak MiB', 'full_size', values, higher_is_better=False,
      target=f'a {width}x{height} photo, --max_inference_pixels={bounded_pixels}: bounded',
      notes={f'{name}_seconds': statistics.median(took) for name, took in seconds.items()})


def add_arguments(parser):
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--megapixels', type=float, default=12)


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
