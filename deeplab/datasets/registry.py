"""The datasets DeepLab knows: their classes, and where their examples are in a raw folder.

`get(name, **options)` returns a dataset object with `name`, `num_classes`, `ignore_label`,
`class_names` and `colormap` (one RGB triple per class), and the layout methods the builder uses:
`locate(path)` (the dataset's root inside `path`), `splits(root)` (the split names found),
`scan(root, split)` (the split's `Example(split, id, image, label)`s and the `Problem`s met while
pairing files) and `label_table(label_path)` (a raw value -> class id lookup, or None).

Layouts (a folder, or the contents of an archive; a single wrapping folder is looked through):

- `pascal_voc_seg`: `VOCdevkit/VOC2012/`, or the `VOC2012/` folder itself. Images
  `JPEGImages/<id>.jpg`, labels `SegmentationClassRaw/<id>.png` when that folder exists, else
  `SegmentationClass/<id>.png` (palette PNGs: the palette index is the class id, 255 = ignore).
  Splits: `ImageSets/Segmentation/<split>.txt`. `train_aug` is a split when
  `SegmentationClassAug/` exists next to its list `ImageSets/Segmentation/train_aug.txt`; its labels
  come from `SegmentationClassAug/`.
- `ade20k`: `ADEChallengeData2016/` with `images/{training,validation}/<id>.jpg` and
  `annotations/{training,validation}/<id>.png` (mode L, 0 = 'other' = ignore, 1..150 classes);
  splits `train` and `val`.
- `cityscapes`: `leftImg8bit/<split>/<city>/<id>_leftImg8bit.png` with
  `gtFine/<split>/<city>/<id>_gtFine_labelTrainIds.png`, or, when only
  `<id>_gtFine_labelIds.png` exists, the label ids mapped to the 19 train ids (others -> 255).
  Splits: the `leftImg8bit/` subfolders that have a `gtFine/` counterpart.
- `folder` (generic): an image folder (`images/`, `imgs/` or `img/`; .jpg, .jpeg or .png) and a mask
  folder (`masks/`, `gts/`, `gt/`, `labels/` or `annotations/`; .png) side by side.
  * An example id is a file name without its extension and without a suffix shared by every file
    of that folder (`_` + a word starting with a letter): `imgs/00001_img.jpg` and
    `gts/00001_gt.png` are both example `00001`; `images/a.jpg` pairs with `masks/a.png`.
  * Split lists (one id per line) are `splits/*.txt`, or when there is no `splits/` folder, any of
    `train.txt`, `val.txt`, `trainval.txt`, `test.txt`, `train_aug.txt` at the root. Without any
    list, every image is in split `train`.
  * Classes: `class_names` (option) or a `class_names.txt` at the root (one name per line) fix
    `num_classes`; else `num_classes` (option), else one more than the largest label found.
  * Masks are single-channel class ids (mode L, or P whose indices are the ids); `ignore_label`
    (default 255) is not a class.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from deeplab import colormaps
from deeplab.errors import UserError

PASCAL_CLASS_NAMES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
    'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
    'train', 'tvmonitor')

# The SceneParsing (objectInfo150) names of the 150 ADE20K classes, synonyms joined by ';' as in
# the benchmark's class table, preceded by id 0 'other' (the ignore label).
ADE20K_CLASS_NAMES = ('other',) + (
    'wall', 'building;edifice', 'sky', 'floor;flooring', 'tree', 'ceiling', 'road;route', 'bed',
    'windowpane;window', 'grass', 'cabinet', 'sidewalk;pavement',
    'person;individual;someone;somebody;mortal;soul', 'earth;ground', 'door;double;door', 'table',
    'mountain;mount', 'plant;flora;plant;life', 'curtain;drape;drapery;mantle;pall', 'chair',
    'car;auto;automobile;machine;motorcar', 'water', 'painting;picture', 'sofa;couch;lounge',
    'shelf', 'house', 'sea', 'mirror', 'rug;carpet;carpeting', 'field', 'armchair', 'seat',
    'fence;fencing', 'desk', 'rock;stone', 'wardrobe;closet;press', 'lamp',
    'bathtub;bathing;tub;bath;tub', 'railing;rail', 'cushion', 'base;pedestal;stand', 'box',
    'column;pillar', 'signboard;sign', 'chest;of;drawers;chest;bureau;dresser', 'counter', 'sand',
    'sink', 'skyscraper', 'fireplace;hearth;open;fireplace', 'refrigerator;icebox',
    'grandstand;covered;stand', 'path', 'stairs;steps', 'runway', 'case;display;case;showcase;vitrine',
    'pool;table;billiard;table;snooker;table', 'pillow', 'screen;door;screen', 'stairway;staircase',
    'river', 'bridge;span', 'bookcase', 'blind;screen', 'coffee;table;cocktail;table',
    'toilet;can;commode;crapper;pot;potty;stool;throne', 'flower', 'book', 'hill', 'bench',
    'countertop', 'stove;kitchen;stove;range;kitchen;range;cooking;stove', 'palm;palm;tree',
    'kitchen;island',
    'computer;computing;machine;computing;device;data;processor;electronic;computer;information;'
    'processing;system',
    'swivel;chair', 'boat', 'bar', 'arcade;machine', 'hovel;hut;hutch;shack;shanty',
    'bus;autobus;coach;charabanc;double-decker;jitney;motorbus;motorcoach;omnibus;passenger;vehicle',
    'towel', 'light;light;source', 'truck;motortruck', 'tower', 'chandelier;pendant;pendent',
    'awning;sunshade;sunblind', 'streetlight;street;lamp', 'booth;cubicle;stall;kiosk',
    'television;television;receiver;television;set;tv;tv;set;idiot;box;boob;tube;telly;goggle;box',
    'airplane;aeroplane;plane', 'dirt;track', 'apparel;wearing;apparel;dress;clothes', 'pole',
    'land;ground;soil', 'bannister;banister;balustrade;balusters;handrail',
    'escalator;moving;staircase;moving;stairway', 'ottoman;pouf;pouffe;puff;hassock', 'bottle',
    'buffet;counter;sideboard', 'poster;posting;placard;notice;bill;card', 'stage', 'van', 'ship',
    'fountain', 'conveyer;belt;conveyor;belt;conveyer;conveyor;transporter', 'canopy',
    'washer;automatic;washer;washing;machine', 'plaything;toy',
    'swimming;pool;swimming;bath;natatorium', 'stool', 'barrel;cask', 'basket;handbasket',
    'waterfall;falls', 'tent;collapsible;shelter', 'bag', 'minibike;motorbike', 'cradle', 'oven',
    'ball', 'food;solid;food', 'step;stair', 'tank;storage;tank', 'trade;name;brand;name;brand;marque',
    'microwave;microwave;oven', 'pot;flowerpot', 'animal;animate;being;beast;brute;creature;fauna',
    'bicycle;bike;wheel;cycle', 'lake', 'dishwasher;dish;washer;dishwashing;machine',
    'screen;silver;screen;projection;screen', 'blanket;cover', 'sculpture', 'hood;exhaust;hood',
    'sconce', 'vase', 'traffic;light;traffic;signal;stoplight', 'tray',
    'ashcan;trash;can;garbage;can;wastebin;ash;bin;ash-bin;ashbin;dustbin;trash;barrel;trash;bin',
    'fan', 'pier;wharf;wharfage;dock', 'crt;screen', 'plate', 'monitor;monitoring;device',
    'bulletin;board;notice;board', 'shower', 'radiator', 'glass;drinking;glass', 'clock', 'flag')

CITYSCAPES_CLASS_NAMES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
    'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
    'bicycle')

# The official Cityscapes labelId -> trainId table; label ids not listed (0-6 void, parking, rail
# track, guard rail, bridge, tunnel, polegroup, caravan, trailer, license plate) are ignored (255).
CITYSCAPES_LABEL_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _lookup_table(mapping: Dict[int, int], default: int) -> np.ndarray:
  table = np.full(256, default, np.uint8)
  for source, target in mapping.items():
    table[source] = target
  return table


# uint8[256]: Cityscapes label id -> train id.
CITYSCAPES_TRAIN_ID_TABLE = _lookup_table(CITYSCAPES_LABEL_TO_TRAIN_ID, 255)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


@dataclasses.dataclass(frozen=True)
class Example:
  """One raw example: its split, id and the paths of its image and label files."""
  split: str
  id: str
  image: str
  label: str


@dataclasses.dataclass(frozen=True)
class Problem:
  """An example that cannot be built, found while pairing files (before reading them)."""
  split: str
  id: str
  message: str  # one line naming the file


class Dataset:
  """A dataset's classes and raw layout; subclasses define the layout."""
  name = ''
  layout_help = ''  # what `locate` looks for, for the error message
  root_candidates: Tuple[str, ...] = ()  # subfolders of the given path where the root may be
  # What the builder says when a label file is RGB instead of class ids.
  rgb_label_hint = 'expected a single-channel PNG of class ids (mode L, or P with ids as indices)'

  def __init__(self, num_classes: int, ignore_label: int, class_names: Sequence[str],
               colormap: Sequence[Sequence[int]]):
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self.class_names = list(class_names)
    self.colormap = [list(c) for c in colormap]

  def __repr__(self):
    return f'{type(self).__name__}(name={self.name!r}, num_classes={self.num_classes})'

  # Layout: overridden per dataset.
  def _is_root(self, folder: str) -> bool:
    raise NotImplementedError

  def splits(self, root: str) -> List[str]:
    raise NotImplementedError

  def scan(self, root: str, split: str) -> Tuple[List[Example], List[Problem]]:
    raise NotImplementedError

  def label_table(self, label_path: str) -> Optional[np.ndarray]:
    """A uint8[256] lookup from the values stored in `label_path` to class ids; None = identity."""
    del label_path
    return None

  def with_root(self, root: str) -> 'Dataset':
    """This dataset with whatever the root folder says about its classes (folder layout)."""
    del root
    return self

  def locate(self, path: str) -> str:
    """The dataset root inside `path`: itself, a known subfolder, or through single wrapping folders."""
    current = path
    while True:
      for candidate in ('',) + self.root_candidates:
        folder = os.path.join(current, candidate) if candidate else current
        if os.path.isdir(folder) and self._is_root(folder):
          return folder
      entries = [e for e in os.listdir(current) if not e.startswith('.')]
      if len(entries) != 1 or not os.path.isdir(os.path.join(current, entries[0])):
        raise UserError(f'{path}: not a {self.name} dataset; expected {self.layout_help}')
      current = os.path.join(current, entries[0])

  def check_split(self, root: str, split: str) -> None:
    known = self.splits(root)
    if split not in known:
      raise UserError(f'--splits: split {split!r} not found in {root} ({self.name} layout; '
                      f'splits found: {", ".join(known) or "none"})')


