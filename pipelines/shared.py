"""What every orchestrator's code shares: the repository root, the images, the steps' metric lines, and
writing or checking a generated file. (The steps and the graph they form are pipelines/graph.py.)

It imports no step: DVC's plot glue (pipelines/dvc/plots.py) runs inside stages and imports it, so
everything it imports is a dependency of those stages."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List, Optional, Tuple

# The repository: generated files are written here, and the commands run from it.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The project image (Dockerfile) is built on it, and Valohai runs the steps in it when valohai.yaml names
# no prebuilt image; both install the pinned requirements with pipelines/install_requirements.sh (the
# Dockerfile says why not the official TensorFlow GPU image).
BASE_IMAGE = 'python:3.11-slim'
# Built by `make image` (docs/image.md); the Kubeflow components run in it. Push it to
# your registry and pass that name as the pipeline's `image` argument (or set DEEPLAB_IMAGE when
# compiling) to run on a cluster.
PROJECT_IMAGE = os.environ.get('DEEPLAB_IMAGE', 'deeplab-pipelines:latest')


def metric_record(line: str) -> Optional[dict]:
  """The JSON object on a line of a step's stdout (a metric record), or None for a log line."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  return record if isinstance(record, dict) else None


def run_passing_through(command, **popen_kwargs) -> Tuple[int, List[dict]]:
  """Runs `command`, echoing its stdout as it comes, so the user sees what running the step by hand
  shows; returns its exit code and its metric records."""
  records = []
  with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, **popen_kwargs) as proc:
    for line in proc.stdout:
      sys.stdout.write(line)
      sys.stdout.flush()
      record = metric_record(line)
      if record is not None:
        records.append(record)
  return proc.returncode, records


def write_or_check(path: str, text: str, check: bool, regenerate: str) -> int:
  """Writes a generated file, or with `check` only compares; returns the exit status (1: out of date,
  with the command `regenerate` that rewrites it)."""
  if not check:
    with open(path, 'w') as f:
      f.write(text)
    return 0
  with open(path) as f:
    if f.read() == text:
      return 0
  print(f'error: {path} is out of date: run {regenerate}', file=sys.stderr)
  return 1
