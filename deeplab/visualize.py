"""Blend colour-mapped label maps over images and save label maps and overlays (numpy + PIL)."""
import zlib

import numpy as np
from PIL import Image

from deeplab.colormaps import colorize


def overlay(image, labels, colormap, alpha=0.5):
  """The image with its colour-mapped labels blended on top at opacity `alpha`; uint8 [H, W, 3].

  Blends every (label id, channel, pixel value) once into a table, then looks each pixel up: the
  same arithmetic as blending pixel by pixel, in under half the time on a photo (predict blends
  one per image).
  """
  values = np.arange(256, dtype=np.float32)
  colors = colorize(np.arange(256), colormap)[:, :, np.newaxis]  # [id, channel, 1]
  table = np.clip(np.round((1.0 - alpha) * values + alpha * colors), 0, 255).astype(np.uint8)
  index = image + np.arange(0, 3 * 256, 256, dtype=np.int32)  # channel c reads table[:, c]
  index += np.asarray(labels, np.int32).clip(0, 255)[..., np.newaxis] * (3 * 256)
  return table.ravel().take(index)


def save_label_png(labels, path):
  """Class ids as a single-channel PNG (8-bit up to 256 classes, else 16-bit)."""
  array = np.asarray(labels)
  if array.max(initial=0) < 256:
    Image.fromarray(array.astype(np.uint8), mode='L').save(path)
  else:
    Image.fromarray(array.astype(np.uint16)).save(path)


# file suffix and media type of each of config.OVERLAY_FORMATS
OVERLAY_SUFFIXES = {'jpeg': '.jpg', 'png': '.png'}
OVERLAY_MEDIA_TYPES = {'jpeg': 'image/jpeg', 'png': 'image/png'}


def write_overlay(image, file, overlay_format: str) -> None:
  """Writes an RGB uint8 [H, W, 3] image (an overlay) to `file` (a path or a binary file object).

  Both formats are written for speed, which bounds predict's images/s on a few cores:
  - jpeg: quality 90 without chroma subsampling (4:4:4: colour at full resolution, so a class
    colour does not bleed across its edge); about 1.5 ms for a 512x384 photo.
  - png: lossless, Pillow at zlib level 1 with the run-length strategy (LZ77 finds little to
    match in a photo): about 1.5x faster than level 1 alone for files about the same size, 3-4x
    faster than the default level 6, and still about 12x slower than jpeg (Pillow picks each
    row's PNG filter by trying them all, about 9 ms of it at any level).
  """
  picture = Image.fromarray(np.ascontiguousarray(image, np.uint8))
  if overlay_format == 'jpeg':
    picture.save(file, format='JPEG', quality=90, subsampling=0)
  elif overlay_format == 'png':
    picture.save(file, format='PNG', compress_level=1, compress_type=zlib.Z_RLE)
  else:
    raise ValueError(f'overlay_format={overlay_format!r}: expected one of {OVERLAY_SUFFIXES}')
