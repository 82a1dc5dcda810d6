"""Runs a step inside a Kubeflow component and reports its metric lines as KFP metrics.

The components in pipelines/kfp_components.py call `run_step(step, locals())` from the project image:
every component input is a step flag of the same name, input artifacts are passed as their (suffix-less)
paths, the `output` artifact is the path the step writes, and the numbers in the step's JSON metric
lines (the last value of each) are logged to the `metrics` output.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List

from pipelines.metric_lines import run_passing_through
from pipelines.step_specs import SPECS
from steps.flags import INTEGER

# Component arguments that are not step flags.
METRICS_OUTPUT = 'metrics'


def flag_arguments(step: str, values: Dict) -> List[str]:
  """Step flags for component arguments: artifacts as paths, lists comma-joined, booleans as true/false.

  None (an optional input artifact that was not connected) is left out.
  """
  spec = SPECS[step]
  integer_lists = {p.name for p in spec.parameters if p.multiple and p.type == INTEGER}
  argv = []
  for name, value in values.items():
    if name == METRICS_OUTPUT or value is None:
      continue
    if hasattr(value, 'path'):
      value = value.path
    elif isinstance(value, bool):
      value = 'true' if value else 'false'
    elif isinstance(value, (list, tuple)):
      # KFP hands list items over as JSON numbers, so [65, 65] arrives as [65.0, 65.0].
      items = [int(v) for v in value] if name in integer_lists else value
      value = ','.join(map(str, items))
    argv.append(f'--{name}={value}')
  return argv


def last_numbers(records: List[dict]) -> Dict[str, float]:
  """The last numeric value of each key of the metric records."""
  numbers = {}
  for record in records:
    numbers.update({k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
  return numbers


def run_step(step: str, values: Dict) -> Dict[str, float]:
  """Runs `python -m steps.<step>` with `values` as flags; logs its metrics; fails when the step fails."""
  command = [sys.executable, '-m', f'steps.{step}'] + flag_arguments(step, values)
  print(' '.join(command), file=sys.stderr, flush=True)
  output = values.get('output')
  if output is not None:
    os.makedirs(os.path.dirname(output.path), exist_ok=True)
  exit_code, records = run_passing_through(command)
  if exit_code != 0:
    # Raising fails the task (and lets KFP retry it); the step's own error line is just above.
    raise RuntimeError(f'steps.{step} failed with exit code {exit_code}')
  numbers = last_numbers(records)
  metrics = values.get(METRICS_OUTPUT)
  if metrics is not None:
    for key, value in numbers.items():
      metrics.log_metric(key, value)
  return numbers