def _read_id_list(path: str, split: str) -> List[str]:
  """Example ids of a split list file: the first word of each non-empty line."""
  with open(path, encoding='utf-8') as f:
    ids = [line.split()[0] for line in f if line.strip()]
  if not ids:
    raise UserError(f'{path}: split {split!r} is empty; expected one example id per line')
  return ids


def _pair(split: str, ids: Sequence[str], image_of: Callable[[str], Optional[str]],
          label_of: Callable[[str], Optional[str]], where: str, expected: Tuple[str, str]
          ) -> Tuple[List[Example], List[Problem]]:
  """Examples for `ids` in order; missing files and repeated ids become Problems.

  `where` names the id list in messages; `expected` says where an image and a label belong.
  """
  examples, problems, seen = [], [], set()
  for example_id in ids:
    if example_id in seen:
      problems.append(Problem(split, example_id, f'{where}: duplicate id {example_id!r} in split '
                              f'{split!r}; expected each example once'))
      continue
    seen.add(example_id)
    image, label = image_of(example_id), label_of(example_id)
    if image is None:
      problems.append(Problem(split, example_id, f'{where}: no image for id {example_id!r} '
                              f'(split {split!r}); expected it in {expected[0]}'))
    elif label is None:
      problems.append(Problem(split, example_id, f'{image}: label missing (split {split!r}, id '
                              f'{example_id!r}); expected it in {expected[1]}'))
    else:
      examples.append(Example(split, example_id, image, label))
  return examples, problems


