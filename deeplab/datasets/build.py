"""Raw dataset layout -> TFRecord shards in the original DeepLab format + `dataset.json`.

`build(dataset, raw_root, output_dir, ...)` finds the dataset's splits and examples in `raw_root`
(see `registry`), checks and encodes every example, and writes `{split}-{i:05d}-of-{n:05d}.tfrecord`
shards and the manifest into `output_dir`.

- Each example keeps its image's original file bytes (no re-encoding); `image/format` says what
  the bytes are ('jpeg' or 'png', by content), `image/filename` is the example id, and height,
  width and channels come from the image header. The label is a single-channel PNG of class ids:
  the original file when it already is one (8-bit grey, no value mapping), else re-encoded.
- Every image is fully decoded once to catch corrupt or truncated files; labels are checked for
  mode (class ids, not colours), size (the image's) and values (< num_classes or the ignore label).
  A bad example is a UserError naming the file, split and id, unless `skip_invalid`, which leaves it
  out and lists it in the manifest's `skipped`.
- Examples are encoded by `num_workers` processes and written by this one in dataset order, so the
  shards are byte-identical whatever the worker count. At most a fixed window of encoded examples is
  in flight, so memory does not grow with the dataset. Workers never import TensorFlow.
- Shards split each split's examples into contiguous runs of nearly equal size (as many shards
  as asked, but never more than examples).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import io
import multiprocessing
import os
import struct
import sys
import threading
import time
import zlib
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
import tqdm

from deeplab.datasets import manifest as manifest_lib
from deeplab.datasets import registry
from deeplab.datasets import tfrecord
from deeplab.errors import UserError

_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
_PNG_GREY, _PNG_PALETTE = 0, 3  # IHDR colour types
# Channels of a decoded image per PIL mode (a palette image decodes to RGB).
_CHANNELS = {'1': 1, 'L': 1, 'I': 1, 'I;16': 1, 'LA': 2, 'P': 3, 'RGB': 3, 'YCbCr': 3, 'RGBA': 4,
             'CMYK': 4}
# Encoded examples in flight per worker: enough to keep workers busy, bounded for memory.
_WINDOW_PER_WORKER = 8
_CHUNK_SIZE = 4  # examples per message to a worker: fewer, larger messages
# Runs shorter than this many examples take seconds: no progress bar to clutter the log.
_PROGRESS_MIN_EXAMPLES = 1000


@dataclasses.dataclass
class BuildStats:
  """What a build did, for the step's metric line."""
  images: int  # examples written (all splits)
  seconds: float
  bytes_written: int  # TFRecord bytes
  split_counts: Dict[str, int]
  skipped: List[dict]

  @property
  def images_per_sec(self) -> float:
    return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclasses.dataclass
class _Encoded:
  record: bytes
  histogram: np.ndarray  # int64[256]: pixels per label value


