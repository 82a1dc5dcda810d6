"""Any other dataset (`folder`): an image folder and a mask folder side by side.

Layout: an image folder (`images/`, `imgs/` or `img/`; .jpg, .jpeg or .png) and a mask folder
(`masks/`, `gts/`, `gt/`, `labels/` or `annotations/`; .png) side by side.
- An example id is a file name without its extension and without a suffix shared by every file
  of that folder (`_` + a word starting with a letter): `imgs/00001_img.jpg` and
  `gts/00001_gt.png` are both example `00001`; `images/a.jpg` pairs with `masks/a.png`.
- Split lists (one id per line) are `splits/*.txt`, or when there is no `splits/` folder, any of
  `train.txt`, `val.txt`, `trainval.txt`, `test.txt`, `train_aug.txt` at the root. Without any
  list, every image is in split `train`.
- Classes: `class_names` (option) or a `class_names.txt` at the root (one name per line) fix
  `num_classes`; else `num_classes` (option), else one more than the largest label found.
- Masks are single-channel class ids (mode L, or P whose indices are the ids); `ignore_label`
  (default 255) is not a class.
"""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Optional, Sequence, Tuple

from deeplab import colormaps
from deeplab.datasets.layouts import base
from deeplab.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def default_class_names(num_classes: int) -> List[str]:
  return ['background'] + [f'class_{i}' for i in range(1, num_classes)]


class Folder(base.Dataset):
  """Generic image/mask folders with optional split lists (see the module docstring)."""
  name = 'folder'
  IMAGE_DIRS = ('images', 'imgs', 'img')
  MASK_DIRS = ('masks', 'gts', 'gt', 'labels', 'annotations')
  ROOT_SPLIT_NAMES = ('train', 'val', 'trainval', 'test', 'train_aug')
  CLASS_NAMES_FILE = 'class_names.txt'
  layout_help = (f'an image folder ({"|".join(IMAGE_DIRS)}/) and a mask folder '
                 f'({"|".join(MASK_DIRS)}/), with optional splits/<split>.txt id lists')

  def __init__(self, num_classes: int = 0, ignore_label: int = 255,
               class_names: Sequence[str] = ()):
    if class_names and num_classes and num_classes != len(class_names):
      raise UserError(f'--num_classes={num_classes} disagrees with the {len(class_names)} names '
                      'of --class_names; give one of them')
    num_classes = len(class_names) or num_classes
    if num_classes and not class_names:
      class_names = default_class_names(num_classes)
    super().__init__(num_classes, ignore_label, class_names,
                     colormaps.pascal_colormap(num_classes))

  def with_classes(self, num_classes: int) -> 'Folder':
    """This dataset once its class count is known (from the labels when it was not given)."""
    return Folder(num_classes, self.ignore_label, self.class_names or ())

  def with_root(self, root):
    path = os.path.join(root, self.CLASS_NAMES_FILE)
    if self.class_names or not os.path.isfile(path):
      return self
    with open(base.contained_file(root, path), encoding='utf-8') as f:
      names = [line.strip() for line in f if line.strip()]
    if self.num_classes and self.num_classes != len(names):
      raise UserError(f'{path}: lists {len(names)} classes but --num_classes={self.num_classes}')
    return Folder(0, self.ignore_label, names)

  def _dirs(self, root) -> Tuple[Optional[str], Optional[str]]:
    def first(names):
      return next((os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))), None)
    return first(self.IMAGE_DIRS), first(self.MASK_DIRS)

  def _is_root(self, folder):
    image_dir, mask_dir = self._dirs(folder)
    return image_dir is not None and mask_dir is not None

  def _split_lists(self, root) -> Dict[str, str]:
    split_dir = os.path.join(root, 'splits')
    if os.path.isdir(split_dir):
      paths = glob.glob(os.path.join(split_dir, '*.txt'))
    else:
      paths = [os.path.join(root, f'{n}.txt') for n in self.ROOT_SPLIT_NAMES]
    return {os.path.basename(p)[:-len('.txt')]: p for p in sorted(paths) if os.path.isfile(p)}

  def splits(self, root):
    return sorted(self._split_lists(root)) or ['train']

  def scan(self, root, split):
    self.check_split(root, split)
    image_dir, mask_dir = self._dirs(root)
    images = base.files_by_stem(image_dir, IMAGE_EXTENSIONS, strip_suffix=True)
    masks = base.files_by_stem(mask_dir, ('.png',), strip_suffix=True)
    list_path = self._split_lists(root).get(split)
    if list_path:
      (ids, lines), where = base.read_id_list(root, list_path, split), list_path
    else:
      ids, lines, where = sorted(images), (), image_dir
      if not ids:
        raise UserError(f'{image_dir}: no images; expected <id>.jpg or <id>.png files')
    ambiguous = [base.Problem(split, i, f'{image_dir}: several images for id {i!r} (split '
                              f'{split!r}); expected one')
                 for i in dict.fromkeys(ids) if i in images and images[i] is None]
    examples, problems = base.pair_files(split, root, ids, images.get, masks.get, where,
                                         (f'{image_dir}/<id>.jpg|png', f'{mask_dir}/<id>.png'),
                                         lines)
    ambiguous_ids = {p.id for p in ambiguous}
    return examples, ambiguous + [p for p in problems if p.id not in ambiguous_ids]
