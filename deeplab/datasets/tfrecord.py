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

A record's length header is trusted by no reader here: it is checked against the bytes left in the
file before anything is read or allocated for it (TensorFlow's reader allocates the claimed length
first, so a shard claiming 2**60 bytes crashes the process). `check_records` walks a whole shard
that way before TensorFlow is given it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
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


def _mask(crc: int) -> bytes:
  return struct.pack('<I', (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xffffffff)


def _masked_crc(data: bytes) -> bytes:
  return _mask(google_crc32c.value(data))


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


# TFRecord framing: an 8-byte length and its 4-byte CRC, then the data and its 4-byte CRC.
_HEADER_BYTES = 12
_CRC_BYTES = 4
# What check_records reads at a time: a record of any size is checked in bounded memory.
_CHUNK_BYTES = 1 << 20


def _data_length(path: str, index: int, offset: int, header: bytes, left: int) -> int:
  """The data length in the header of record `index`, which starts at byte `offset` with `left`
  bytes from there to the end of the file; ValueError (naming the record) unless the header is
  whole, its CRC holds and the data and its CRC fit in the bytes left."""
  where = f'{path}: record {index} at byte {offset}'
  if len(header) < _HEADER_BYTES:
    raise ValueError(f'{where}: truncated header ({len(header)} of {_HEADER_BYTES} bytes)')
  if header[8:] != _masked_crc(header[:8]):
    raise ValueError(f'{where}: corrupt length (CRC mismatch)')
  length = struct.unpack('<Q', header[:8])[0]
  available = left - _HEADER_BYTES - _CRC_BYTES
  if length > available:
    raise ValueError(f'{where}: claims {length} bytes of data but only {max(available, 0)} are '
                     'left in the file')
  return length


def read_records(path: str) -> Iterator[bytes]:
  """The records of a TFRecord file (uncompressed), checking each one's length against the bytes
  left before reading it, and both its CRCs."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    index = offset = 0
    while offset < size:
      length = _data_length(path, index, offset, f.read(_HEADER_BYTES), size - offset)
      record = f.read(length)
      if f.read(_CRC_BYTES) != _masked_crc(record):
        raise ValueError(f'{path}: record {index} at byte {offset}: corrupt data (CRC mismatch)')
      yield record
      index += 1
      offset += _HEADER_BYTES + length + _CRC_BYTES


@dataclasses.dataclass
class RecordsCheck:
  """What `check_records` found: the file's SHA-256, its record count, and the first framing
  problem ('' when every record is whole and both its CRCs hold)."""
  sha256: str
  num_records: int
  problem: str


def check_records(path: str) -> RecordsCheck:
  """Walks every record of a TFRecord file in one read: each length is checked against the bytes
  left before the data is read (in bounded chunks), then both CRCs. The SHA-256 covers the whole
  file even past a problem, so that a caller holding a checksum can tell a file modified since it
  was written (checksum differs) from one written with bad framing (checksum matches)."""
  digest = hashlib.sha256()
  size = os.path.getsize(path)
  index = offset = 0
  problem = ''
  with open(path, 'rb') as f:

    def read(count: int) -> bytes:
      data = f.read(count)
      digest.update(data)
      return data

    try:
      while offset < size:
        length = _data_length(path, index, offset, read(_HEADER_BYTES), size - offset)
        crc, left = 0, length
        while left:
          chunk = read(min(left, _CHUNK_BYTES))
          if not chunk:  # the file shrank while being read
            raise ValueError(f'{path}: record {index} at byte {offset}: truncated data')
          crc = google_crc32c.extend(crc, chunk)
          left -= len(chunk)
        if read(_CRC_BYTES) != _mask(crc):
          raise ValueError(f'{path}: record {index} at byte {offset}: corrupt data (CRC mismatch)')
        index += 1
        offset += _HEADER_BYTES + length + _CRC_BYTES
    except ValueError as e:
      problem = str(e)
      while read(_CHUNK_BYTES):
        pass
  return RecordsCheck(digest.hexdigest(), index, problem)
