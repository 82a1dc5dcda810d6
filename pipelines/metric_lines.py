"""The steps' stdout protocol: one JSON object per line is a metric record, any other line is a log.

Valohai reads these lines itself; the local Valohai runner, the DVC plot wrapper and the Kubeflow
components read them with `run_passing_through`, which also echoes them, so the user sees the same
output as when running the step by hand.
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import List, Optional, Tuple


def metric_record(line: str) -> Optional[dict]:
  """The JSON object on `line`, or None for a log line."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  return record if isinstance(record, dict) else None


def run_passing_through(command, **popen_kwargs) -> Tuple[int, List[dict]]:
  """Runs `command`, echoing its stdout as it comes; returns its exit code and its metric records."""
  records = []
  with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, **popen_kwargs) as proc:
    for line in proc.stdout:
      sys.stdout.write(line)
      sys.stdout.flush()
      record = metric_record(line)
      if record is not None:
        records.append(record)
  return proc.returncode, records
