"""Benchmark: a TFLite model of any input size on images of changing sizes, one interpreter whose
input is resized at each change (what predict and serve run) vs. one interpreter per size.

    python -m bench.tflite_sizes [--rounds=5] [--cycles=4] [--image_sizes=480x640,513x513,375x500]

The model is DeepLabv3 MobileNetV2 (bench/reference_model.py), exported as TFLite of any input
size. A value is the mean milliseconds per image over `cycles` passes through one image of each
size, the size changing at every image (the worst case for resizing; a folder of photos from one
camera changes size never). `resized` is `inference.TFLitePredictor`: one interpreter, its input
resized and its buffers planned again whenever the size changes. `per_size` keeps one such
predictor per size (an LRU cache holding every size: each keeps its buffers and its own packed
weights). The notes give what each way costs besides: the milliseconds of one resize (resizing
the input and planning the buffers), the set-up of an interpreter for a new size (creation and
first run), and the resident memory each cached interpreter adds.
"""
import os
import statistics
import tempfile
import time

import numpy as np

from bench import harness, reference_model


def _resident_mib():
  with open('/proc/self/statm') as statm:
    return int(statm.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def _per_image_ms(predict, images, cycles):
  def run():
    started = time.perf_counter()
    for _ in range(cycles):
      for image in images:
        predict(image)
    return (time.perf_counter() - started) / (cycles * len(images)) * 1000
  return run


def _resize_ms(path, images):
  """Milliseconds of resizing an interpreter's input and planning its buffers again, as
  TFLitePredictor does at each change of size (median of three passes through the sizes)."""
  from ai_edge_litert.interpreter import Interpreter
  interpreter = Interpreter(model_path=path, num_threads=len(os.sched_getaffinity(0)))
  index = interpreter.get_input_details()[0]['index']
  times = []
  for image in images * 3:
    started = time.perf_counter()
    interpreter.resize_tensor_input(index, [1, *image.shape[:2], 3])
    interpreter.allocate_tensors()
    times.append((time.perf_counter() - started) * 1000)
    interpreter.set_tensor(index, image[np.newaxis])
    interpreter.invoke()
  return statistics.median(times[len(images):])  # the first pass plans buffers from nothing


def measure(args):
  from deeplab import inference
  from deeplab.export import tflite
  sizes = [tuple(int(v) for v in size.split('x')) for size in args.image_sizes.split(',')]
  images = [reference_model.photos(size, 1)[0] for size in sizes]
  with tempfile.TemporaryDirectory() as folder:
    config, prefix = reference_model.write_checkpoint(folder)
    path = os.path.join(folder, 'any_size.tflite')
    tflite.write_tflite(config, prefix, path)

    resize_ms = _resize_ms(path, images)
    per_size, setup_ms, added_mib = {}, [], []
    for image in images:
      before, started = _resident_mib(), time.perf_counter()
      per_size[image.shape[:2]] = inference.TFLitePredictor(path)
      per_size[image.shape[:2]].predict(image)
      setup_ms.append((time.perf_counter() - started) * 1000)
      added_mib.append(_resident_mib() - before)

    values = harness.interleave(
        {'per_size': _per_image_ms(lambda image: per_size[image.shape[:2]].predict(image),
                                   images, args.cycles),
         'resized': _per_image_ms(inference.TFLitePredictor(path).predict, images, args.cycles)},
        args.rounds)
  return harness.Measurement(
      'tflite_sizes', 'ms/image', 'per_size', values, higher_is_better=False,
      target='measured: the choice docs/serving.md explains',
      notes={'resize_ms': resize_ms, 'new_size_setup_ms': statistics.median(setup_ms),
             'cached_interpreter_mib': statistics.median(added_mib),
             'load_average': harness.load_average()})


def add_arguments(parser):
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--cycles', type=int, default=4)
  parser.add_argument('--image_sizes', default='480x640,513x513,375x500')


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
