"""predict: model + images -> predictions.tar.gz (label PNGs + colour overlays, JPEG or PNG, and
predictions.json, the manifest: steps/artifacts.py Predictions).

Images come from a folder, an archive or a list file of paths and mounted object-store URLs. With
--num_shards N the run segments only the images whose name hashes to --shard_index (shard_of in
steps/artifacts.py); merge_predictions joins the N artifacts (docs/batch_prediction.md).

The model runs on the main thread, one image at a time, while a small thread pool decodes the
next images and blends and encodes the previous ones (PIL, zlib and numpy release the GIL): the
step runs at about the model's speed with JPEG overlays (PNG ones cost several times their CPU).
Each image's outputs depend on that image alone, and the archive is written sorted, so the bytes
do not depend on the threads' timing.

Memory: every image's size (of this shard) is read from its header before any is decoded, and one
larger than --max_image_pixels (after the reduced decoding a JPEG allows) stops the step with an
error naming it, before the model is loaded: a batch is all or nothing. The images decoded
ahead, being inferred and being encoded hold at most --max_image_pixels pixels together (a pixel
budget), so a large photo goes through alone and small ones several at a time.
"""
import collections
import concurrent.futures
import contextlib
import logging
import os
import re
import time
from typing import NamedTuple

from deeplab import containment
from deeplab.config import InferenceConfig, PredictConfig, settings_of
from deeplab.errors import UserError
from steps import archives, artifacts, locations, runtime
from steps.flags import Path, StepSpec, parameters_from, parse_flags

log = logging.getLogger('steps.predict')

SPEC = StepSpec(
    name='predict',
    description='Segment images with an exported model: raw label PNGs and colour overlays.',
    inputs=(
        Path('model', 'model.tar.gz from export'),
        Path('images', 'JPEG/PNG images: a folder, an archive, or a .txt file listing image paths '
                     '(relative to its folder) or object-store URLs (see --images_mount)'),
    ),
    outputs=(Path('output', 'label PNGs + overlays (a shard of several: '
                 'predictions-<shard_index>-of-<num_shards>.tar.gz, five digits each)',
                 filename=artifacts.Predictions.filename),),
    parameters=parameters_from(PredictConfig),
)

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
# --images as a text file listing images (paths or object-store URLs), one a line.
LIST_SUFFIX = '.txt'
URL_SCHEME = re.compile(r'[A-Za-z][A-Za-z0-9+.-]*://')
# Images decoded ahead of the model, and images being blended and encoded behind it: enough to keep
# the model busy, few enough that memory stays a few images' worth (large photos included).
DECODED_AHEAD = 2
ENCODING_BEHIND = 2
WORKER_THREADS = 2


class ImageEntry(NamedTuple):
  name: str  # relative path without suffix, `/` separators: the outputs' name, the shard key
  source: str  # as the input names it: a path relative to the folder, or the list file's entry
  path: str  # where it is read from
  where: str  # the list file and line naming it, or the input path


def find_images(folder):
  """Image files under `folder` (recursively, sorted by name) as ImageEntry.

  Outputs are named after the relative name, so two files that differ only in their suffix (or
  its case: `a.jpg`, `a.PNG`) would write one result over the other: that is refused.
  """
  found, seen = [], {}
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    for filename in sorted(filenames):
      stem, suffix = os.path.splitext(filename)
      if suffix.lower() in IMAGE_SUFFIXES and not filename.startswith('.'):
        path = os.path.join(dirpath, filename)
        source = os.path.relpath(path, folder).replace(os.sep, '/')
        name = os.path.splitext(source)[0]
        if name in seen:
          raise UserError(f'--images: {seen[name]} and {source} would both be written as '
                          f'labels/{name}.png; rename one of them')
        seen[name] = source
        found.append(ImageEntry(name, source, path, folder))
  return sorted(found)


def is_image_list(path: str) -> bool:
  return os.path.isfile(path) and path.endswith(LIST_SUFFIX)


def read_image_list(list_path: str, mounts):
  """The images a list file names, one a line (blank lines and `#` comments skipped), as ImageEntry.

  An entry is a path relative to the list file's folder, or a URL of an object store mapped to a
  local folder by `mounts` ((URL prefix, folder), longest first: PredictConfig.mounts). Both stay
  inside their folder (deeplab/containment.py); a URL no mount covers is refused, since the step
  downloads nothing. Names: a relative entry's path without suffix; a URL's, without scheme and
  suffix (gs://bucket/a/b.jpg -> bucket/a/b). Each error names the list file and the line."""
  folder = os.path.dirname(os.path.abspath(list_path))
  found, seen = [], {}
  with open(list_path, encoding='utf-8', errors='replace') as f:
    for number, line in enumerate(f, 1):
      entry = line.strip()
      if not entry or entry.startswith('#'):
        continue
      where = f'{list_path}, line {number}'
      scheme = URL_SCHEME.match(entry)
      if scheme:
        mapped = next(((prefix, root) for prefix, root in mounts if entry.startswith(prefix)), None)
        if mapped is None:
          raise UserError(f'{where}: {entry!r}: no --images_mount maps this URL; expected '
                          'PREFIX=FOLDER for the folder the orchestrator mounts it at (the step '
                          'downloads nothing)')
        prefix, root = mapped
        path = containment.resolve(root, entry[len(prefix):], where)
        name = os.path.splitext(os.path.normpath(entry[scheme.end():]))[0]
      else:
        path = containment.resolve(folder, entry, where)
        name = os.path.splitext(os.path.normpath(entry).replace(os.sep, '/'))[0]
      if os.path.splitext(entry)[1].lower() not in IMAGE_SUFFIXES:
        raise UserError(f'{where}: {entry!r} is not a .jpg/.jpeg/.png file')
      if name in seen:
        raise UserError(f'{where}: {entry!r} would be written as labels/{name}.png, as line '
                        f'{seen[name]} is; list each image once')
      seen[name] = number
      found.append(ImageEntry(name, entry, path, where))
  return sorted(found)


