"""Label colormaps of the datasets DeepLab knows, and colour-mapping of label maps.

The colour values are facts of each benchmark's published conventions:
- PASCAL VOC: the bit-interleaved palette of the VOC devkit (also used by the VOC mask PNGs);
- ADE20K: the SceneParsing colours of the 150 classes, preceded by black for id 0 ('other');
- Cityscapes: the colours of the 19 training ids.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

# The 150 ADE20K SceneParsing class colours, in class id order 1..150.
_ADE20K_CLASS_COLORS = [
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80],
    [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7],
    [150, 5, 61], [120, 120, 70], [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4],
    [255, 51, 7], [204, 70, 3], [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255],
    [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
    [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10], [7, 255, 255],
    [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
    [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255],
    [140, 140, 140], [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0],
    [153, 255, 0], [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255],
    [11, 200, 200], [255, 82, 0], [0, 255, 245], [0, 61, 255], [0, 255, 112], [0, 255, 133],
    [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0], [0, 143, 255], [51, 255, 0],
    [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255], [173, 255, 0], [0, 255, 153],
    [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20],
    [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194],
    [0, 255, 82], [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255], [0, 122, 255],
    [0, 255, 163], [255, 153, 0], [0, 255, 10], [255, 112, 0], [143, 255, 0], [82, 0, 255],
    [163, 255, 0], [255, 235, 0], [8, 184, 170], [133, 0, 255], [0, 255, 92], [184, 0, 255],
    [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112], [92, 255, 0], [0, 224, 255],
    [112, 224, 255], [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0], [255, 0, 163],
    [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235], [245, 0, 255],
    [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0], [0, 204, 255], [20, 0, 255],
    [255, 255, 0], [0, 153, 255], [0, 41, 255], [0, 255, 204], [41, 0, 255], [41, 255, 0],
    [173, 0, 255], [0, 245, 255], [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255],
    [184, 255, 0], [0, 133, 255], [255, 214, 0], [25, 194, 194], [102, 255, 0], [92, 0, 255],
]

# The colours of the 19 Cityscapes training ids (road .. bicycle).
_CITYSCAPES_COLORS = [
    [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
    [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
    [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
    [0, 80, 100], [0, 0, 230], [119, 11, 32],
]


def pascal_colormap(num_colors: int = 256) -> List[List[int]]:
  """The PASCAL VOC palette: the bits of the class id spread over the high bits of r, g, b."""
  colormap = []
  for index in range(num_colors):
    r = g = b = 0
    value = index
    for shift in range(7, -1, -1):
      r |= ((value >> 0) & 1) << shift
      g |= ((value >> 1) & 1) << shift
      b |= ((value >> 2) & 1) << shift
      value >>= 3
    colormap.append([r, g, b])
  return colormap


def ade20k_colormap() -> List[List[int]]:
  """151 colours: black for id 0 ('other', the ignore label), then the 150 classes."""
  return [[0, 0, 0]] + [list(c) for c in _ADE20K_CLASS_COLORS]


def cityscapes_colormap() -> List[List[int]]:
  """19 colours, one per Cityscapes training id."""
  return [list(c) for c in _CITYSCAPES_COLORS]


def colorize(label: np.ndarray, colormap: Sequence[Sequence[int]],
             ignore_color: Sequence[int] = (255, 255, 255)) -> np.ndarray:
  """An RGB uint8 image of a [H, W] label map; ids without a colour (e.g. ignore) get ignore_color."""
  table = np.tile(np.asarray(ignore_color, np.uint8), (256, 1))
  table[:min(len(colormap), 256)] = np.asarray(colormap, np.uint8)[:256]
  return table[np.asarray(label, np.int64).clip(0, 255)]
