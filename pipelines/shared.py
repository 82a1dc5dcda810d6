"""What every orchestrator shares: the step SPECs, the images, the sweep, the steps' metric lines, and
writing or checking a generated file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List, Optional, Tuple

from steps import build_data, evaluate, export, predict, train

# The steps in pipeline order, by module name (`python -m steps.<name>`).
SPECS = {spec.name: spec for spec in (build_data.SPEC, train.SPEC, evaluate.SPEC, export.SPEC, predict.SPEC)}

# The project image (Dockerfile) is built on it, and Valohai runs the steps in it when valohai.yaml names
# no prebuilt image; both install the pinned requirements with pipelines/install_requirements.sh (the
# Dockerfile says why not the official TensorFlow GPU image).
BASE_IMAGE = 'python:3.11-slim'
# Built by `make image` (docs/image.md); the Kubeflow components run in it. Push it to
# your registry and pass that name as the pipeline's `image` argument (or set DEEPLAB_IMAGE when
# compiling) to run on a cluster.
PROJECT_IMAGE = os.environ.get('DEEPLAB_IMAGE', 'deeplab-pipelines:latest')

# The sweep. Valohai's grid task trains every learning rate with every variant; Kubeflow's ParallelFor
# trains every learning rate for the one model_variant of a run. Three rates around DeepLab's
# published 0.007 (Valohai's grid; Kubeflow had only two): kfp.local trains the points one after
# another, and at the end-to-end test's size a point costs about 25 s of a two-minute local run on two
# cores, so the third keeps the local run quick. Only variants of deeplab.config.
SWEEP_LEARNING_RATES = (0.007, 0.02, 0.05)
SWEEP_MODEL_VARIANTS = ('mobilenet_v2', 'resnet_v1_50_beta')


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
