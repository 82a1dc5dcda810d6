"""Measurements you can believe on a shared, noisy machine.

Every benchmark compares contenders side by side: they run interleaved round by round (A, B, A, B,
... with the order rotated each round so neither always goes first), and each contender's value is
divided by the baseline's value of the SAME round. Load that hits one round hits both sides of its
ratio, so the per-round ratios spread far less than the raw numbers; min / median / max of them are
reported with the machine's load average, and a spread (max / min) above 1.15 is flagged.

A benchmark module exposes `measure(args) -> Measurement`; `python -m bench` runs them all and
prints one table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Sequence

NOISY_SPREAD = 1.15


@dataclasses.dataclass
class Measurement:
  """One benchmark's per-round values per contender (`unit`: what a value is, e.g. images/s)."""
  benchmark: str
  unit: str
  baseline: str
  values: Dict[str, List[float]]
  target: str = ''  # the goal in words, e.g. 'pipeline >= 0.9 x in_memory'
  higher_is_better: bool = True
  notes: Dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. peak memory

  def ratios(self, name: str) -> List[float]:
    """Per-round ratios of `name` to the baseline, oriented so that > 1 means better."""
    pairs = zip(self.values[name], self.values[self.baseline])
    return [a / b if self.higher_is_better else b / a for a, b in pairs]

  def rows(self) -> List[dict]:
    rows = []
    for name, values in self.values.items():
      row = {'benchmark': self.benchmark, 'contender': name, 'unit': self.unit,
             'median': statistics.median(values), 'rounds': len(values)}
      if name != self.baseline:
        ratios = self.ratios(name)
        row.update(ratio_min=min(ratios), ratio_median=statistics.median(ratios),
                   ratio_max=max(ratios), noisy=max(ratios) / min(ratios) > NOISY_SPREAD)
      rows.append(row)
    return rows


def as_list(measured) -> List[Measurement]:
  """What a benchmark's measure() returns, one Measurement or several (e.g. one per input size),
  as a list."""
  return measured if isinstance(measured, list) else [measured]


def main(doc: str, add_arguments: Callable, measure: Callable) -> None:
  """The command line of one benchmark module: its flags, its measurement, one JSON line each."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  add_arguments(parser)
  for measurement in as_list(measure(parser.parse_args())):
    report(measurement)


def interleave(contenders: Dict[str, Callable[[], float]], rounds: int) -> Dict[str, List[float]]:
  """Runs each contender once per round, the order rotated each round; returns values by name."""
  names = list(contenders)
  values: Dict[str, List[float]] = {name: [] for name in names}
  for round_index in range(rounds):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      values[name].append(contenders[name]())
  return values


# Runs a module as `python -m` would, then writes the process's VmHWM (peak resident set of this
# program image, in kB) to the file named by the environment: the kernel's rusage is no good here,
# as its ru_maxrss carries the parent's peak over fork and exec, so a child of a big bench process
# would report at least the bench's own peak.
_PEAK_RSS_WRAPPER = """
import atexit, os, runpy, sys
def write_peak():
  with open('/proc/self/status') as status, open(os.environ['BENCH_PEAK_RSS_FILE'], 'w') as out:
    out.write(next(line.split()[1] for line in status if line.startswith('VmHWM:')))
atexit.register(write_peak)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""


def peak_rss_mib(module: str, args: Sequence[str], env: Dict[str, str], expect_error: str = ''):
  """(peak resident memory in MiB, seconds) of `python -m module args` in a child process. With
  `expect_error`, the run must instead fail with an `error:` line that contains it (a refusal is
  measured too: what it cost to refuse)."""
  with tempfile.NamedTemporaryFile('r') as peak:
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, '-c', _PEAK_RSS_WRAPPER, module, *args],
                               env=dict(env, BENCH_PEAK_RSS_FILE=peak.name),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    stderr = completed.stderr.decode()
    refused = completed.returncode == 1 and any(
        line.startswith('error:') and expect_error in line for line in stderr.splitlines())
    if (completed.returncode != 0 and not expect_error) or (expect_error and not refused):
      raise SystemExit(f'{module} {" ".join(args)} exited {completed.returncode}, expected '
                       f'{"error: ..." + expect_error if expect_error else 0}: {stderr[-2000:]}')
    return int(peak.read()) / 1024, seconds


def step_metric(stdout: str, key: str) -> float:
  """The value of `key` in the JSON metric lines a step printed on `stdout` (the first line
  that has it)."""
  metrics = (json.loads(line) for line in stdout.splitlines() if line.startswith('{'))
  return next(m[key] for m in metrics if key in m)


def judged(measurement: Measurement, contender: str, at_least: float,
           applies: bool = True) -> Measurement:
  """`measurement` with its target followed by 'met' or 'missed' (the median ratio of `contender`
  against `at_least`), or by "not this CPU's target" where it does not apply."""
  if not applies:
    verdict = "not this CPU's target"
  else:
    verdict = 'met' if statistics.median(measurement.ratios(contender)) >= at_least else 'missed'
  return dataclasses.replace(measurement, target=f'{measurement.target}: {verdict}')


def load_average() -> float:
  return os.getloadavg()[0]


def report(measurement: Measurement) -> None:
  """One JSON line per contender (machine-readable), as every step prints its metrics."""
  for row in measurement.rows():
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
                     sort_keys=False), flush=True)
  if measurement.notes:
    print(json.dumps(dict(benchmark=measurement.benchmark, **measurement.notes)), flush=True)


def table(measurements: Sequence[Measurement], load_before: float, load_after: float) -> str:
  """The human table of `python -m bench`: median value, and the ratio to the baseline as
  median [min, max] over rounds."""
  lines = [f'load average {load_before:.2f} before, {load_after:.2f} after; '
           f'{os.cpu_count()} cores; ratios: contender / baseline of the same round (> 1 is better)',
           f'{"benchmark":<18} {"contender":<24} {"median":>12} {"unit":<10} '
           f'{"ratio median [min, max]":<28} target']
  for measurement in measurements:
    for row in measurement.rows():
      ratio = ''
      if 'ratio_median' in row:
        ratio = (f'{row["ratio_median"]:.3f} [{row["ratio_min"]:.3f}, {row["ratio_max"]:.3f}]'
                 + (' noisy' if row['noisy'] else ''))
      else:
        ratio = '(baseline)'
      target = measurement.target if row['contender'] != measurement.baseline else ''
      lines.append(f'{row["benchmark"]:<18} {row["contender"]:<24} {row["median"]:>12.2f} '
                   f'{row["unit"]:<10} {ratio:<28} {target}')
    for name, value in measurement.notes.items():
      lines.append(f'{measurement.benchmark:<18} {name:<24} {value:>12.2f}')
  return '\n'.join(lines)