def _existing(path: str) -> Optional[str]:
  return path if os.path.isfile(path) else None


class PascalVoc(Dataset):
  """PASCAL VOC 2012 segmentation (21 classes, 255 = boundary/ignore)."""
  name = 'pascal_voc_seg'
  layout_help = ('VOCdevkit/VOC2012/ (or VOC2012/) with JPEGImages/, SegmentationClass/ and '
                 'ImageSets/Segmentation/<split>.txt')
  root_candidates = ('VOC2012', os.path.join('VOCdevkit', 'VOC2012'))
  AUG_SPLIT = 'train_aug'

  def __init__(self):
    super().__init__(21, 255, PASCAL_CLASS_NAMES, colormaps.pascal_colormap(21))

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
    return _pair(split, _read_id_list(list_path, split),
                 lambda i: _existing(os.path.join(image_dir, f'{i}.jpg')),
                 lambda i: _existing(os.path.join(label_dir, f'{i}.png')),
                 list_path, (f'{image_dir}/<id>.jpg', f'{label_dir}/<id>.png'))


class Ade20k(Dataset):
  """ADE20K SceneParsing (ADEChallengeData2016): 150 classes + 0 'other', which is ignored."""
  name = 'ade20k'
  layout_help = 'ADEChallengeData2016/ with images/{training,validation}/ and annotations/...'
  root_candidates = ('ADEChallengeData2016',)
  SPLIT_FOLDERS = {'train': 'training', 'val': 'validation'}
  rgb_label_hint = ('expected a mode L annotation of class ids 0..150 as in ADEChallengeData2016 '
                    '(RGB-encoded annotations of the full ADE20K index are not supported)')

  def __init__(self):
    super().__init__(151, 0, ADE20K_CLASS_NAMES, colormaps.ade20k_colormap())

  def _is_root(self, folder):
    return (os.path.isdir(os.path.join(folder, 'images'))
            and os.path.isdir(os.path.join(folder, 'annotations')))

  def splits(self, root):
    return [s for s, sub in self.SPLIT_FOLDERS.items()
            if os.path.isdir(os.path.join(root, 'images', sub))]

  def scan(self, root, split):
    self.check_split(root, split)
    image_dir = os.path.join(root, 'images', self.SPLIT_FOLDERS[split])
    label_dir = os.path.join(root, 'annotations', self.SPLIT_FOLDERS[split])
    images = _files_by_stem(image_dir, ('.jpg',))
    if not images:
      raise UserError(f'{image_dir}: split {split!r} is empty; expected <id>.jpg images')
    return _pair(split, sorted(images), images.get,
                 lambda i: _existing(os.path.join(label_dir, f'{i}.png')),
                 image_dir, (image_dir, f'{label_dir}/<id>.png'))


