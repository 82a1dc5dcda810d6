"""Raw dataset layout -> TFRecord shards in the original DeepLab format + `dataset.json`.

`build(dataset, raw_root, output_dir, ...)` finds the dataset's splits and examples in `raw_root`
(see `layouts`), checks and encodes every example, and writes `{split}-{i:05d}-of-{n:05d}.tfrecord`
shards and the manifest into `output_dir`.

- Each example keeps its image's original file bytes (no re-encoding); `image/format` says what
  the bytes are ('jpeg' or 'png', by content), `image/filename` is the example id, and height,
  width and channels come from the image header. The label is a single-channel PNG of class ids:
  the original file when it already is one (8-bit grey, no value mapping), the pixel data of an
  8-bit palette PNG under a greyscale header, else re-encoded.
- Images are checked for being whole JPEG/PNG files from their structure (`imagefile`), without
  decoding pixels; labels are decoded and checked for mode (class ids, not colours), size (the
  image's) and values (< num_classes or the ignore label).
  A bad example is a UserError naming the file, split and id, unless `skip_invalid`, which leaves it
  out and lists it in the manifest's `skipped`.
- Shards cut each split's examples into contiguous runs of nearly equal size (as many shards as
  asked, but never more than examples). Shards are the unit of parallel work: each of
  `num_workers` processes encodes and writes whole shards, one example in memory at a time, so
  the shards are byte-identical whatever the worker count, memory does not grow with the dataset,
  and only small summaries travel between processes. More workers than shards would idle.
  Workers are spawned (not forked) and never import TensorFlow; as with any multiprocessing
  code, a script that calls `build` with several workers needs the `if __name__ == '__main__':`
  guard.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import multiprocessing
import os
import struct
import sys
import time
import zlib
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
import tqdm

from deeplab.datasets import imagefile
from deeplab.datasets import manifest as manifest_lib
from deeplab.datasets.layouts import base
from deeplab.datasets import tfrecord
from deeplab.errors import UserError

# Label histograms: every how-many-th pixel is sampled for the values present, and how many
# values are counted one by one before a full bincount is cheaper.
_HISTOGRAM_SAMPLE_STRIDE = 31
_HISTOGRAM_MAX_COMPARES = 8
# Runs shorter than this many examples take seconds: no progress bar to clutter the log.
_PROGRESS_MIN_EXAMPLES = 1000
_PROGRESS_POLL_SECONDS = 0.5


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


def build(dataset: base.Dataset, raw_root: str, output_dir: str, splits: Sequence[str] = (),
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

  examples: Dict[str, List[base.Example]] = {}
  for split in split_names:
    found, problems = dataset.scan(root, split)
    for problem in problems:
      reject(problem.split, problem.id, problem.message)
    if not found:
      raise UserError(f'{root}: split {split!r} has no valid examples')
    examples[split] = found

  start = time.monotonic()
  tasks = []
  for split in split_names:
    runs = _shard_runs(examples[split], num_shards)
    tasks += [_ShardTask(split, manifest_lib.shard_name(split, index, len(runs)), run)
              for index, run in enumerate(runs)]
  histograms = {split: np.zeros(256, np.int64) for split in split_names}
  shards: Dict[str, List[dict]] = {split: [] for split in split_names}
  total = sum(len(v) for v in examples.values())
  workers = min(num_workers or default_num_workers(), len(tasks))
  write = functools.partial(_write_shard, dataset=dataset, output_dir=output_dir,
                            stop_at_invalid=not skip_invalid)
  with tqdm.tqdm(total=total, unit='img', file=sys.stderr,
                 disable=not progress or total < _PROGRESS_MIN_EXAMPLES,
                 mininterval=1.0 if sys.stderr.isatty() else 30.0, desc='build_data') as bar:
    for task, result in zip(tasks, _run_in_order(write, tasks, workers, bar)):
      for example_id, message in result.invalid:
        reject(task.split, example_id, message)
      histograms[task.split] += result.histogram
      shards[task.split].append({'file': task.file, 'num_examples': result.num_examples,
                                 'sha256': result.sha256, 'num_bytes': result.num_bytes})
  for split in split_names:
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


def _shard_runs(examples: Sequence[base.Example], num_shards: int
                ) -> List[Sequence[base.Example]]:
  """The examples cut into contiguous, nearly equal runs, one per shard; never an empty one."""
  count = min(num_shards, len(examples))
  bounds = [i * len(examples) // count for i in range(count + 1)]
  return [examples[bounds[i]:bounds[i + 1]] for i in range(count)]


def _classes_in(histograms: Iterable[np.ndarray], ignore_label: int) -> int:
  total = sum(histograms)
  total[ignore_label] = 0
  present = np.nonzero(total)[0]
  return int(present[-1]) + 1 if len(present) else 1


# ----------------------------------------------------------------------------- one example

class _Invalid(Exception):
  """A bad example; its message is the one line the user sees."""


def encode_files(example: base.Example, dataset: base.Dataset) -> Union[_Encoded, str]:
  """The encoded example, or one line saying why its files cannot be used."""
  try:
    return _encode(example, dataset)
  except _Invalid as e:
    return str(e)


def _encode(example: base.Example, dataset: base.Dataset) -> _Encoded:
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
  return _Encoded(record, histogram)


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


# ----------------------------------------------------------------------------- shards in parallel

@dataclasses.dataclass(frozen=True)
class _ShardTask:
  split: str
  file: str
  examples: Sequence[base.Example]


@dataclasses.dataclass
class _ShardResult:
  num_examples: int
  num_bytes: int
  sha256: str
  histogram: np.ndarray  # int64[256]: pixels per label value, all written examples
  invalid: List[Tuple[str, str]]  # (id, message) of examples left out


# Counts encoded examples across worker processes, for the progress bar (set in each worker).
_progress_counter = None


def _set_progress_counter(counter) -> None:
  global _progress_counter
  _progress_counter = counter


def _write_shard(task: _ShardTask, dataset: base.Dataset, output_dir: str,
                 stop_at_invalid: bool) -> _ShardResult:
  """Encodes the task's examples into its shard file, streaming; stops at the first invalid one
  when asked (the build then fails with its message)."""
  histogram = np.zeros(256, np.int64)
  invalid = []
  with open(os.path.join(output_dir, task.file), 'wb') as f:
    writer = tfrecord.RecordWriter(f)
    for example in task.examples:
      result = encode_files(example, dataset)
      if _progress_counter is not None:
        with _progress_counter.get_lock():
          _progress_counter.value += 1
      if isinstance(result, str):
        invalid.append((example.id, result))
        if stop_at_invalid:
          break
        continue
      writer.write(result.record)
      histogram += result.histogram
  return _ShardResult(writer.num_records, writer.num_bytes, writer.sha256(), histogram, invalid)


def _run_in_order(fn: Callable, tasks: Sequence, num_workers: int, bar: tqdm.tqdm) -> Iterator:
  """fn(task) for each task, in order, by `num_workers` processes; keeps `bar` up to date.

  The workers write whole shards, so only small results travel between processes.
  """
  counter = multiprocessing.get_context('spawn').Value('q', 0)
  if num_workers <= 1:
    _set_progress_counter(counter)
    try:
      for task in tasks:
        yield fn(task)
        bar.update(counter.value - bar.n)
    finally:
      _set_progress_counter(None)
    return
  # spawn, not fork: the parent may have TensorFlow's threads running (tests, notebooks).
  with multiprocessing.get_context('spawn').Pool(
      num_workers, initializer=_set_progress_counter, initargs=(counter,)) as pool:
    results = pool.imap(fn, tasks)
    while True:
      try:
        result = results.next(timeout=_PROGRESS_POLL_SECONDS)
      except multiprocessing.TimeoutError:
        bar.update(counter.value - bar.n)
        continue
      except StopIteration:
        return
      bar.update(counter.value - bar.n)
      yield result
