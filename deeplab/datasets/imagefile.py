"""JPEG and PNG files checked and described from their structure, without decoding pixels.

The builder stores images as their original bytes, so it needs only what the headers say (format,
height, width, channels) and whether the file is whole. Walking the file's structure answers both
at a small fraction of the cost of decoding:

- JPEG: the marker segments up to the first scan must be well formed, a frame header (SOFn) must
  give the size and the component count, and an end-of-image marker must follow the scan data
  (it cannot occur inside entropy-coded data, so a truncated file has none). Damage inside the
  entropy-coded data of an otherwise whole file is not detected.
- PNG: every chunk must be complete with a correct CRC-32, from IHDR to IEND (PNG's own integrity
  check, which covers the compressed pixel data too).
"""
from __future__ import annotations

import dataclasses
import struct
import zlib
from typing import Iterator, Tuple

JPEG_MAGIC = b'\xff\xd8\xff'
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
PNG_GREY, PNG_PALETTE = 0, 3  # IHDR colour types
# Channels of each PNG colour type once decoded (a palette decodes to RGB, RGBA with tRNS).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xc0, 0xd0)) - {0xc4, 0xc8, 0xcc}
_JPEG_STANDALONE = frozenset(range(0xd0, 0xd8)) | {0x01, 0xd8}  # RSTn, TEM, SOI: no length
_JPEG_SOS, _JPEG_EOI = 0xda, 0xd9


class BadImage(ValueError):
  """The file is not a whole JPEG or PNG; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
  format: str  # 'jpeg' or 'png', as the original DeepLab's image/format
  height: int
  width: int
  channels: int


def inspect(data: bytes) -> ImageInfo:
  """The format and size of a JPEG or PNG file's bytes, after checking the file is whole."""
  if data.startswith(JPEG_MAGIC):
    return _inspect_jpeg(data)
  if data.startswith(PNG_MAGIC):
    return _inspect_png(data)
  raise BadImage('not a JPEG or PNG image')


def _inspect_jpeg(data: bytes) -> ImageInfo:
  size, pos, frame = len(data), 2, None
  while True:
    if pos >= size:
      raise BadImage('truncated JPEG (ends before its image data)')
    if data[pos] != 0xff:
      raise BadImage(f'corrupt JPEG (no marker at byte {pos})')
    while pos < size and data[pos] == 0xff:  # fill bytes may precede a marker
      pos += 1
    if pos >= size:
      raise BadImage('truncated JPEG (ends inside a marker)')
    marker = data[pos]
    pos += 1
    if marker in _JPEG_STANDALONE:
      continue
    if marker == _JPEG_EOI:
      raise BadImage('corrupt JPEG (end marker before any image data)')
    if pos + 2 > size:
      raise BadImage('truncated JPEG (ends inside a segment header)')
    length = (data[pos] << 8) | data[pos + 1]
    if length < 2:
      raise BadImage(f'corrupt JPEG (invalid segment length at byte {pos})')
    if pos + length > size:
      raise BadImage('truncated JPEG (a segment runs past the end of the file)')
    if marker in _JPEG_SOF and length >= 8:
      height, width = struct.unpack('>HH', data[pos + 3:pos + 7])
      frame = (height, width, data[pos + 7])
    if marker == _JPEG_SOS:
      if frame is None or not all(frame):
        raise BadImage('corrupt JPEG (no valid frame header before the image data)')
      if data.find(b'\xff\xd9', pos + length) == -1:
        raise BadImage('truncated JPEG (no end-of-image marker after the image data)')
      return ImageInfo('jpeg', frame[0], frame[1], frame[2])
    pos += length


def png_chunks(data: bytes) -> Iterator[Tuple[bytes, memoryview]]:
  """(type, body) of each chunk of PNG bytes, up to IEND, checking lengths and CRCs."""
  view, pos = memoryview(data), len(PNG_MAGIC)
  while True:
    if pos + 8 > len(data):
      raise BadImage('truncated PNG (no IEND chunk)')
    length, kind = struct.unpack('>I4s', view[pos:pos + 8])
    end = pos + 8 + length
    if end + 4 > len(data):
      raise BadImage(f'truncated PNG (chunk {kind!r} runs past the end of the file)')
    if zlib.crc32(view[pos + 4:end]) != struct.unpack('>I', view[end:end + 4])[0]:
      raise BadImage(f'corrupt PNG (CRC mismatch in chunk {kind!r})')
    yield kind, view[pos + 8:end]
    if kind == b'IEND':
      return
    pos = end + 4


def _inspect_png(data: bytes) -> ImageInfo:
  chunks = png_chunks(data)
  kind, header = next(chunks)
  if kind != b'IHDR' or len(header) != 13:
    raise BadImage('corrupt PNG (does not start with an IHDR chunk)')
  width, height, _, colour_type = struct.unpack('>IIBB', header[:10])
  channels = _PNG_CHANNELS.get(colour_type)
  if channels is None or not width or not height:
    raise BadImage('corrupt PNG (invalid IHDR chunk)')
  kinds = {kind for kind, _ in chunks}
  if b'IDAT' not in kinds:
    raise BadImage('corrupt PNG (no image data)')
  if colour_type == PNG_PALETTE and b'tRNS' in kinds:
    channels = 4
  return ImageInfo('png', height, width, channels)