def default_num_workers() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def build(dataset: registry.Dataset, raw_root: str, output_dir: str, splits: Sequence[str] = (),
          num_shards: int = 4, num_workers: int = 0, skip_invalid: bool = False,
          progress: bool = True) -> Tuple[manifest_lib.Manifest, BuildStats]:
  """Writes the shards and dataset.json of `splits` (default: all found) into `output_dir`."""
  root = dataset.locate(raw_root)
  dataset = dataset.with_root(root)
  split_names = list(dict.fromkeys(splits)) or dataset.splits(root)
  if not split_names:
    raise UserError(f'{root}: no splits found for the {dataset.name} layout')
  skipped: List[dict] = []

  def reject(split: str, example_id: str, message: str) -> None:
    if not skip_invalid:
      raise UserError(message)
    skipped.append({'split': split, 'id': example_id, 'reason': message})

  examples: Dict[str, List[registry.Example]] = {}
  for split in split_names:
    found, problems = dataset.scan(root, split)
    for problem in problems:
      reject(problem.split, problem.id, problem.message)
    if not found:
      raise UserError(f'{root}: split {split!r} has no valid examples')
    examples[split] = found

  start = time.monotonic()
  total = sum(len(v) for v in examples.values())
  histograms = {split: np.zeros(256, np.int64) for split in split_names}
  shards: Dict[str, List[dict]] = {split: [] for split in split_names}
  ordered = (e for split in split_names for e in examples[split])
  encode = functools.partial(encode_files, dataset=dataset)
  workers = num_workers or default_num_workers()
  with _ordered_map(encode, ordered, workers) as results, \
      tqdm.tqdm(total=total, unit='img', file=sys.stderr,
                disable=not progress or total < _PROGRESS_MIN_EXAMPLES,
                mininterval=1.0 if sys.stderr.isatty() else 30.0, desc='build_data') as bar:
    for split in split_names:
      for index, count in enumerate(_shard_sizes(len(examples[split]), num_shards)):
        name = manifest_lib.shard_name(split, index, min(num_shards, len(examples[split])))
        with open(os.path.join(output_dir, name), 'wb') as f:
          writer = tfrecord.RecordWriter(f)
          for _ in range(count):
            example, result = next(results)
            bar.update()
            if isinstance(result, str):
              reject(example.split, example.id, result)
              continue
            writer.write(result.record)
            histograms[split] += result.histogram
        shards[split].append({'file': name, 'num_examples': writer.num_records,
                              'sha256': writer.sha256(), 'num_bytes': writer.num_bytes})
      if not any(s['num_examples'] for s in shards[split]):
        raise UserError(f'{root}: split {split!r} has no valid examples (all were skipped)')
  seconds = time.monotonic() - start

  if not dataset.num_classes:  # folder layout without a class count: the labels tell
    dataset = dataset.with_classes(_classes_in(histograms.values(), dataset.ignore_label))
  split_infos = {}
  for split in split_names:
    histogram = histograms[split][:dataset.num_classes].copy()
    if dataset.ignore_label < dataset.num_classes:
      histogram[dataset.ignore_label] = 0
    split_infos[split] = manifest_lib.SplitInfo(
        num_examples=sum(s['num_examples'] for s in shards[split]), shards=shards[split],
        label_histogram=[int(v) for v in histogram])
  manifest = manifest_lib.Manifest(
      name=dataset.name, num_classes=dataset.num_classes, ignore_label=dataset.ignore_label,
      class_names=dataset.class_names, colormap=dataset.colormap, splits=split_infos,
      skipped=skipped, folder=output_dir)
  manifest_lib.write_manifest(manifest, output_dir)
  stats = BuildStats(
      images=sum(i.num_examples for i in split_infos.values()), seconds=seconds,
      bytes_written=sum(s['num_bytes'] for v in shards.values() for s in v),
      split_counts={k: v.num_examples for k, v in split_infos.items()}, skipped=skipped)
  return manifest, stats


