"""A tiny, learnable, photo-like segmentation dataset for the demo, CI and benchmarks.

    python -m deeplab.datasets.synthetic --layout=folder --output=DIR --seed=0 \\
        [--num_train=200 --num_val=30 --image_size=160,160]

Each image is a smooth, low-saturation background (a colour gradient with soft blotches and
sensor-like noise) holding one to three objects. An object's class decides its colour family and
its texture, so a small network learns the classes from colour and texture; its shape (ellipse,
rotated rectangle, triangle or blob), size (22-45% of the shorter image side), position, exact hue,
brightness and texture scale vary:

    0 background      greys, beiges, browns (saturation <= 0.2)
    1 red_striped     red-orange with stripes
    2 green_spotted   green with soft spots
    3 blue_checkered  blue with a checker pattern

Label maps hold the class of each pixel and the ignore value in a 2 px band along every border
between two regions (one pixel on each side), like the VOC boundary annotations.

Train images are `image_size`; validation images vary from 0.75x to 1.25x of it per side (so
whole-image evaluation at other sizes is exercised). The same seed gives byte-identical files:
every image has its own generator seeded by (seed, split, index).

Layouts (`--layout`), with the class ids each writes for classes 0..3 and the border:
- `folder`: images/<id>.jpg, masks/<id>.png (mode L, 0..3, border 255), splits/{train,val}.txt,
  class_names.txt. This is the default demo dataset: 4 classes, ignore label 255.
- `pascal_voc_seg`: VOCdevkit/VOC2012 with palette masks: background, cat, dog, person (0, 8, 12,
  15), border 255; splits train, val, trainval.
- `ade20k`: ADEChallengeData2016, mode L annotations: wall, sky, tree, car (1, 3, 5, 21), border 0.
- `cityscapes`: leftImg8bit PNGs with gtFine _labelIds (road, vegetation, person, car = 7, 21, 24,
  26; border 0) and the matching _labelTrainIds (0, 8, 11, 13; border 255).
"""
from __future__ import annotations

import argparse
import colorsys
import os
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFilter

from deeplab import colormaps
from deeplab.datasets.layouts import ade20k, cityscapes

CLASS_NAMES = ('background', 'red_striped', 'green_spotted', 'blue_checkered')
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_LABEL = 255
DEFAULT_IMAGE_SIZE = (160, 160)  # height, width
DEFAULT_NUM_TRAIN = 200
DEFAULT_NUM_VAL = 30
LAYOUTS = ('folder', 'pascal_voc_seg', 'ade20k', 'cityscapes')

# Hue range (0..1) of each object class: far apart, so colour alone nearly separates them.
_HUES = {1: (0.97, 1.05), 2: (0.27, 0.39), 3: (0.57, 0.67)}
_SPLITS = ('train', 'val')
_JPEG_QUALITY = 90
_MAX_DRAW_SIDE = 256


def render_example(seed: int, split: str, index: int, height: int, width: int
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """(image uint8 [H, W, 3], label uint8 [H, W] of 0..3 and IGNORE_LABEL) of one example."""
  rng = np.random.default_rng([seed, _SPLITS.index(split), index])
  # The scene is smooth: large images are drawn smaller and upscaled, which keeps generating
  # thousands of VOC-sized images (the benchmark) fast.
  scale = min(1.0, _MAX_DRAW_SIDE / max(height, width))
  draw_height, draw_width = max(1, round(height * scale)), max(1, round(width * scale))
  ys, xs = np.mgrid[0:draw_height, 0:draw_width].astype(np.float32)
  yn, xn = ys / draw_height, xs / draw_width
  image = _background(rng, yn, xn)
  label = np.zeros((draw_height, draw_width), np.uint8)
  side = min(draw_height, draw_width)
  for _ in range(rng.integers(1, 4)):
    cls = int(rng.integers(1, NUM_CLASSES))
    inside = _shape(rng, ys, xs, side)
    image[inside] = _object(rng, cls, ys, xs, side)[inside]
    label[inside] = cls
  # Scene lighting over everything, soft lens-like edges, then sensor noise.
  light = 0.85 + 0.25 * (rng.uniform(-1, 1) * (yn - 0.5) + rng.uniform(-1, 1) * (xn - 0.5) + 0.5)
  picture = Image.fromarray(np.clip(image * light[..., None], 0, 255).astype(np.uint8))
  picture = picture.filter(ImageFilter.GaussianBlur(0.7 * scale))
  label_image = Image.fromarray(label)
  if scale < 1:
    picture = picture.resize((width, height), Image.BICUBIC)
    label_image = label_image.resize((width, height), Image.NEAREST)
  noise = rng.standard_normal((height, width, 3), np.float32) * 5
  image = np.clip(np.asarray(picture, np.float32) + noise, 0, 255).astype(np.uint8)
  return image, _with_border(np.asarray(label_image), IGNORE_LABEL)


def _background(rng, yn, xn) -> np.ndarray:
  """A smooth gradient between two unsaturated colours with soft blotches."""
  def dull():
    return np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.2),
                                        rng.uniform(0.35, 0.85)), np.float32) * 255
  angle = rng.uniform(0, 2 * np.pi)
  t = np.clip(0.5 + (np.cos(angle) * (xn - 0.5) + np.sin(angle) * (yn - 0.5)), 0, 1)
  image = dull()[None, None] * (1 - t[..., None]) + dull()[None, None] * t[..., None]
  blotches = sum(np.sin(rng.uniform(2, 7) * 2 * np.pi * (xn * np.cos(a) + yn * np.sin(a))
                        + rng.uniform(0, 2 * np.pi)) for a in rng.uniform(0, np.pi, 3))
  return image * (1 + 0.06 * blotches)[..., None]


