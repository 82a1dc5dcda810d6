"""Raw dataset layout -> TFRecord shards in the original DeepLab format + `dataset.json`.

`build(dataset, raw_root, output_dir, ...)` finds the dataset's splits and examples in `raw_root`
(see `layouts`), checks and encodes every example, and writes `{split}-{i:05d}-of-{n:05d}.tfrecord`
shards and the manifest into `output_dir`.

- Each example is checked and encoded on its own (`encode`); a bad example is a UserError naming
  the file, split and id, unless `skip_invalid`, which leaves it out and lists it in the
  manifest's `skipped`.
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

import contextlib
import dataclasses
import functools
import multiprocessing
from multiprocessing import shared_memory
import os
import sys
import time
from typing import Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np
import tqdm

from deeplab.datasets import encode
from deeplab.datasets import manifest as manifest_lib
from deeplab.datasets import tfrecord
from deeplab.datasets.layouts import base
from deeplab.config import BuildConfig
from deeplab.errors import UserError

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


def default_num_workers() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def build(dataset: base.Dataset, raw_root: str, output_dir: str, config: BuildConfig = BuildConfig(),
          progress: bool = True) -> Tuple[manifest_lib.Manifest, BuildStats]:
  """Writes the shards and dataset.json of `config.splits` (default: all found) into `output_dir`,
  as `config` says (shards, workers, skipping invalid examples); `dataset` is the layout."""
  root = dataset.locate(raw_root)
  dataset = dataset.with_root(root)
  skip_invalid = config.skip_invalid
  split_names = list(dict.fromkeys(config.splits)) or dataset.splits(root)
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
    runs = _shard_runs(examples[split], config.num_shards)
    for index, run in enumerate(runs):
      tasks.append(_ShardTask(split, manifest_lib.shard_name(split, index, len(runs)), run,
                              progress_slot=len(tasks)))
  histograms = {split: np.zeros(256, np.int64) for split in split_names}
  shards: Dict[str, List[dict]] = {split: [] for split in split_names}
  total = sum(len(v) for v in examples.values())
  workers = min(config.num_workers or default_num_workers(), len(tasks))
  with _progress_counts(len(tasks)) as counts, tqdm.tqdm(
      total=total, unit='img', file=sys.stderr,
      disable=not progress or total < _PROGRESS_MIN_EXAMPLES,
      mininterval=1.0 if sys.stderr.isatty() else 30.0, desc='build_data') as bar:
    write = functools.partial(_write_shard, dataset=dataset, output_dir=output_dir,
                              stop_at_invalid=not skip_invalid, progress_counts=counts.name)

    def show_progress():
      with counts.buf.cast('q') as done:
        bar.update(sum(done) - bar.n)

    for task, result in zip(tasks, _run_in_order(write, tasks, workers, show_progress)):
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


# ----------------------------------------------------------------------------- shards in parallel

@dataclasses.dataclass(frozen=True)
class _ShardTask:
  split: str
  file: str
  examples: Sequence[base.Example]
  progress_slot: int  # where this task counts its examples in the progress counts


@dataclasses.dataclass
class _ShardResult:
  num_examples: int
  num_bytes: int
  sha256: str
  histogram: np.ndarray  # int64[256]: pixels per label value, all written examples
  invalid: List[Tuple[str, str]]  # (id, message) of examples left out


@contextlib.contextmanager
def _progress_counts(num_tasks: int) -> Iterator[shared_memory.SharedMemory]:
  """Shared memory for the examples each shard task has encoded so far, one int64 per task.

  The workers open it by its name, which travels with their work (a multiprocessing.Value only
  reaches pool workers through a global set by the pool's initializer). Each task counts in its
  own slot, so counting takes no lock; the progress bar shows the sum.
  """
  memory = shared_memory.SharedMemory(create=True, size=8 * num_tasks)
  try:
    yield memory
  finally:
    memory.close()
    memory.unlink()


def _write_shard(task: _ShardTask, dataset: base.Dataset, output_dir: str, stop_at_invalid: bool,
                 progress_counts: str) -> _ShardResult:
  """Encodes the task's examples into its shard file, streaming; stops at the first invalid one
  when asked (the build then fails with its message). Counts each example in its slot of the
  shared memory named `progress_counts`."""
  histogram = np.zeros(256, np.int64)
  invalid = []
  with contextlib.closing(shared_memory.SharedMemory(progress_counts)) as counts, \
      counts.buf.cast('q') as done, open(os.path.join(output_dir, task.file), 'wb') as f:
    writer = tfrecord.RecordWriter(f)
    for example in task.examples:
      result = encode.encode_files(example, dataset)
      done[task.progress_slot] += 1
      if isinstance(result, str):
        invalid.append((example.id, result))
        if stop_at_invalid:
          break
        continue
      writer.write(result.record)
      histogram += result.histogram
  return _ShardResult(writer.num_records, writer.num_bytes, writer.sha256(), histogram, invalid)


def _run_in_order(fn: Callable, tasks: Sequence, num_workers: int,
                  show_progress: Callable[[], None]) -> Iterator:
  """fn(task) for each task, in order, by `num_workers` processes; calls `show_progress` after
  each task and, while waiting for one, every _PROGRESS_POLL_SECONDS.

  The workers write whole shards, so only small results travel between processes.
  """
  if num_workers <= 1:
    for task in tasks:
      result = fn(task)
      show_progress()
      yield result
    return
  # spawn, not fork: the parent may have TensorFlow's threads running (tests, notebooks).
  with multiprocessing.get_context('spawn').Pool(num_workers) as pool:
    results = pool.imap(fn, tasks)
    while True:
      try:
        result = results.next(timeout=_PROGRESS_POLL_SECONDS)
      except multiprocessing.TimeoutError:
        show_progress()
        continue
      except StopIteration:
        return
      show_progress()
      yield result