def _shard_sizes(num_examples: int, num_shards: int) -> List[int]:
  """Sizes of contiguous, nearly equal runs; never an empty shard."""
  count = min(num_shards, num_examples)
  return [(i + 1) * num_examples // count - i * num_examples // count for i in range(count)]


def _classes_in(histograms: Iterable[np.ndarray], ignore_label: int) -> int:
  total = sum(histograms)
  total[ignore_label] = 0
  present = np.nonzero(total)[0]
  return int(present[-1]) + 1 if len(present) else 1


# ----------------------------------------------------------------------------- one example

class _Invalid(Exception):
  """A bad example; its message is the one line the user sees."""


def encode_files(example: registry.Example, dataset: registry.Dataset) -> Union[_Encoded, str]:
  """The encoded example, or one line saying why its files cannot be used."""
  try:
    return _encode(example, dataset)
  except _Invalid as e:
    return str(e)


def _encode(example: registry.Example, dataset: registry.Dataset) -> _Encoded:
  where = f'(split {example.split!r}, id {example.id!r})'
  image = _read(example.image, where)
  if image.startswith(_JPEG_MAGIC):
    image_format = 'jpeg'
  elif image.startswith(_PNG_MAGIC):
    image_format = 'png'
  else:
    raise _Invalid(f'{example.image}: not a JPEG or PNG image {where}')
  try:
    with Image.open(io.BytesIO(image)) as im:
      width, height, mode = im.width, im.height, im.mode
      if image_format == 'jpeg':
        # Decoding at 1/8 scale still entropy-decodes every block (so a corrupt or truncated file
        # fails) but skips most of the inverse DCT: about 3x faster than a full decode.
        im.draft(mode, (width // 8, height // 8))
      im.load()
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise _Invalid(f'{example.image}: corrupt or truncated image {where}: {e}') from None
  if mode not in _CHANNELS:
    raise _Invalid(f'{example.image}: image mode {mode} {where}; expected RGB or greyscale')

  label_bytes = _read(example.label, where)
  if not label_bytes.startswith(_PNG_MAGIC):
    raise _Invalid(f'{example.label}: label is not a PNG {where}; expected a PNG of class ids')
  try:
    label = Image.open(io.BytesIO(label_bytes))
    label.load()
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise _Invalid(f'{example.label}: corrupt or truncated label PNG {where}: {e}') from None
  if label.mode not in ('L', 'P'):
    kind = 'colours (RGB)' if label.mode in ('RGB', 'RGBA') else f'mode {label.mode}'
    raise _Invalid(f'{example.label}: label holds {kind}, not class ids {where}; '
                   f'{dataset.rgb_label_hint}')
  if label.size != (width, height):
    raise _Invalid(f'{example.label}: label is {label.width}x{label.height} but image '
                   f'{example.image} is {width}x{height} {where}; expected the same size')
  # Palette images count their indices, which are the class ids.
  histogram = np.asarray(label.histogram(), np.int64)
  table = dataset.label_table(example.label)
  if table is not None:
    histogram = np.bincount(table, weights=histogram, minlength=256).astype(np.int64)
  if dataset.num_classes:
    bad = [v for v in np.nonzero(histogram[dataset.num_classes:])[0] + dataset.num_classes
           if v != dataset.ignore_label]
    if bad:
      raise _Invalid(f'{example.label}: label values {_list(bad)} out of range {where}; expected '
                     f'0..{dataset.num_classes - 1} or the ignore label {dataset.ignore_label}')
  label_png = _class_id_png(label_bytes, label, table)
  record = tfrecord.encode_example(image, image_format, example.id, height, width,
                                   _CHANNELS[mode], label_png)
  return _Encoded(record, histogram)


def _read(path: str, where: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise _Invalid(f'{path}: cannot read {where}: {e.strerror}') from None


def _class_id_png(data: bytes, label: Image.Image, table: Optional[np.ndarray]) -> bytes:
  """The label as an 8-bit greyscale PNG of class ids, re-encoding only when it must.

  An 8-bit greyscale PNG is kept as is. An 8-bit palette PNG stores one index byte per pixel, as an
  8-bit greyscale PNG stores one value byte: its pixel data is kept and only the header says
  greyscale (the palette and the other optional chunks go). Anything else is decoded and encoded.
  """
  if table is None and len(data) > 26 and data[12:16] == b'IHDR' and data[24] == 8:
    if data[25] == _PNG_GREY:
      return data
    if data[25] == _PNG_PALETTE:
      chunks = _png_chunks(data)
      if chunks is not None:
        ihdr = bytearray(chunks[0][1])
        ihdr[9] = _PNG_GREY
        kept = [(b'IHDR', bytes(ihdr))] + [c for c in chunks if c[0] in (b'IDAT', b'IEND')]
        return _PNG_MAGIC + b''.join(
            struct.pack('>I', len(body)) + kind + body
            + struct.pack('>I', zlib.crc32(kind + body) & 0xffffffff) for kind, body in kept)
  ids = np.asarray(label) if table is None else table[np.asarray(label)]
  buffer = io.BytesIO()
  Image.fromarray(ids, 'L').save(buffer, 'PNG')
  return buffer.getvalue()


def _png_chunks(data: bytes) -> Optional[List[Tuple[bytes, bytes]]]:
  """(type, body) of each chunk of a PNG, or None if the chunk structure is broken."""
  chunks, pos = [], len(_PNG_MAGIC)
  while pos + 12 <= len(data):
    length, kind = struct.unpack('>I4s', data[pos:pos + 8])
    chunks.append((kind, data[pos + 8:pos + 8 + length]))
    pos += 12 + length
    if kind == b'IEND':
      return chunks if chunks[0][0] == b'IHDR' else None
  return None


def _list(values: Sequence[int], limit: int = 5) -> str:
  text = ', '.join(str(int(v)) for v in values[:limit])
  return text + (', ...' if len(values) > limit else '')


# ----------------------------------------------------------------------------- parallel map

@contextlib.contextmanager
def _ordered_map(fn: Callable, items: Iterator, num_workers: int) -> Iterator[Iterator[tuple]]:
  """Yields an iterator of (item, fn(item)) in input order, computed by `num_workers` processes.

  A semaphore holds the feeder back so that at most a window of results is pending at a time.
  """
  if num_workers <= 1:
    yield ((item, fn(item)) for item in items)
    return
  slots = threading.Semaphore(num_workers * _WINDOW_PER_WORKER)
  stopped = threading.Event()
  pending = collections.deque()  # items fed to the pool whose results have not come back yet

  def feed():
    for item in items:
      slots.acquire()
      if stopped.is_set():
        return
      pending.append(item)
      yield item

  def results():
    for result in pool.imap(fn, feed(), chunksize=_CHUNK_SIZE):
      slots.release()
      yield pending.popleft(), result

  # spawn, not fork: the parent may have TensorFlow's threads running (tests, notebooks).
  pool = multiprocessing.get_context('spawn').Pool(num_workers)
  try:
    yield results()
  finally:
    stopped.set()
    slots.release(num_workers * _WINDOW_PER_WORKER)  # unblock the feeder so the pool can stop
    pool.terminate()
    pool.join()
