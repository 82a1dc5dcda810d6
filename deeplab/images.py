"""Images in and out of the exported models: any PNG/JPEG mode to RGB, files, TFRecord samples,
decoding within a pixel bound decided from the header, a pixel budget shared by threads, and
prediction with a bounded pixel count (numpy + PIL; shared by predict, serve and export)."""
from __future__ import annotations

import collections
import contextlib
import io
import itertools
import threading
from typing import Iterator, Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deeplab.errors import UserError


IMAGE_FORMATS = ('JPEG', 'PNG')
# The reductions libjpeg decodes at directly (PIL's `draft`): 1/2, 1/4 and 1/8 of each side.
JPEG_REDUCTIONS = (2, 4, 8)


class TooManyPixels(ValueError):
  """An image with more pixels than the bound, at every size its format can be decoded at."""


@contextlib.contextmanager
def opened(source):
  """The PIL image of a JPEG/PNG file (a path or a binary file object) with its header read and
  no pixel decoded yet. Raises TooManyPixels above Pillow's own decompression-bomb bound, and
  PIL's errors (UnidentifiedImageError, OSError, SyntaxError) for anything that is not one."""
  try:
    image = Image.open(source, formats=IMAGE_FORMATS)
  except Image.DecompressionBombError as e:
    raise TooManyPixels(str(e)) from None
  with image:
    yield image


def plan_decode(image: Image.Image, max_pixels: int) -> int:
  """Readies `image` (opened, not decoded) to decode within `max_pixels` pixels (0 = no bound),
  judging from its header alone, and returns the pixel count it will decode at. A larger JPEG is
  set to decode at the smallest reduction libjpeg offers that fits (1/2, 1/4, 1/8 of each side):
  decoding it reduced costs the memory of the reduced image only. Any other image above the
  bound raises TooManyPixels."""
  width, height = image.size
  if not max_pixels or width * height <= max_pixels:
    return width * height
  if image.format == 'JPEG':
    for reduction in JPEG_REDUCTIONS:
      reduced = -(-width // reduction) * -(-height // reduction)  # libjpeg rounds sides up
      if reduced <= max_pixels and min(width, height) >= reduction:
        # draft picks the largest reduction whose size is at least the one asked for.
        image.draft('RGB', (width // reduction, height // reduction))
        if image.size[0] * image.size[1] <= max_pixels:
          return image.size[0] * image.size[1]
        break
  smallest = ' (a JPEG even at 1/8 of each side)' if image.format == 'JPEG' else ''
  raise TooManyPixels(f'the image has {width}x{height} = {width * height} pixels{smallest}; at '
                      f'most {max_pixels} are decoded (max_image_pixels)')


def to_rgb(image: Image.Image) -> np.ndarray:
  """RGB uint8 [H, W, 3] of a PIL image of any mode, EXIF orientation applied (to `image` itself:
  copies of a large image cost as much memory as the image); 16- and 32-bit samples are scaled to
  8 bits (PIL's own RGB conversion clips them, turning a 16-bit image white)."""
  ImageOps.exif_transpose(image, in_place=True)
  if image.mode.startswith('I') or image.mode == 'F':
    top = 255.0 if image.mode == 'F' else 65535.0  # 'I' is how PIL widens 16-bit PNGs
    gray = np.rint(np.clip(np.asarray(image, np.float64), 0, top) * (255.0 / top))
    return np.repeat(gray.astype(np.uint8)[:, :, None], 3, axis=2)
  return np.asarray(image if image.mode == 'RGB' else image.convert('RGB'))


def image_pixels(path: str, max_pixels: int = 0) -> int:
  """The pixel count `read_image(path, max_pixels)` will decode, from the file's header; a file
  that is not a readable JPEG/PNG, or too large (TooManyPixels), is a UserError naming it."""
  return _read(path, max_pixels, decode=False)


def read_image(path: str, max_pixels: int = 0) -> np.ndarray:
  """RGB uint8 [H, W, 3] of a JPEG/PNG file, decoded within `max_pixels` (`plan_decode`: a large
  JPEG is decoded reduced); a file that is not a readable image, or too large, is a UserError."""
  return _read(path, max_pixels, decode=True)


def _read(path, max_pixels, decode):
  try:
    with opened(path) as image:
      pixels = plan_decode(image, max_pixels)
      return to_rgb(image) if decode else pixels
  except TooManyPixels as e:
    raise UserError(f'{path}: {e}; raise --max_image_pixels, or make the image smaller') from None
  except (OSError, UnidentifiedImageError, SyntaxError) as e:
    raise UserError(f'{path}: not a readable JPEG/PNG image ({e})') from None


class BudgetTimeout(Exception):
  """PixelBudget.acquire waited longer than its timeout."""


class PixelBudget:
  """A count of pixels that threads take before they decode an image and give back once they are
  done with it, so that the images held at once never total more than `capacity` (a weighted
  semaphore; 0 = no bound). One image larger than the capacity may still be taken alone. Waiting
  threads are served in arrival order, so a large image is not starved by a stream of small ones.
  """

  def __init__(self, capacity: int):
    self.capacity = capacity
    self.in_use = 0
    self._waiting = collections.deque()
    self._changed = threading.Condition()

  def _fits(self, pixels):
    return not self.capacity or self.in_use == 0 or self.in_use + pixels <= self.capacity

  def acquire(self, pixels: int, timeout: Optional[float] = None) -> None:
    """Takes `pixels`, waiting up to `timeout` seconds (None = as long as it takes, 0 = not at all)
    for them; raises BudgetTimeout when they did not come free in time."""
    with self._changed:
      ticket = object()
      self._waiting.append(ticket)
      try:
        taken = self._changed.wait_for(
            lambda: self._waiting[0] is ticket and self._fits(pixels), timeout)
        if taken:
          self.in_use += pixels
      finally:
        self._waiting.remove(ticket)
        self._changed.notify_all()  # the next in line may fit now
    if not taken:
      raise BudgetTimeout(f'{pixels} pixels did not come free within {timeout} s')

  def release(self, pixels: int) -> None:
    with self._changed:
      self.in_use -= pixels
      self._changed.notify_all()

  @contextlib.contextmanager
  def hold(self, pixels: int, timeout: Optional[float] = None):
    """`acquire` for the duration of a with block."""
    self.acquire(pixels, timeout)
    try:
      yield
    finally:
      self.release(pixels)


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
  # Nearest, by indexing: the full-size labels are allocated once (through PIL they were twice),
  # sampled where PIL's NEAREST samples, at the centre of each target pixel.
  rows = np.minimum(((np.arange(height) + 0.5) * (labels.shape[0] / height)).astype(np.intp),
                    labels.shape[0] - 1)
  columns = np.minimum(((np.arange(width) + 0.5) * (labels.shape[1] / width)).astype(np.intp),
                       labels.shape[1] - 1)
  return labels[rows[:, np.newaxis], columns]
