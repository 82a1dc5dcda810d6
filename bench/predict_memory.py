"""Benchmark: peak memory of `predict` on a 12-megapixel photo, bounded vs. full-size inference,
and on a 13000x13000 PNG among small images, with and without --max_image_pixels.

    python -m bench.predict_memory [--rounds=2] [--megapixels=12] [--large_side=13000]

A MobileNetV2 (depth multiplier 0.5, as the demo trains) is trained for one step on the synthetic
dataset and exported. Each contender is `steps.predict` in a fresh process, interleaved `rounds`
times (bench/harness.py); a value is the child's peak resident memory, its VmHWM
(harness.peak_rss_mib).

- predict_memory: one 4000x3000 JPEG (at 12 MP), with the default --max_inference_pixels and
  with 0 (the whole photo at full size); the ratio says how much memory that bound saves.
- predict_large_png: three small photos and a 1-bit PNG of `large_side` squared pixels (20 KB,
  under Pillow's own bomb bound): `unbounded` (--max_image_pixels=0) decodes and segments it;
  `default` refuses it from its header (the step fails naming it, as it must); `default_49mp`
  replaces it with a 7000x7000 PNG, the largest kind the default accepts, so its peak is the
  step's memory bound with the default settings.
"""
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw

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


def drawn_png(path, side, mode):
  """A `side` x `side` PNG of a few filled shapes: a few kilobytes, however many pixels."""
  image = Image.new(mode, (side, side))
  draw = ImageDraw.Draw(image)
  for i in range(1, 5):
    box = (side * i // 10, side * i // 12, side * (i + 4) // 10, side * (i + 3) // 12)
    draw.ellipse(box, fill=1 if mode == '1' else (60 * i, 255 - 50 * i, 40))
  image.save(path, optimize=True)


def measure(args):
  with tempfile.TemporaryDirectory() as folder:
    model = export_demo_model(folder)
    return [measure_photo(args, folder, model), measure_large_png(args, folder, model)]


def measure_large_png(args, folder, model) -> harness.Measurement:
  from steps.predict import SPEC
  rng = np.random.default_rng(1)
  inputs = {}
  for case, side, mode in (('huge', args.large_side, '1'), ('largest_accepted', 7000, 'RGB')):
    images = inputs[case] = os.path.join(folder, case)
    os.makedirs(images)
    for i in range(3):
      small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
      Image.fromarray(small).resize((640, 480), Image.BILINEAR).save(
          os.path.join(images, f'photo{i}.jpg'), quality=90)
    drawn_png(os.path.join(images, 'large.png'), side, mode)
  large_bytes = os.path.getsize(os.path.join(inputs['huge'], 'large.png'))
  default_pixels = SPEC.parameter('max_image_pixels').default

  def predict_with(name, images, *flags, expect_error=''):
    def run():
      return harness.peak_rss_mib(
          'steps.predict', [f'--model={model}', f'--images={images}',
                            f'--output={os.path.join(folder, f"{name}.tar.gz")}', *flags], ENV,
          expect_error)[0]
    return run

  values = harness.interleave({
      'unbounded': predict_with('unbounded', inputs['huge'], '--max_image_pixels=0'),
      'default': predict_with('default', inputs['huge'], expect_error='large.png'),
      'default_49mp': predict_with('default_49mp', inputs['largest_accepted']),
  }, args.rounds)
  return harness.Measurement(
      'predict_large_png', 'peak MiB', 'unbounded', values, higher_is_better=False,
      target=f'a {args.large_side}x{args.large_side} 1-bit PNG ({large_bytes} bytes) among 3 '
             f'photos; --max_image_pixels={default_pixels}: refused from its header; '
             'default_49mp: the bound with the defaults')


def measure_photo(args, folder, model) -> harness.Measurement:
  from steps.predict import SPEC
  bounded_pixels = SPEC.parameter('max_inference_pixels').default
  seconds = {}
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
  parser.add_argument('--large_side', type=int, default=13000)


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
