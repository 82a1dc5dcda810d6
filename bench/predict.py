"""Benchmark: `predict` images/s end to end, on its default runtime vs. on the frozen graph, and vs.
its model alone on the same images.

    python -m bench.predict [--rounds=5] [--photos=96] [--size=384,512]

The demo's MobileNetV2 (bench/predict_memory.py's model) segments `photos` JPEGs of `size`
(height, width): the demo photos of the shared fixtures resized, or smooth random images. Per
round, `steps.predict` runs in a fresh process and reports the images/s of its loop (decode,
inference, blending and encoding with its default settings: JPEG overlays; without the process
start and the archive), twice: with its default `--model_format=auto` (the TFLite model of any
input size) and with `--model_format=frozen_graph` (what auto ran before TFLite took any size:
the baseline of `predict`). The baseline of `predict_overhead` is the default model, freshly
loaded in this process, predicting the same images already decoded. All include the model's first
run (kernel set-up, Grappler's rewrite for the frozen graph: about ten images' worth), so the
overhead ratio is the cost of what predict adds; 96 photos make that start a tenth of a round.
Targets: predict >= 1.6 x predict on the frozen graph; predict >= 0.8 x the model alone.
"""
import contextlib
import os
import subprocess
import sys
import tempfile
import time

from bench import harness, reference_model
from bench.predict_memory import ENV, export_demo_model


def _predict_step(model, images, output, model_format='auto'):
  """images/s of one `steps.predict` run, as the step reports it."""
  completed = subprocess.run(
      [sys.executable, '-m', 'steps.predict', f'--model={model}', f'--images={images}',
       f'--output={output}', f'--model_format={model_format}'], env=ENV, capture_output=True,
      text=True, check=True)
  return harness.step_metric(completed.stdout, 'images_per_sec')


def _model_alone(model, images):
  """images/s of the default model in `model` (model.tar.gz), loaded afresh, over `images`
  (decoded)."""
  from steps import artifacts
  with contextlib.ExitStack() as stack:
    runner = artifacts.Model.open(stack, model).load()
    stack.callback(runner.close)
    started = time.perf_counter()
    for image in images:
      runner.predict(image)
    return len(images) / (time.perf_counter() - started)


def measure(args):
  from PIL import Image
  size = tuple(int(v) for v in args.size.split(','))
  with tempfile.TemporaryDirectory() as folder:
    model = export_demo_model(folder)
    images = reference_model.photos(size, args.photos)
    photos = os.path.join(folder, 'photos')
    os.makedirs(photos)
    for index, image in enumerate(images):
      Image.fromarray(image).save(os.path.join(photos, f'{index:04d}.jpg'), quality=90)
    output = os.path.join(folder, 'predictions.tar.gz')
    values = harness.interleave(
        {'model_alone': lambda: _model_alone(model, images),
         'predict_step': lambda: _predict_step(model, photos, output),
         'predict_frozen_graph': lambda: _predict_step(model, photos, output, 'frozen_graph')},
        args.rounds)
  described = f'{args.photos} JPEGs {size[1]}x{size[0]}'
  return [harness.Measurement(
              'predict', 'images/s', 'predict_frozen_graph',
              {name: values[name] for name in ('predict_frozen_graph', 'predict_step')},
              target=f'{described}: predict_step >= 1.6 x predict_frozen_graph'),
          harness.Measurement(
              'predict_overhead', 'images/s', 'model_alone',
              {name: values[name] for name in ('model_alone', 'predict_step')},
              target=f'{described}: predict_step >= 0.8 x model_alone')]


def add_arguments(parser):
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--photos', type=int, default=96)
  parser.add_argument('--size', default='384,512')


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
