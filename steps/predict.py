"""predict: model + images -> predictions.tar.gz (label PNGs + colour overlays)."""
import contextlib
import logging
import os
import time

from deeplab.errors import UserError
from steps import artifacts
from steps.flags import FLOAT, Parameter, Path, StepSpec, parse_flags

log = logging.getLogger('steps.predict')

SPEC = StepSpec(
    name='predict',
    description='Segment images with an exported model: raw label PNGs and colour overlays.',
    inputs=(
        Path('model', 'model.tar.gz from export'),
        Path('images', 'JPEG/PNG images: a folder or an archive'),
    ),
    outputs=(Path('output', 'label PNGs + overlays', filename='predictions.tar.gz'),),
    parameters=(
        Parameter('overlay_alpha', FLOAT, 0.5, 'opacity of the colour mask over the image', min=0, max=1),
    ),
)

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')


def find_images(folder):
  """Image files under `folder` (recursively, sorted) as (relative name without suffix, path)."""
  found = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    for filename in sorted(filenames):
      stem, suffix = os.path.splitext(filename)
      if suffix.lower() in IMAGE_SUFFIXES and not filename.startswith('.'):
        relative = os.path.relpath(os.path.join(dirpath, stem), folder)
        found.append((relative, os.path.join(dirpath, filename)))
  return found


def read_image(path):
  """RGB uint8 [H, W, 3] of an image file, EXIF orientation applied; a bad file is a UserError."""
  import numpy as np
  from PIL import Image, ImageOps, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      return np.asarray(image.convert('RGB'))
  except (OSError, UnidentifiedImageError, SyntaxError) as e:
    raise UserError(f'{path}: not a readable JPEG/PNG image ({e})') from None


def _target(staging, kind, name):
  path = os.path.join(staging, kind, name + '.png')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return path


def main():
  args = parse_flags(SPEC)
  model_path = artifacts.input_location('predict', 'model', args.model)
  images_path = artifacts.input_location('predict', 'images', args.images)
  out_path = artifacts.output_location('predict', 'output', args.output, 'predictions.tar.gz')
  import numpy as np
  from PIL import Image
  from deeplab import checkpoint, export, visualize
  with contextlib.ExitStack() as stack:
    model_dir = stack.enter_context(artifacts.open_input(model_path, marker=checkpoint.MODEL_JSON))
    dataset = checkpoint.read_model_json(model_dir)['dataset']
    graph_path = os.path.join(model_dir, export.FROZEN_GRAPH)
    if not os.path.exists(graph_path):
      raise UserError(f'--model: {model_path} has no {export.FROZEN_GRAPH}; expected the output '
                      'of the export step')
    images = find_images(stack.enter_context(artifacts.open_input(images_path)))
    if not images:
      raise UserError(f'--images: no .jpg/.jpeg/.png files in {images_path}')
    frozen = export.FrozenModel(graph_path)
    stack.callback(frozen.close)
    staging = stack.enter_context(artifacts.staging_dir('predictions'))
    pixel_counts = np.zeros(dataset['num_classes'], np.int64)
    started = time.perf_counter()
    for name, path in images:
      image = read_image(path)
      labels, _ = frozen.predict(image)
      pixel_counts += np.bincount(labels.ravel(), minlength=len(pixel_counts))
      visualize.save_label_png(labels, _target(staging, 'labels', name))
      Image.fromarray(visualize.overlay(image, labels, dataset['colormap'], args.overlay_alpha)
                      ).save(_target(staging, 'overlays', name))
    elapsed = time.perf_counter() - started
    shares = {name: float(count / pixel_counts.sum())
              for name, count in zip(dataset['class_names'], pixel_counts)}
    artifacts.write_tarball(staging, out_path)
  artifacts.emit_metrics(images=len(images), images_per_sec=len(images) / max(elapsed, 1e-9),
                         **{f'share_{name}': share for name, share in shares.items()})
  log.info('wrote %d label maps and overlays to %s', len(images), out_path)


if __name__ == '__main__':
  artifacts.run_step(main)