def _shape(rng, ys, xs, side) -> np.ndarray:
  """A boolean mask of one object: ellipse, rotated rectangle, triangle or blob."""
  height, width = ys.shape
  size = rng.uniform(0.22, 0.45) * side  # the object's extent
  cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
  angle = rng.uniform(0, np.pi)
  dy, dx = ys - cy, xs - cx
  u = dx * np.cos(angle) + dy * np.sin(angle)
  v = -dx * np.sin(angle) + dy * np.cos(angle)
  a, b = size / 2, size / 2 * rng.uniform(0.5, 1.0)
  kind = rng.integers(0, 4)
  if kind == 0:
    return (u / a) ** 2 + (v / b) ** 2 <= 1
  if kind == 1:
    return (np.abs(u) <= a) & (np.abs(v) <= b)
  if kind == 2:  # a triangle: inside three half-planes
    inside = np.ones(ys.shape, bool)
    for k in range(3):
      theta = angle + k * 2 * np.pi / 3
      inside &= dx * np.cos(theta) + dy * np.sin(theta) <= a / 2
    return inside
  theta = np.arctan2(dy, dx)
  radius = a * (1 + 0.25 * np.sin(rng.integers(2, 6) * theta + rng.uniform(0, 2 * np.pi)))
  return np.hypot(dy, dx) <= radius


def _object(rng, cls, ys, xs, side) -> np.ndarray:
  """The object's appearance over the whole image: its colour, shading and its class's texture."""
  low, high = _HUES[cls]
  base = np.array(colorsys.hsv_to_rgb(rng.uniform(low, high) % 1.0, rng.uniform(0.65, 0.95),
                                      rng.uniform(0.6, 0.95)), np.float32) * 255
  period = rng.uniform(0.05, 0.1) * side + 3
  angle = rng.uniform(0, np.pi)
  u = xs * np.cos(angle) + ys * np.sin(angle)
  v = -xs * np.sin(angle) + ys * np.cos(angle)
  if cls == 1:  # stripes
    texture = 0.18 * np.sin(2 * np.pi * u / period)
  elif cls == 2:  # soft spots
    bumps = np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)
    texture = 0.2 * np.sqrt(np.maximum(0, bumps)) - 0.1
  else:  # checker
    texture = 0.15 * np.sign(np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period))
  return base[None, None] * (1 + texture)[..., None]


def _with_border(label: np.ndarray, border_value: int) -> np.ndarray:
  """A copy of `label` with `border_value` on both sides of every region border."""
  edge = np.zeros(label.shape, bool)
  vertical = label[1:] != label[:-1]
  horizontal = label[:, 1:] != label[:, :-1]
  edge[1:] |= vertical
  edge[:-1] |= vertical
  edge[:, 1:] |= horizontal
  edge[:, :-1] |= horizontal
  out = label.copy()
  out[edge] = border_value
  return out


def example_size(seed: int, split: str, index: int, image_size: Tuple[int, int]
                 ) -> Tuple[int, int]:
  """(height, width) of an example: `image_size` in train, 0.75x to 1.25x of it per side in val."""
  if split == 'train':
    return image_size
  rng = np.random.default_rng([seed, _SPLITS.index(split), index, 1])
  return tuple(max(8, int(round(s * rng.uniform(0.75, 1.25)))) for s in image_size)


# ----------------------------------------------------------------------------- layouts

# Per layout: the label value of classes 0..3 and of the border.
_LAYOUT_IDS = {
    'folder': ((0, 1, 2, 3), 255),
    'pascal_voc_seg': ((0, 8, 12, 15), 255),
    'ade20k': ((1, 3, 5, 21), 0),
    'cityscapes': ((7, 21, 24, 26), 0),  # label ids; train ids are derived with the official table
}


def _mapped(label: np.ndarray, layout: str) -> np.ndarray:
  class_ids, border = _LAYOUT_IDS[layout]
  table = np.full(256, border, np.uint8)
  table[:NUM_CLASSES] = class_ids
  return table[label]