def list_images(stack: contextlib.ExitStack, images_path: str, config: PredictConfig):
  """Every image of --images (a folder, an archive or a list file), sorted by name."""
  list_path = archives.delivered_file(images_path, is_image_list)
  if list_path:
    for prefix, folder in config.mounts():
      if not os.path.isdir(folder):
        raise UserError(f'--images_mount={prefix}={folder}: {folder} is not a folder; expected '
                        f'the folder the store is mounted at')
    images = read_image_list(list_path, config.mounts())
  else:
    if config.images_mount:
      raise UserError(f'--images_mount is given but --images={images_path} is not a list file '
                      f'(*{LIST_SUFFIX}); mounts map the URLs a list file names')
    images = find_images(stack.enter_context(archives.open_input(images_path)))
  if not images:
    raise UserError(f'--images: no .jpg/.jpeg/.png files in {images_path}')
  return images


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
  config = PredictConfig.from_flags(args)
  model_path = locations.input_location('model', args.model)
  images_path = locations.input_location('images', args.images)
  out_path = locations.output_location(
      'output', args.output, artifacts.Predictions.shard_filename(config.shard_index,
                                                                  config.num_shards),
      {'model': model_path, 'images': images_path})
  import numpy as np
  from deeplab import visualize
  from deeplab.images import PixelBudget, image_pixels, predict_bounded, read_image
  with contextlib.ExitStack() as stack:
    model = artifacts.Model.open(stack, model_path)
    dataset = model.card.dataset
    every_image = list_images(stack, images_path, config)
    images = [image for image in every_image
              if artifacts.shard_of(image.name, config.num_shards) == config.shard_index]
    if config.num_shards > 1:
      log.info('shard %d of %d: %d of the %d images', config.shard_index, config.num_shards,
               len(images), len(every_image))
    for image in images:
      if not os.path.isfile(image.path):
        raise UserError(f'{image.where}: {image.path} does not exist')
    # From the headers, before the model loads: an image too large fails the step here.
    pixel_counts = [image_pixels(image.path, config.max_image_pixels) for image in images]
    budget = PixelBudget(config.max_image_pixels)
    runner = model.load(config.model_format)
    stack.callback(runner.close)
    settings = {info.name: getattr(config, info.name) for info in settings_of(InferenceConfig)}
    predictions = artifacts.Predictions.new(
        stack, model={'sha256': artifacts.folder_sha256(model.folder), 'format': runner.format},
        settings=settings,
        image_set={'count': len(every_image),
                   'sha256': artifacts.image_set_sha256(image.name for image in every_image)},
        num_shards=config.num_shards, shard_index=config.shard_index)
    del every_image  # a large set's names are not needed past here
    # Shut down before the staging folder goes: queued work is dropped, running work finishes.
    workers = concurrent.futures.ThreadPoolExecutor(WORKER_THREADS, 'predict-io')
    stack.callback(workers.shutdown, wait=True, cancel_futures=True)

    def read(path):
      return artifacts.file_sha256(path), read_image(path, config.max_image_pixels)

    def write(entry, image_sha256, image, labels, pixels):
      """Writes the image's outputs and gives its pixels back; returns its pixel count per class."""
      try:
        predictions.add(entry.name, entry.source, image_sha256, labels,
                        visualize.overlay(image, labels, dataset.colormap, config.overlay_alpha))
        return np.bincount(labels.ravel(), minlength=dataset.num_classes)
      finally:
        budget.release(pixels)

    class_pixels = np.zeros(dataset.num_classes, np.int64)
    started = time.perf_counter()
    encoding = collections.deque()
    with runtime.progress_bar(len(images), 'image', 'predict') as bar:
      for entry, pixels, (image_sha256, image) in zip(images, pixel_counts, _read_ahead(
          workers, read, [(entry.path, pixels) for entry, pixels in zip(images, pixel_counts)],
          budget)):
        labels = predict_bounded(runner, image, config.max_inference_pixels)
        encoding.append(workers.submit(write, entry, image_sha256, image, labels, pixels))
        del image, labels  # the writer owns them now: held here, they would outlive its budget
        while len(encoding) > ENCODING_BEHIND:
          class_pixels += encoding.popleft().result()  # raises the worker's error, if any
        bar.update()
      for written in encoding:
        class_pixels += written.result()
    elapsed = time.perf_counter() - started
    total = max(int(class_pixels.sum()), 1)  # an empty shard: every share 0
    shares = {name: float(count / total) for name, count in zip(dataset.class_names, class_pixels)}
    predictions.write(out_path)
  runtime.emit_metrics(images=len(images), images_per_sec=len(images) / max(elapsed, 1e-9),
                         **{f'share_{name}': share for name, share in shares.items()})
  log.info('wrote %d label maps and overlays to %s', len(images), out_path)


if __name__ == '__main__':
  runtime.run_step(main)
