"""`dataset.json`: the self-describing manifest that travels with TFRecord shards.

    {
      "format_version": 1,
      "name": "pascal_voc_seg",
      "num_classes": 21,
      "ignore_label": 255,
      "class_names": ["background", ...],
      "colormap": [[0, 0, 0], ...],                 # one RGB triple per class
      "splits": {
        "train": {
          "num_examples": 1464,
          "shards": [{"file": "train-00000-of-00004.tfrecord", "num_examples": 366, "sha256": "..."}],
          "label_histogram": [123, ...]              # pixels per class id (ignore label excluded)
        }
      },
      "skipped": [{"split": "train", "id": "...", "reason": "..."}]
    }

TFRecords written by the original DeepLab tools have no manifest: `load_dataset` then builds one
from a known dataset's description (`--dataset=<name>`) and the `{split}-NNNNN-of-NNNNN.tfrecord`
shard names found in the folder.

The original names Cityscapes' splits `train_fine`, `val_fine`, `test_fine` (so does build_data);
shards built under the folder names `train`, `val` exist too. A split is found by either name:
`val` finds `val_fine` and `val_fine` finds `val` (`resolve_split`).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Dict, List, Optional

from deeplab import containment
from deeplab.config import MAX_CLASSES, BuildConfig, check_bounds, settings_of
from deeplab.datasets import tfrecord
from deeplab.errors import UserError

MANIFEST_NAME = 'dataset.json'
FORMAT_VERSION = 1
# The suffix of the original's names for splits of fine annotations (Cityscapes).
FINE_SUFFIX = '_fine'
_SHARD_RE = re.compile(r'^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$')


def shard_name(split: str, index: int, count: int) -> str:
  return f'{split}-{index:05d}-of-{count:05d}.tfrecord'


@dataclasses.dataclass
class SplitInfo:
  num_examples: int
  shards: List[dict]
  label_histogram: Optional[List[int]] = None


@dataclasses.dataclass
class DatasetClasses:
  """What names and colours a dataset's labels; the manifest and a model's model.json share it."""
  name: str
  num_classes: int
  ignore_label: int
  class_names: List[str]
  colormap: List[List[int]]

  def check(self) -> None:
    """Raises a UserError unless these facts, read from a file, are what build_data can write:
    `num_classes` within the bounds the flags have (1..config.MAX_CLASSES; it sizes the logits and
    every per-class array), `ignore_label` within --ignore_label's, one name and one RGB colour per
    class."""
    ignore_label_setting = next(s for s in settings_of(BuildConfig) if s.name == 'ignore_label')
    for key, value, bounds in (('num_classes', self.num_classes, (1, MAX_CLASSES)),
                               ('ignore_label', self.ignore_label,
                                (ignore_label_setting.min, ignore_label_setting.max))):
      if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f'{key}={value!r}: expected an integer')
      try:
        check_bounds(value, *bounds)
      except ValueError as e:
        raise UserError(f'{key}={value}: {e}') from None
    if (not isinstance(self.class_names, list) or len(self.class_names) != self.num_classes
        or not all(isinstance(n, str) for n in self.class_names)):
      raise UserError(f'class_names: expected {self.num_classes} names (num_classes), got '
                      f'{_brief(self.class_names)}')
    if (not isinstance(self.colormap, list) or len(self.colormap) != self.num_classes
        or not all(isinstance(c, list) and len(c) == 3
                   and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in self.colormap)):
      raise UserError(f'colormap: expected {self.num_classes} colours (num_classes) of three '
                      f'values 0..255, got {_brief(self.colormap)}')


def _brief(value) -> str:
  """`value` for an error line: its repr, cut short."""
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + '...'


@dataclasses.dataclass
class DatasetInfo(DatasetClasses):
  """What a trained model keeps of its dataset (model.json's "dataset"): enough to name and colour
  its predictions, and the split sizes it was trained with."""
  split_sizes: Dict[str, int] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> 'DatasetInfo':
    """The facts of a model.json's "dataset", checked (`check`)."""
    info = cls(name=data['name'], num_classes=data['num_classes'],
               ignore_label=data['ignore_label'], class_names=data['class_names'],
               colormap=data['colormap'], split_sizes=dict(data.get('split_sizes', {})))
    info.check()
    return info


@dataclasses.dataclass
class Manifest(DatasetClasses):
  splits: Dict[str, SplitInfo]
  skipped: List[dict] = dataclasses.field(default_factory=list)
  folder: str = ''  # where the shards are; not serialized

  def resolve_split(self, split: str) -> str:
    """The name `split` has here: itself, else the same name with or without `FINE_SUFFIX`."""
    if split in self.splits:
      return split
    other = split[:-len(FINE_SUFFIX)] if split.endswith(FINE_SUFFIX) else split + FINE_SUFFIX
    if other in self.splits:
      return other
    known = ', '.join(sorted(self.splits)) or 'none'
    raise UserError(f'split {split!r} is not in the dataset {self.name!r} at {self.folder} '
                    f'(splits found: {known})')

  def label_histogram(self, split: str) -> Optional[List[int]]:
    """Pixels per class id of `split` (None for shards without dataset.json)."""
    return self.splits[self.resolve_split(split)].label_histogram

  def shard_paths(self, split: str) -> List[str]:
    """The shard files of `split`, each inside the manifest's folder (`containment.resolve`: a
    name in dataset.json that is absolute, has `..` or leads out through a link is refused)."""
    manifest_path = os.path.join(self.folder, MANIFEST_NAME)
    source = manifest_path if os.path.exists(manifest_path) else self.folder
    return [containment.resolve(self.folder, shard.get('file') if isinstance(shard, dict) else None,
                                source)
            for shard in self.splits[self.resolve_split(split)].shards]

  def verified_shard_paths(self, split: str) -> List[str]:
    """`shard_paths(split)`, each shard checked before it is read.

    Every record of every shard is walked first (`tfrecord.check_records`): its length against the
    bytes left in the file, then both CRCs, so that no reader (TensorFlow's allocates the claimed
    length) meets a lying length or a bad CRC mid-run. A matching sha256 does not excuse the walk:
    whoever wrote the shard may have written dataset.json too. A shard with a sha256 in dataset.json
    must also hash to it (a shard modified since build_data is named as such).
    """
    paths = self.shard_paths(split)
    for shard, path in zip(self.splits[self.resolve_split(split)].shards, paths):
      if not os.path.isfile(path):
        raise UserError(f'{path}: shard of split {split!r} is missing; expected the files '
                        f'{MANIFEST_NAME} lists')
      check = tfrecord.check_records(path)
      expected = shard.get('sha256')
      if expected and check.sha256 != expected:
        raise UserError(f'{path}: TFRecord shard of split {split!r} is corrupt or modified (its '
                        f'sha256 differs from {MANIFEST_NAME}); rebuild the TFRecords with build_data')
      if check.problem:
        raise UserError(f'{check.problem}: the TFRecord shard of split {split!r} is corrupt; '
                        'rebuild the TFRecords with build_data')
    return paths

  def to_json(self) -> dict:
    return {
        'format_version': FORMAT_VERSION,
        'name': self.name,
        'num_classes': self.num_classes,
        'ignore_label': self.ignore_label,
        'class_names': list(self.class_names),
        'colormap': [list(map(int, c)) for c in self.colormap],
        'splits': {k: dataclasses.asdict(v) for k, v in sorted(self.splits.items())},
        'skipped': list(self.skipped),
    }

  def describe(self) -> 'DatasetInfo':
    """The dataset facts a trained model keeps in model.json (no shard list)."""
    return DatasetInfo(name=self.name, num_classes=self.num_classes, ignore_label=self.ignore_label,
                       class_names=list(self.class_names),
                       colormap=[list(map(int, c)) for c in self.colormap],
                       split_sizes={k: v.num_examples for k, v in sorted(self.splits.items())})

  @classmethod
  def from_json(cls, data: dict, folder: str = '') -> 'Manifest':
    path = os.path.join(folder, MANIFEST_NAME)
    try:
      splits = {k: SplitInfo(**v) for k, v in data['splits'].items()}
      manifest = cls(name=data['name'], num_classes=data['num_classes'],
                     ignore_label=data['ignore_label'], class_names=data['class_names'],
                     colormap=data['colormap'], splits=splits,
                     skipped=list(data.get('skipped', [])), folder=folder)
      manifest.check()
      return manifest
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      raise UserError(f'{path}: malformed manifest ({e!r})') from None
    except UserError as e:
      raise UserError(f'{path}: {e}') from None


def write_manifest(manifest: Manifest, folder: str) -> str:
  path = os.path.join(folder, MANIFEST_NAME)
  with open(path, 'w') as f:
    json.dump(manifest.to_json(), f, indent=2, sort_keys=True)
    f.write('\n')
  return path


def read_manifest(folder: str) -> Manifest:
  path = os.path.join(folder, MANIFEST_NAME)
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f'{path}: not valid JSON ({e})') from None
  return Manifest.from_json(data, folder)


