"""The TFRecord example format of the original DeepLab builders (build_voc2012_data.py et al.).

Feature keys are facts of that format; our shards and theirs are interchangeable. The image and the
label map are stored encoded (the image as its original file bytes, the label as a single-channel
PNG of class ids).

Encoding and framing are written here without TensorFlow, so that building a dataset does not pay
TensorFlow's import time and memory in every worker process: `encode_example` produces the bytes
of a serialized `tf.train.Example` (protobuf wire format, features in sorted key order, so equal
inputs give equal bytes), and `RecordWriter` / `read_records` use the TFRecord framing
(little-endian length, masked CRC-32C of the length, data, masked CRC-32C of the data).
`parse_example` reads such an Example back into a dict (for checks and tests; the training input
pipeline parses with TensorFlow).
"""
from __future__ import annotations

import hashlib
import struct
from typing import BinaryIO, Dict, Iterator, List, Union

import google_crc32c

IMAGE_ENCODED = 'image/encoded'
IMAGE_FILENAME = 'image/filename'
IMAGE_FORMAT = 'image/format'
IMAGE_HEIGHT = 'image/height'
IMAGE_WIDTH = 'image/width'
IMAGE_CHANNELS = 'image/channels'
LABEL_ENCODED = 'image/segmentation/class/encoded'
LABEL_FORMAT = 'image/segmentation/class/format'

# Every key of the original format: bytes features, then int64 features.
BYTES_KEYS = (IMAGE_ENCODED, IMAGE_FILENAME, IMAGE_FORMAT, LABEL_ENCODED, LABEL_FORMAT)
INT64_KEYS = (IMAGE_HEIGHT, IMAGE_WIDTH, IMAGE_CHANNELS)
EXAMPLE_KEYS = BYTES_KEYS + INT64_KEYS

# Protobuf wire types, and the field numbers of tf.train.{Example,Features,Feature,*List}.
_VARINT, _LEN = 0, 2
_FEATURE_BYTES_LIST, _FEATURE_INT64_LIST = 1, 3

_MASK_DELTA = 0xa282ead8


def encode_example(image: bytes, image_format: str, filename: str, height: int, width: int,
                   channels: int, label_png: bytes) -> bytes:
  """A serialized tf.train.Example with the original DeepLab keys."""
  features = {
      IMAGE_ENCODED: image, IMAGE_FILENAME: filename.encode('utf-8'),
      IMAGE_FORMAT: image_format.encode('ascii'), LABEL_ENCODED: label_png,
      LABEL_FORMAT: b'png', IMAGE_HEIGHT: height, IMAGE_WIDTH: width, IMAGE_CHANNELS: channels,
  }
  # Nested messages are written as header pieces around their payload and joined once at the
  # end, so the (large) image bytes are copied once.
  pieces, size = [], 0
  for key in _SORTED_KEYS:
    value = features[key]
    if isinstance(value, bytes):  # Feature.bytes_list = BytesList{repeated bytes value = 1}
      kind = _FEATURE_BYTES_LIST
    else:  # Feature.int64_list = Int64List{repeated int64 value = 1 [packed]}
      kind, value = _FEATURE_INT64_LIST, _varint(value)
    values = _header(1, len(value))
    feature = _header(kind, len(values) + len(value))
    value_field = _header(2, len(feature) + len(values) + len(value))
    # Features.feature is map<string, Feature> = 1: entries {key = 1, value = 2}.
    entry_size = len(_KEY_FIELDS[key]) + len(value_field) + len(feature) + len(values) + len(value)
    entry = _header(1, entry_size)
    pieces += [entry, _KEY_FIELDS[key], value_field, feature, values, value]
    size += len(entry) + entry_size
  return b''.join([_header(1, size)] + pieces)  # Example.features = 1


def parse_example(record: bytes) -> Dict[str, Union[bytes, int, List]]:
  """{key: value} of a serialized tf.train.Example; single values are unwrapped from their list."""
  result = {}
  for _, features in _fields(record):
    for _, entry in _fields(features):
      key, feature = b'', b''
      for number, value in _fields(entry):
        if number == 1:
          key = value
        elif number == 2:
          feature = value
      for kind, values in _fields(feature):
        if kind == _FEATURE_BYTES_LIST:
          items = [v for _, v in _fields(values)]
        elif kind == _FEATURE_INT64_LIST:
          items = _int64_values(values)
        else:  # float_list: not used by this format
          items = []
        result[key.decode('utf-8')] = items[0] if len(items) == 1 else items
  return result


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # negative int64s are written as their two's complement
  out = bytearray()
  while True:
    byte = value & 0x7f
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _header(number: int, length: int) -> bytes:
  """The key and length that precede a length-delimited field's payload."""
  return _varint((number << 3) | _LEN) + _varint(length)


# The map-entry key field of each feature, encoded once.
_SORTED_KEYS = sorted(EXAMPLE_KEYS)
_KEY_FIELDS = {key: _header(1, len(key)) + key.encode('utf-8') for key in EXAMPLE_KEYS}


def _read_varint(data: bytes, pos: int):
  value = shift = 0
  while True:
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7f) << shift
    shift += 7
    if not byte & 0x80:
      return value, pos


def _fields(data: bytes) -> Iterator:
  """(field number, value) pairs of a message: bytes for length-delimited fields, ints for varints."""
  pos = 0
  while pos < len(data):
    key, pos = _read_varint(data, pos)
    number, wire_type = key >> 3, key & 7
    if wire_type == _LEN:
      length, pos = _read_varint(data, pos)
      yield number, data[pos:pos + length]
      pos += length
    elif wire_type == _VARINT:
      value, pos = _read_varint(data, pos)
      yield number, value
    else:
      raise ValueError(f'unexpected protobuf wire type {wire_type}')


def _int64_values(data: bytes) -> List[int]:
  values = []
  for _, value in _fields(data):
    if isinstance(value, bytes):  # packed
      pos = 0
      while pos < len(value):
        item, pos = _read_varint(value, pos)
        values.append(item)
    else:
      values.append(value)
  return [v - (1 << 64) if v >= 1 << 63 else v for v in values]


def _masked_crc(data: bytes) -> bytes:
  crc = google_crc32c.value(data)
  return struct.pack('<I', (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xffffffff)


class RecordWriter:
  """Appends TFRecord-framed records to a binary file, keeping the count, size and SHA-256."""

  def __init__(self, f: BinaryIO):
    self._file = f
    self.num_records = 0
    self.num_bytes = 0
    self._sha256 = hashlib.sha256()

  def write(self, record: bytes) -> None:
    length = struct.pack('<Q', len(record))
    for chunk in (length, _masked_crc(length), record, _masked_crc(record)):
      self._file.write(chunk)
      self._sha256.update(chunk)
      self.num_bytes += len(chunk)
    self.num_records += 1

  def sha256(self) -> str:
    return self._sha256.hexdigest()


def read_records(path: str) -> Iterator[bytes]:
  """The records of a TFRecord file (uncompressed), checking both CRCs of each."""
  with open(path, 'rb') as f:
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f'{path}: truncated record header')
      length = header[:8]
      if header[8:] != _masked_crc(length):
        raise ValueError(f'{path}: corrupt record length (CRC mismatch)')
      record = f.read(struct.unpack('<Q', length)[0])
      if f.read(4) != _masked_crc(record):
        raise ValueError(f'{path}: corrupt or truncated record (CRC mismatch)')
      yield record
