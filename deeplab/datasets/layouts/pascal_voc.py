"""PASCAL VOC 2012 segmentation (`pascal_voc_seg`): 21 classes, 255 = boundary/ignore.

Layout: `VOCdevkit/VOC2012/`, or the `VOC2012/` folder itself. Images `JPEGImages/<id>.jpg`,
labels `SegmentationClassRaw/<id>.png` when that folder exists, else `SegmentationClass/<id>.png`
(palette PNGs: the palette index is the class id, 255 = ignore). Splits:
`ImageSets/Segmentation/<split>.txt`. `train_aug` is a split when `SegmentationClassAug/` exists
next to its list `ImageSets/Segmentation/train_aug.txt`; its labels come from
`SegmentationClassAug/`.
"""
from __future__ import annotations

import glob
import os

from deeplab import colormaps
from deeplab.datasets.layouts import base

CLASS_NAMES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
    'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
    'train', 'tvmonitor')


class PascalVoc(base.Dataset):
  """PASCAL VOC 2012 segmentation (21 classes, 255 = boundary/ignore)."""
  name = 'pascal_voc_seg'
  layout_help = ('VOCdevkit/VOC2012/ (or VOC2012/) with JPEGImages/, SegmentationClass/ and '
                 'ImageSets/Segmentation/<split>.txt')
  root_candidates = ('VOC2012', os.path.join('VOCdevkit', 'VOC2012'))
  AUG_SPLIT = 'train_aug'

  def __init__(self):
    super().__init__(21, 255, CLASS_NAMES, colormaps.pascal_colormap(21))

  def _is_root(self, folder):
    return (os.path.isdir(os.path.join(folder, 'JPEGImages'))
            and os.path.isdir(os.path.join(folder, 'ImageSets', 'Segmentation')))

  def splits(self, root):
    lists = sorted(glob.glob(os.path.join(root, 'ImageSets', 'Segmentation', '*.txt')))
    names = [os.path.basename(p)[:-len('.txt')] for p in lists]
    has_aug = os.path.isdir(os.path.join(root, 'SegmentationClassAug'))
    return [n for n in names if n != self.AUG_SPLIT or has_aug]

  def _label_dir(self, root, split):
    if split == self.AUG_SPLIT:
      return os.path.join(root, 'SegmentationClassAug')
    raw = os.path.join(root, 'SegmentationClassRaw')
    return raw if os.path.isdir(raw) else os.path.join(root, 'SegmentationClass')

  def scan(self, root, split):
    self.check_split(root, split)
    list_path = os.path.join(root, 'ImageSets', 'Segmentation', f'{split}.txt')
    label_dir = self._label_dir(root, split)
    image_dir = os.path.join(root, 'JPEGImages')
    ids, lines = base.read_id_list(root, list_path, split)
    return base.pair_files(split, root, ids,
                           lambda i: base.existing_file(os.path.join(image_dir, f'{i}.jpg')),
                           lambda i: base.existing_file(os.path.join(label_dir, f'{i}.png')),
                           list_path, (f'{image_dir}/<id>.jpg', f'{label_dir}/<id>.png'), lines)