def _save(array: np.ndarray, path: str, palette: Optional[Sequence[int]] = None) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if palette is None:
    im = Image.fromarray(array)
  else:  # the values are the palette indices
    im = Image.frombytes('P', (array.shape[1], array.shape[0]), array.tobytes())
    im.putpalette(palette)
  if path.endswith('.jpg'):
    im.save(path, 'JPEG', quality=_JPEG_QUALITY)
  else:
    im.save(path, 'PNG')


def _write_lines(path: str, lines: Sequence[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(''.join(f'{line}\n' for line in lines))


def write_dataset(layout: str, output: str, seed: int = 0, num_train: int = DEFAULT_NUM_TRAIN,
                  num_val: int = DEFAULT_NUM_VAL,
                  image_size: Tuple[int, int] = DEFAULT_IMAGE_SIZE) -> str:
  """Writes the dataset in `layout` under `output`; returns the folder to pass as raw_data."""
  if layout not in LAYOUTS:
    raise ValueError(f'unknown layout {layout!r}; expected one of {", ".join(LAYOUTS)}')
  counts = {'train': num_train, 'val': num_val}
  ids: Dict[str, list] = {}
  for split in _SPLITS:
    ids[split] = []
    for index in range(counts[split]):
      height, width = example_size(seed, split, index, tuple(image_size))
      image, label = render_example(seed, split, index, height, width)
      ids[split].append(_write_example(layout, output, split, index, image, label))
  if layout == 'folder':
    _write_lines(os.path.join(output, 'class_names.txt'), CLASS_NAMES)
    for split in _SPLITS:
      _write_lines(os.path.join(output, 'splits', f'{split}.txt'), ids[split])
  elif layout == 'pascal_voc_seg':
    lists = os.path.join(output, 'VOCdevkit', 'VOC2012', 'ImageSets', 'Segmentation')
    for split, lines in (('train', ids['train']), ('val', ids['val']),
                         ('trainval', ids['train'] + ids['val'])):
      _write_lines(os.path.join(lists, f'{split}.txt'), lines)
  return output


def _write_example(layout, output, split, index, image, label) -> str:
  """Writes one example's files; returns its id."""
  mapped = _mapped(label, layout)
  if layout == 'folder':
    example_id = f'{split}_{index:05d}'
    _save(image, os.path.join(output, 'images', f'{example_id}.jpg'))
    _save(mapped, os.path.join(output, 'masks', f'{example_id}.png'))
  elif layout == 'pascal_voc_seg':
    example_id = f'2012_{_SPLITS.index(split)}{index:05d}'
    root = os.path.join(output, 'VOCdevkit', 'VOC2012')
    _save(image, os.path.join(root, 'JPEGImages', f'{example_id}.jpg'))
    palette = [v for rgb in colormaps.pascal_colormap(256) for v in rgb]
    _save(mapped, os.path.join(root, 'SegmentationClass', f'{example_id}.png'), palette)
  elif layout == 'ade20k':
    folder = ade20k.Ade20k.SPLIT_FOLDERS[split]
    example_id = f'ADE_{"train" if split == "train" else "val"}_{index + 1:08d}'
    root = os.path.join(output, 'ADEChallengeData2016')
    _save(image, os.path.join(root, 'images', folder, f'{example_id}.jpg'))
    _save(mapped, os.path.join(root, 'annotations', folder, f'{example_id}.png'))
  else:
    city = 'aachen' if split == 'train' else 'frankfurt'
    example_id = f'{city}_000000_{index:06d}'
    _save(image, os.path.join(output, 'leftImg8bit', split, city, f'{example_id}_leftImg8bit.png'))
    stem = os.path.join(output, 'gtFine', split, city, example_id)
    _save(mapped, stem + cityscapes.Cityscapes.LABEL_ID_SUFFIX)
    _save(cityscapes.TRAIN_ID_TABLE[mapped], stem + cityscapes.Cityscapes.TRAIN_ID_SUFFIX)
  return example_id


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m deeplab.datasets.synthetic',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--layout', default='folder', choices=LAYOUTS)
  parser.add_argument('--output', required=True, help='the folder to write')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_train', type=int, default=DEFAULT_NUM_TRAIN)
  parser.add_argument('--num_val', type=int, default=DEFAULT_NUM_VAL)
  parser.add_argument('--image_size', default=','.join(map(str, DEFAULT_IMAGE_SIZE)),
                      help='height,width of the train images')
  args = parser.parse_args(argv)
  try:
    height, width = (int(v) for v in args.image_size.split(','))
  except ValueError:
    parser.error(f'--image_size: expected height,width, got {args.image_size!r}')
  write_dataset(args.layout, args.output, args.seed, args.num_train, args.num_val, (height, width))
  print(args.output, file=sys.stderr)


if __name__ == '__main__':
  main()