class Cityscapes(Dataset):
  """Cityscapes fine annotations as the 19 train ids (255 = ignore)."""
  name = 'cityscapes'
  layout_help = ('leftImg8bit/<split>/<city>/*_leftImg8bit.png and '
                 'gtFine/<split>/<city>/*_gtFine_labelTrainIds.png (or _labelIds.png)')
  root_candidates = ('cityscapes',)
  IMAGE_SUFFIX = '_leftImg8bit.png'
  TRAIN_ID_SUFFIX = '_gtFine_labelTrainIds.png'
  LABEL_ID_SUFFIX = '_gtFine_labelIds.png'

  def __init__(self):
    super().__init__(19, 255, CITYSCAPES_CLASS_NAMES, colormaps.cityscapes_colormap())

  def _is_root(self, folder):
    return (os.path.isdir(os.path.join(folder, 'leftImg8bit'))
            and os.path.isdir(os.path.join(folder, 'gtFine')))

  def splits(self, root):
    return sorted(s for s in os.listdir(os.path.join(root, 'leftImg8bit'))
                  if os.path.isdir(os.path.join(root, 'gtFine', s)))

  def scan(self, root, split):
    self.check_split(root, split)
    pattern = os.path.join(root, 'leftImg8bit', split, '*', '*' + self.IMAGE_SUFFIX)
    images = sorted(glob.glob(pattern))
    if not images:
      raise UserError(f'{os.path.join(root, "leftImg8bit", split)}: split {split!r} is empty; '
                      f'expected <city>/*{self.IMAGE_SUFFIX}')
    by_id = {os.path.basename(p)[:-len(self.IMAGE_SUFFIX)]: p for p in images}

    def label_of(example_id):
      city = os.path.basename(os.path.dirname(by_id[example_id]))
      stem = os.path.join(root, 'gtFine', split, city, example_id)
      return _existing(stem + self.TRAIN_ID_SUFFIX) or _existing(stem + self.LABEL_ID_SUFFIX)

    ids = [os.path.basename(p)[:-len(self.IMAGE_SUFFIX)] for p in images]
    return _pair(split, ids, by_id.get, label_of, pattern,
                 (pattern, f'gtFine/{split}/<city>/<id>{self.TRAIN_ID_SUFFIX} or {self.LABEL_ID_SUFFIX}'))

  def label_table(self, label_path):
    return CITYSCAPES_TRAIN_ID_TABLE if label_path.endswith(self.LABEL_ID_SUFFIX) else None


