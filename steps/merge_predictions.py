"""merge_predictions: the predictions.tar.gz of every predict shard -> one predictions.tar.gz, the
same, byte for byte, as one predict run over all the images.

A step of its own rather than a mode of predict: it needs no model, no TensorFlow and no images,
so it runs on a small machine after the fan-out, and predict keeps one model and one image set.

The shards must be all of one run: the same model, inference settings, image set and num_shards,
every shard_index once, and each image in the shard its name assigns it to (see
steps/artifacts.py shard_of). Anything else (an image in two shards, a shard missing, shards of
different runs) is refused with one line, and nothing is written. Each output file is checked
against the sha256 its shard's manifest records as it is copied.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil

from deeplab import containment
from deeplab.errors import UserError
from steps import artifacts, locations, runtime
from steps.flags import Path, StepSpec, parse_flags

log = logging.getLogger('steps.merge_predictions')

SPEC = StepSpec(
    name='merge_predictions',
    description='Merge the predictions of predict shards into the predictions of one run.',
    inputs=(Path('shards', 'a folder holding the predictions.tar.gz (or folder) of every predict '
                 'shard, under any names'),),
    outputs=(Path('output', 'the merged predictions', filename=artifacts.Predictions.filename),),
)

# What every shard of one run shares: manifest key -> how an error names it.
SHARED = (('model', 'model'), ('settings', 'inference settings'), ('image_set', 'image set'),
          ('num_shards', 'num_shards'))


def shard_paths(folder: str) -> list:
  """The shard artifacts in `folder`: every entry but hidden ones, sorted."""
  if not os.path.isdir(folder):
    raise UserError(f'--shards={folder}: expected a folder holding the shard artifacts')
  paths = [os.path.join(folder, e) for e in sorted(os.listdir(folder)) if not e.startswith('.')]
  if not paths:
    raise UserError(f'--shards={folder}: no shard artifacts in it')
  return paths


def check_shards(shards: dict) -> None:
  """Refuses shards that are not all the shards of one run: {path: Predictions}."""
  (first_path, first), *others = shards.items()
  for path, shard in others:
    for key, what in SHARED:
      if shard.manifest[key] != first.manifest[key]:
        raise UserError(f'{path} and {first_path} differ in {what} ({key}: '
                        f'{shard.manifest[key]!r} vs {first.manifest[key]!r}); expected the '
                        'shards of one predict run')
  num_shards = first.manifest['num_shards']
  by_index = {}
  for path, shard in shards.items():
    index = shard.manifest['shard_index']
    if index in by_index:
      raise UserError(f'{path} and {by_index[index]} are both shard {index} of {num_shards}: '
                      'their images overlap; give each shard once')
    by_index[index] = path
  missing = sorted(set(range(num_shards)) - set(by_index))
  if missing:
    shown = ', '.join(map(str, missing[:10])) + (', ...' if len(missing) > 10 else '')
    raise UserError(f'--shards: shard{"s" if len(missing) > 1 else ""} {shown} of {num_shards} '
                    'missing (a gap); give the output of every shard_index')
  owner = {}
  for path, shard in shards.items():
    for name in shard.manifest['images']:
      if name in owner:
        raise UserError(f'{path} and {owner[name]} both hold image {name!r}: the shards overlap')
      if artifacts.shard_of(name, num_shards) != shard.manifest['shard_index']:
        raise UserError(f'{path}: image {name!r} belongs to shard '
                        f'{artifacts.shard_of(name, num_shards)}, not '
                        f'{shard.manifest["shard_index"]}; expected the output of predict')
      owner[name] = path
  image_set = first.manifest['image_set']
  if (len(owner) != image_set['count']
      or artifacts.image_set_sha256(owner) != image_set['sha256']):
    raise UserError(f'--shards: the shards hold {len(owner)} images, not the {image_set["count"]} '
                    'of the image set they were given (a gap or a changed shard); expected the '
                    'outputs of one predict run')


def main(argv=None):
  args = parse_flags(SPEC, argv)
  shards_path = locations.input_location('shards', args.shards)
  out_path = locations.output_location('output', args.output, artifacts.Predictions.filename,
                                      {'shards': shards_path})
  with contextlib.ExitStack() as stack:
    shards = {path: artifacts.Predictions.open(stack, path) for path in shard_paths(shards_path)}
    check_shards(shards)
    first = next(iter(shards.values())).manifest
    merged = artifacts.Predictions.new(stack, model=first['model'], settings=first['settings'],
                                       image_set=first['image_set'])
    for path, shard in shards.items():
      for name, entry in shard.manifest['images'].items():
        for relative, expected in shard.files(name):
          source = containment.resolve(shard.folder, relative, path)  # no link out of it
          if not os.path.isfile(source) or artifacts.file_sha256(source) != expected:
            raise UserError(f'{path}: {relative} is missing or differs from the sha256 in '
                            f'{artifacts.PREDICTIONS_JSON}; the shard is damaged, run it again')
          target = os.path.join(merged.folder, relative)
          os.makedirs(os.path.dirname(target), exist_ok=True)
          shutil.copyfile(source, target)
        merged.manifest['images'][name] = entry
    merged.write(out_path)
  runtime.emit_metrics(images=len(merged.manifest['images']), shards=len(shards))
  log.info('merged %d shards (%d images) into %s', len(shards), len(merged.manifest['images']),
           out_path)


if __name__ == '__main__':
  runtime.run_step(main)