def find_shards(folder: str) -> Dict[str, List[str]]:
  """Shard file names per split, from the original DeepLab naming `{split}-NNNNN-of-NNNNN.tfrecord`."""
  splits: Dict[str, List[str]] = {}
  for path in sorted(glob.glob(os.path.join(folder, '*.tfrecord'))):
    match = _SHARD_RE.match(os.path.basename(path))
    if match:
      splits.setdefault(match.group('split'), []).append(os.path.basename(path))
  return splits


def load_dataset(folder: str, dataset: str = '') -> Manifest:
  """The manifest of the TFRecords in `folder`.

  With `dataset.json` present it is authoritative (a `dataset` name that disagrees is an error).
  Without it (TFRecords from the original DeepLab tools), `dataset` must name a known dataset.
  """
  if os.path.exists(os.path.join(folder, MANIFEST_NAME)):
    manifest = read_manifest(folder)
    if dataset and dataset != manifest.name:
      raise UserError(f'--dataset={dataset} disagrees with {os.path.join(folder, MANIFEST_NAME)}, '
                      f'which says {manifest.name!r}; drop --dataset or pass the right TFRecords')
    return manifest
  shards = find_shards(folder)
  if not shards:
    raise UserError(f'{folder}: no {MANIFEST_NAME} and no shards named '
                    '{split}-NNNNN-of-NNNNN.tfrecord; expected the output of build_data')
  if not dataset:
    raise UserError(f'{folder}: TFRecords without {MANIFEST_NAME} (made by the original DeepLab '
                    'tools?): pass --dataset=<name> to say which dataset they hold')
  from deeplab.datasets import layouts
  info = layouts.get(dataset)
  if not info.num_classes:
    raise UserError(f'{folder}: TFRecords without {MANIFEST_NAME} cannot be read as --dataset='
                    f'{dataset}, which has no fixed classes; pass the tfrecords.tar.gz of build_data')
  splits = {split: SplitInfo(num_examples=-1, shards=[{'file': f} for f in files])
            for split, files in shards.items()}  # -1: unknown until read
  return Manifest(name=info.name, num_classes=info.num_classes, ignore_label=info.ignore_label,
                  class_names=list(info.class_names), colormap=[list(c) for c in info.colormap],
                  splits=splits, folder=folder)