_SHARED_SUFFIX_RE = re.compile(r'_[A-Za-z][A-Za-z0-9]*$')


def _files_by_stem(folder: str, extensions: Sequence[str], strip_suffix: bool = False
                   ) -> Dict[str, str]:
  """{id: path} of the files in `folder` with one of `extensions` (case-insensitive).

  With `strip_suffix`, a `_word` suffix that every file shares (e.g. `_img`) is not part of the id.
  Two files with the same id (e.g. a.jpg and a.png) make the id ambiguous: it maps to None.
  """
  paths = {}
  for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    stem, ext = os.path.splitext(entry)
    if ext.lower() in extensions and os.path.isfile(os.path.join(folder, entry)):
      paths[entry] = stem
  stems = list(paths.values())
  suffix = ''
  if strip_suffix and stems:
    match = _SHARED_SUFFIX_RE.search(stems[0])
    if match and all(s.endswith(match.group()) and s != match.group() for s in stems):
      suffix = match.group()
  by_id: Dict[str, Optional[str]] = {}
  for entry, stem in paths.items():
    example_id = stem[:len(stem) - len(suffix)]
    by_id[example_id] = None if example_id in by_id else os.path.join(folder, entry)
  return by_id


class Folder(Dataset):
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
    with open(path, encoding='utf-8') as f:
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
    images = _files_by_stem(image_dir, IMAGE_EXTENSIONS, strip_suffix=True)
    masks = _files_by_stem(mask_dir, ('.png',), strip_suffix=True)
    list_path = self._split_lists(root).get(split)
    if list_path:
      ids, where = _read_id_list(list_path, split), list_path
    else:
      ids, where = sorted(images), image_dir
      if not ids:
        raise UserError(f'{image_dir}: no images; expected <id>.jpg or <id>.png files')
    ambiguous = [Problem(split, i, f'{image_dir}: several images for id {i!r} (split {split!r}); '
                         'expected one') for i in dict.fromkeys(ids) if i in images and images[i] is None]
    examples, problems = _pair(split, ids, images.get, masks.get, where,
                               (f'{image_dir}/<id>.jpg|png', f'{mask_dir}/<id>.png'))
    ambiguous_ids = {p.id for p in ambiguous}
    return examples, ambiguous + [p for p in problems if p.id not in ambiguous_ids]


def default_class_names(num_classes: int) -> List[str]:
  return ['background'] + [f'class_{i}' for i in range(1, num_classes)]


_DATASETS = {'pascal_voc_seg': PascalVoc, 'ade20k': Ade20k, 'cityscapes': Cityscapes,
             'folder': Folder}
NAMES = tuple(_DATASETS)


def get(name: str, **options) -> Dataset:
  """The dataset called `name`; options (num_classes, ignore_label, class_names) are for 'folder'."""
  if name not in _DATASETS:
    raise UserError(f'--dataset: unknown dataset {name!r}; known datasets: {", ".join(NAMES)}')
  if options and name != 'folder':
    raise UserError(f'dataset {name!r} has fixed classes; options {sorted(options)} are only '
                    'for the folder layout')
  return _DATASETS[name](**options)
