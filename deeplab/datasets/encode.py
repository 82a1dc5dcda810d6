"""One raw example (an image file and a label file) -> one checked TFRecord example.

- The image keeps its original file bytes (no re-encoding); `image/format` says what the bytes are
  ('jpeg' or 'png', by content), `image/filename` is the example id, and height, width and
  channels come from the image header. The label is a single-channel PNG of class ids: the
  original file when it already is one (8-bit grey, no value mapping), the pixel data of an 8-bit
  palette PNG under a greyscale header, else re-encoded.
- Images are checked for being whole JPEG/PNG files from their structure (`imagefile`), without
  decoding pixels; labels are decoded and checked for mode (class ids, not colours), size (the
  image's) and values (< num_classes or the ignore label).
"""
from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from deeplab.datasets import imagefile
from deeplab.datasets import tfrecord
from deeplab.datasets.layouts import base

# Label histograms: every how-many-th pixel is sampled for the values present, and how many
# values are counted one by one before a full bincount is cheaper.
_HISTOGRAM_SAMPLE_STRIDE = 31
_HISTOGRAM_MAX_COMPARES = 8


@dataclasses.dataclass
class Encoded:
  record: bytes  # a serialized tf.train.Example
  histogram: np.ndarray  # int64[256]: pixels per label value (class ids, after any value mapping)


class _Invalid(Exception):
  """A bad example; its message is the one line the user sees."""


def encode_files(example: base.Example, dataset: base.Dataset) -> Union[Encoded, str]:
  """The encoded example, or one line saying why its files cannot be used."""
  try:
    return _encode(example, dataset)
  except _Invalid as e:
    return str(e)


def _encode(example: base.Example, dataset: base.Dataset) -> Encoded:
  where = f'(split {example.split!r}, id {example.id!r})'
  image = _read(example.image, where)
  try:
    info = imagefile.inspect(image)
  except imagefile.BadImage as e:
    raise _Invalid(f'{example.image}: {e} {where}; expected a whole JPEG or PNG image') from None

  label_bytes = _read(example.label, where)
  if not label_bytes.startswith(imagefile.PNG_MAGIC):
    raise _Invalid(f'{example.label}: label is not a PNG {where}; expected a PNG of class ids')
  try:
    with Image.open(io.BytesIO(label_bytes)) as label:
      label.load()
      mode = label.mode
      ids = np.asarray(label)  # palette images give their indices, which are the class ids
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise _Invalid(f'{example.label}: corrupt or truncated label PNG {where}: {e}') from None
  if mode not in ('L', 'P'):
    kind = 'colours (RGB)' if mode in ('RGB', 'RGBA') else f'mode {mode}'
    raise _Invalid(f'{example.label}: label holds {kind}, not class ids {where}; '
                   f'{dataset.rgb_label_hint}')
  if ids.shape != (info.height, info.width):
    raise _Invalid(f'{example.label}: label is {ids.shape[1]}x{ids.shape[0]} but image '
                   f'{example.image} is {info.width}x{info.height} {where}; expected the same size')
  histogram = _histogram(ids)
  table = dataset.label_table(example.label)
  if table is not None:
    histogram = np.bincount(table, weights=histogram, minlength=256).astype(np.int64)
  if dataset.num_classes:
    bad = [v for v in np.nonzero(histogram[dataset.num_classes:])[0] + dataset.num_classes
           if v != dataset.ignore_label]
    if bad:
      raise _Invalid(f'{example.label}: label values {_list(bad)} out of range {where}; expected '
                     f'0..{dataset.num_classes - 1} or the ignore label {dataset.ignore_label}')
  label_png = _class_id_png(label_bytes, ids, table)
  record = tfrecord.encode_example(image, info.format, example.id, info.height, info.width,
                                   info.channels, label_png)
  return Encoded(record, histogram)


def _read(path: str, where: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise _Invalid(f'{path}: cannot read {where}: {e.strerror}') from None


def _histogram(ids: np.ndarray) -> np.ndarray:
  """int64[256]: pixels per value of a uint8 label map.

  A label map holds a few values: those seen in a sparse sample are counted exactly with
  vectorised compares, several times faster than a full bincount, which remains the answer when
  the sample missed a value (the counts then fall short of the pixel count) or saw many.
  """
  flat = ids.reshape(-1)
  seen = np.flatnonzero(np.bincount(flat[::_HISTOGRAM_SAMPLE_STRIDE], minlength=256))
  histogram = np.zeros(256, np.int64)
  if len(seen) <= _HISTOGRAM_MAX_COMPARES:
    for value in seen.tolist():  # Python ints: `flat == value` then compares as uint8
      histogram[value] = np.count_nonzero(flat == value)
    if histogram.sum() == flat.size:
      return histogram
  return np.bincount(flat, minlength=256).astype(np.int64)


def _class_id_png(data: bytes, ids: np.ndarray, table: Optional[np.ndarray]) -> bytes:
  """The label as an 8-bit greyscale PNG of class ids, re-encoding only when it must.

  An 8-bit greyscale PNG is kept as is. An 8-bit palette PNG stores one index byte per pixel, as an
  8-bit greyscale PNG stores one value byte: its pixel data is kept and only the header says
  greyscale (the palette and the other optional chunks go). Anything else is encoded anew.
  """
  if table is None and len(data) > 26 and data[12:16] == b'IHDR' and data[24] == 8:
    if data[25] == imagefile.PNG_GREY:
      return data
    if data[25] == imagefile.PNG_PALETTE:
      kept = []
      for kind, body in imagefile.png_chunks(data):
        if kind == b'IHDR':
          body = bytearray(body)
          body[9] = imagefile.PNG_GREY
        if kind in (b'IHDR', b'IDAT', b'IEND'):
          kept.append(struct.pack('>I', len(body)) + kind + bytes(body)
                      + struct.pack('>I', zlib.crc32(kind + bytes(body))))
      return imagefile.PNG_MAGIC + b''.join(kept)
  buffer = io.BytesIO()
  Image.fromarray(ids if table is None else table[ids], 'L').save(buffer, 'PNG')
  return buffer.getvalue()


def _list(values: Sequence[int], limit: int = 5) -> str:
  text = ', '.join(str(int(v)) for v in values[:limit])
  return text + (', ...' if len(values) > limit else '')
