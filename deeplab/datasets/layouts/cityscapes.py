"""Cityscapes fine annotations (`cityscapes`) as the 19 train ids, 255 = ignore.

Layout: `leftImg8bit/<split>/<city>/<id>_leftImg8bit.png` with
`gtFine/<split>/<city>/<id>_gtFine_labelTrainIds.png`, or, when only `<id>_gtFine_labelIds.png`
exists, the label ids mapped to the 19 train ids (others -> 255) by `TRAIN_ID_TABLE`.
Splits: the `leftImg8bit/` subfolders that have a `gtFine/` counterpart, named as the original
DeepLab's Cityscapes builder and reader name them: the folder plus `_fine` (`train_fine`,
`val_fine`, `test_fine`), so shards are `val_fine-NNNNN-of-NNNNN.tfrecord`. A split may be asked for
by its folder name too (`--splits=val`); its shards then carry the name asked for, and readers find
a split by either name (`Manifest.resolve_split`).
"""
from __future__ import annotations

import glob
import os

import numpy as np

from deeplab import colormaps
from deeplab.datasets.layouts import base
from deeplab.datasets.manifest import FINE_SUFFIX
from deeplab.errors import UserError

CLASS_NAMES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
    'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
    'bicycle')

# The official Cityscapes labelId -> trainId table; label ids not listed (0-6 void, parking, rail
# track, guard rail, bridge, tunnel, polegroup, caravan, trailer, license plate) are ignored (255).
LABEL_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
IGNORE_LABEL = 255


def _train_id_table() -> np.ndarray:
  table = np.full(256, IGNORE_LABEL, np.uint8)
  for label_id, train_id in LABEL_TO_TRAIN_ID.items():
    table[label_id] = train_id
  return table


# uint8[256]: label id -> train id, to map a whole label map at once (`TRAIN_ID_TABLE[label_ids]`).
TRAIN_ID_TABLE = _train_id_table()


class Cityscapes(base.Dataset):
  """Cityscapes fine annotations as the 19 train ids (255 = ignore)."""
  name = 'cityscapes'
  layout_help = ('leftImg8bit/<split>/<city>/*_leftImg8bit.png and '
                 'gtFine/<split>/<city>/*_gtFine_labelTrainIds.png (or _labelIds.png)')
  root_candidates = ('cityscapes',)
  IMAGE_SUFFIX = '_leftImg8bit.png'
  TRAIN_ID_SUFFIX = '_gtFine_labelTrainIds.png'
  LABEL_ID_SUFFIX = '_gtFine_labelIds.png'

  def __init__(self):
    super().__init__(19, IGNORE_LABEL, CLASS_NAMES, colormaps.cityscapes_colormap())

  def _is_root(self, folder):
    return (os.path.isdir(os.path.join(folder, 'leftImg8bit'))
            and os.path.isdir(os.path.join(folder, 'gtFine')))

  def splits(self, root):
    return sorted(folder + FINE_SUFFIX for folder in os.listdir(os.path.join(root, 'leftImg8bit'))
                  if os.path.isdir(os.path.join(root, 'gtFine', folder)))

  def scan(self, root, split):
    if not split.endswith(FINE_SUFFIX):
      split += FINE_SUFFIX
    self.check_split(root, split)
    folder = split[:-len(FINE_SUFFIX)]
    pattern = os.path.join(root, 'leftImg8bit', folder, '*', '*' + self.IMAGE_SUFFIX)
    images = sorted(glob.glob(pattern))
    if not images:
      raise UserError(f'{os.path.join(root, "leftImg8bit", folder)}: split {split!r} is empty; '
                      f'expected <city>/*{self.IMAGE_SUFFIX}')
    by_id = {os.path.basename(p)[:-len(self.IMAGE_SUFFIX)]: p for p in images}

    def label_of(example_id):
      city = os.path.basename(os.path.dirname(by_id[example_id]))
      stem = os.path.join(root, 'gtFine', folder, city, example_id)
      return (base.existing_file(stem + self.TRAIN_ID_SUFFIX)
              or base.existing_file(stem + self.LABEL_ID_SUFFIX))

    ids = [os.path.basename(p)[:-len(self.IMAGE_SUFFIX)] for p in images]
    return base.pair_files(
        split, root, ids, by_id.get, label_of, pattern,
        (pattern, f'gtFine/{folder}/<city>/<id>{self.TRAIN_ID_SUFFIX} or {self.LABEL_ID_SUFFIX}'))

  def label_table(self, label_path):
    return TRAIN_ID_TABLE if label_path.endswith(self.LABEL_ID_SUFFIX) else None
