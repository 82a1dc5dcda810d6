"""predict: model + images -> predictions.tar.gz (label PNGs + colour overlays)."""
import contextlib
import logging
import os
import time

from deeplab.config import PredictConfig
from deeplab.errors import UserError
from steps import artifacts
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


def main():
  args = parse_flags(SPEC)
  model_path = artifacts.input_location('predict', 'model', args.model)
  images_path = artifacts.input_location('predict', 'images', args.images)
  out_path = artifacts.output_location('predict', 'output', args.output,
                                      artifacts.Predictions.filename,
                                      {'model': model_path, 'images': images_path})
  config = PredictConfig.from_flags(args)
  import numpy as np
  from deeplab import visualize
  from deeplab.images import predict_bounded, read_image
  with contextlib.ExitStack() as stack:
    model = artifacts.Model.open(stack, model_path)
    dataset = model.card.dataset
    images = find_images(stack.enter_context(artifacts.open_input(images_path)))
    if not images:
      raise UserError(f'--images: no .jpg/.jpeg/.png files in {images_path}')
    runner = model.load(config.model_format)
    stack.callback(runner.close)
    predictions = artifacts.Predictions(stack)
    pixel_counts = np.zeros(dataset.num_classes, np.int64)
    started = time.perf_counter()
    with artifacts.progress_bar(len(images), 'image', 'predict') as bar:
      for name, path in images:
        image = read_image(path)
        labels = predict_bounded(runner, image, config.max_inference_pixels)
        pixel_counts += np.bincount(labels.ravel(), minlength=len(pixel_counts))
        predictions.add(name, labels,
                        visualize.overlay(image, labels, dataset.colormap, config.overlay_alpha))
        bar.update()
    elapsed = time.perf_counter() - started
    shares = {name: float(count / pixel_counts.sum())
              for name, count in zip(dataset.class_names, pixel_counts)}
    predictions.write(out_path)
  artifacts.emit_metrics(images=len(images), images_per_sec=len(images) / max(elapsed, 1e-9),
                         **{f'share_{name}': share for name, share in shares.items()})
  log.info('wrote %d label maps and overlays to %s', len(images), out_path)


if __name__ == '__main__':
  artifacts.run_step(main)
