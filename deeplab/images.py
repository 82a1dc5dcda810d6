"""Images in and out of the exported models: any PNG/JPEG mode to RGB, files, TFRecord samples, and
prediction with a bounded pixel count (numpy + PIL; shared by predict, serve and export)."""
from __future__ import annotations

import io
import itertools
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deeplab.errors import UserError


def to_rgb(image: Image.Image) -> np.ndarray:
  """RGB uint8 [H, W, 3] of a PIL image of any mode, EXIF orientation applied; 16- and 32-bit
  samples are scaled to 8 bits (PIL's own RGB conversion clips them, turning a 16-bit image white)."""
  image = ImageOps.exif_transpose(image)
  if image.mode.startswith('I') or image.mode == 'F':
    top = 255.0 if image.mode == 'F' else 65535.0  # 'I' is how PIL widens 16-bit PNGs
    gray = np.rint(np.clip(np.asarray(image, np.float64), 0, top) * (255.0 / top))
    return np.repeat(gray.astype(np.uint8)[:, :, None], 3, axis=2)
  return np.asarray(image.convert('RGB'))


def read_image(path: str) -> np.ndarray:
  """RGB uint8 [H, W, 3] of an image file; a file that is not a readable image is a UserError."""
  try:
    with Image.open(path) as image:
      return to_rgb(image)
  except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as e:
    raise UserError(f'{path}: not a readable JPEG/PNG image ({e})') from None


def tfrecord_images(shard_paths, limit: int) -> Iterator[np.ndarray]:
  """The first `limit` images (RGB uint8 [H, W, 3]) of TFRecord shards in the DeepLab format."""
  from deeplab.datasets import tfrecord
  records = (record for path in shard_paths for record in tfrecord.read_records(path))
  for record in itertools.islice(records, limit):
    encoded = tfrecord.parse_example(record)[tfrecord.IMAGE_ENCODED]
    with Image.open(io.BytesIO(encoded)) as image:
      yield to_rgb(image)


def predict_bounded(model, image: np.ndarray, max_pixels: int) -> np.ndarray:
  """Labels int32 [H, W] of `image` [H, W, 3] by `model.predict`; above `max_pixels` (0 = never)
  the model sees a copy scaled down to that many pixels (aspect kept) and the labels are scaled
  back up (nearest), which bounds the memory of one large photo."""
  height, width = image.shape[:2]
  if not max_pixels or height * width <= max_pixels:
    return model.predict(image)
  scale = (max_pixels / (height * width)) ** 0.5
  size = (max(1, int(width * scale)), max(1, int(height * scale)))
  labels = model.predict(np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)))
  return np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
