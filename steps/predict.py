"""predict: model + images -> predictions.tar.gz (label PNGs + colour overlays, JPEG or PNG).

The model runs on the main thread, one image at a time, while a small thread pool decodes the
next images and blends and encodes the previous ones (PIL, zlib and numpy release the GIL): the
step runs at about the model's speed with JPEG overlays (PNG ones cost several times their CPU).
Each image's outputs depend on that image alone, and the archive is written sorted, so the bytes
do not depend on the threads' timing.

Memory: every image's size is read from its header before any is decoded, and one larger than
--max_image_pixels (after the reduced decoding a JPEG allows) stops the step with an error naming
it, before the model is loaded: a batch is all or nothing. The images decoded ahead, being inferred
and being encoded hold at most --max_image_pixels pixels together (a pixel budget), so a large
photo goes through alone and small ones several at a time.
"""
import collections
import concurrent.futures
import contextlib
import logging
import os
import time

from deeplab.config import PredictConfig
from deeplab.errors import UserError
from steps import archives, artifacts, locations, runtime
from steps.flags import Path, StepSpec, parameters_from, parse_flags

log = logging.getLogger('steps.predict')

SPEC = StepSpec(
    name='predict',
    description='Segment images with an exported model: raw label PNGs and colour overlays.',
    inputs=(
        Path('model', 'model.tar.gz from export'),
        Path('images', 'JPEG/PNG images: a folder or an archive'),
    ),
    outputs=(Path('output', 'label PNGs + overlays', filename=artifacts.Predictions.filename),),
    parameters=parameters_from(PredictConfig),
)

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
# Images decoded ahead of the model, and images being blended and encoded behind it: enough to keep
# the model busy, few enough that memory stays a few images' worth (large photos included).
DECODED_AHEAD = 2
ENCODING_BEHIND = 2
WORKER_THREADS = 2


def find_images(folder):
  """Image files under `folder` (recursively, sorted) as (relative name without suffix, path).

  Outputs are named after the relative name, so two files that differ only in their suffix (or
  its case: `a.jpg`, `a.PNG`) would write one result over the other: that is refused.
  """
  found, seen = [], {}
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    for filename in sorted(filenames):
      stem, suffix = os.path.splitext(filename)
      if suffix.lower() in IMAGE_SUFFIXES and not filename.startswith('.'):
        relative = os.path.relpath(os.path.join(dirpath, stem), folder)
        path = os.path.join(dirpath, filename)
        if relative in seen:
          raise UserError(f'--images: {os.path.relpath(seen[relative], folder)} and '
                          f'{os.path.relpath(path, folder)} would both be written as '
                          f'labels/{relative}.png; rename one of them')
        seen[relative] = path
        found.append((relative, path))
  return found


def _read_ahead(workers, read, items, budget):
  """read(path) of each (path, pixels) item, in order, with up to DECODED_AHEAD reads running
  ahead. Each read first takes its pixels from `budget` (an images.PixelBudget; the caller gives
  them back when done with the image): when they do not fit, the images already read are handed
  over first, and with none left the wait is for images being encoded, which finish on their own."""
  from deeplab.images import BudgetTimeout
  pending = collections.deque()
  for path, pixels in items:
    while True:
      try:
        budget.acquire(pixels, timeout=0 if pending else None)
        break
      except BudgetTimeout:
        yield pending.popleft().result()
    pending.append(workers.submit(read, path))
    if len(pending) > DECODED_AHEAD:
      yield pending.popleft().result()
  while pending:
    yield pending.popleft().result()


def main(argv=None):
  args = parse_flags(SPEC, argv)
  model_path = locations.input_location('model', args.model)
  images_path = locations.input_location('images', args.images)
  out_path = locations.output_location('output', args.output,
                                      artifacts.Predictions.filename,
                                      {'model': model_path, 'images': images_path})
  config = PredictConfig.from_flags(args)
  import numpy as np
  from deeplab import visualize
  from deeplab.images import PixelBudget, image_pixels, predict_bounded, read_image
  with contextlib.ExitStack() as stack:
    model = artifacts.Model.open(stack, model_path)
    dataset = model.card.dataset
    images = find_images(stack.enter_context(archives.open_input(images_path)))
    if not images:
      raise UserError(f'--images: no .jpg/.jpeg/.png files in {images_path}')
    # From the headers, before the model loads: an image too large fails the step here.
    pixel_counts = [image_pixels(path, config.max_image_pixels) for _, path in images]
    budget = PixelBudget(config.max_image_pixels)
    runner = model.load(config.model_format)
    stack.callback(runner.close)
    predictions = artifacts.Predictions.new(stack, config.overlay_format)
    # Shut down before the staging folder goes: queued work is dropped, running work finishes.
    workers = concurrent.futures.ThreadPoolExecutor(WORKER_THREADS, 'predict-io')
    stack.callback(workers.shutdown, wait=True, cancel_futures=True)

    def read(path):
      return read_image(path, config.max_image_pixels)

    def write(name, image, labels, pixels):
      """Writes the image's outputs and gives its pixels back; returns its pixel count per class."""
      try:
        predictions.add(name, labels,
                        visualize.overlay(image, labels, dataset.colormap, config.overlay_alpha))
        return np.bincount(labels.ravel(), minlength=dataset.num_classes)
      finally:
        budget.release(pixels)

    class_pixels = np.zeros(dataset.num_classes, np.int64)
    started = time.perf_counter()
    encoding = collections.deque()
    with runtime.progress_bar(len(images), 'image', 'predict') as bar:
      for (name, _), pixels, image in zip(images, pixel_counts, _read_ahead(
          workers, read, [(path, pixels) for (_, path), pixels in zip(images, pixel_counts)],
          budget)):
        labels = predict_bounded(runner, image, config.max_inference_pixels)
        encoding.append(workers.submit(write, name, image, labels, pixels))
        del image, labels  # the writer owns them now: held here, they would outlive its budget
        while len(encoding) > ENCODING_BEHIND:
          class_pixels += encoding.popleft().result()  # raises the worker's error, if any
        bar.update()
      for written in encoding:
        class_pixels += written.result()
    elapsed = time.perf_counter() - started
    shares = {name: float(count / class_pixels.sum())
              for name, count in zip(dataset.class_names, class_pixels)}
    predictions.write(out_path)
  runtime.emit_metrics(images=len(images), images_per_sec=len(images) / max(elapsed, 1e-9),
                         **{f'share_{name}': share for name, share in shares.items()})
  log.info('wrote %d label maps and overlays to %s', len(images), out_path)


if __name__ == '__main__':
  runtime.run_step(main)
