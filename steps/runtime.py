"""How a step runs: one `error:` line and an exit status for every way it can end, signals, metric lines.

- Bad input (`deeplab.errors.UserError`) ends the step with `error: <what>` on stderr and exit 1; a
  write that fails for lack of space (or quota, or on a read-only file system) the same way, naming
  what was being written; a bug with its traceback, then such a line.
- SIGTERM and SIGINT unwind the step (every `with` removes what it was writing) and exit 128 + the
  signal number.
- Metrics are one JSON object per stdout line, flushed; logs go to stderr.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import traceback
from typing import Callable, Optional

from deeplab.errors import UserError
from steps.files import write_failure

log = logging.getLogger('steps')


def setup_logging() -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's C++ banner off stderr
  logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                      format='%(asctime)s %(name)s %(levelname)s %(message)s')
  logging.getLogger('tensorflow').setLevel(logging.ERROR)  # tf.compat.v1 deprecation notices


class Interrupted(BaseException):
  """SIGTERM or SIGINT arrived: unwinds the step so every `with` removes what it was writing."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def _raise_interrupted(signum, frame):
  raise Interrupted(signum)


def run_step(main: Callable[[], None]) -> None:
  """Runs a step's main(): one clear line and exit 1 on bad input, exit 1 with traceback on a bug.

  SIGTERM and SIGINT end the step with `error: interrupted` and exit 128 + the signal number, after
  its partial output, staging and extraction folders are removed (a step may install its own
  handler instead, as train does to save a checkpoint first).
  """
  setup_logging()
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, _raise_interrupted)
  try:
    main()
  except UserError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  except Interrupted as e:
    print(f'error: interrupted ({e}); partial outputs removed', file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except Exception as e:
    failure = write_failure(e)
    if failure:  # a full disk, outside the places `writing` names: the system's path, if any
      reason, path = failure
      print(f'error: {reason} writing {path or "a file the system did not name"}',
            file=sys.stderr, flush=True)
      sys.exit(1)
    # A bug: keep the traceback, but end with one line that names it.
    traceback.print_exc()
    print(f'error: unexpected {type(e).__name__}: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


def emit_metrics(**values) -> None:
  """Prints one JSON metric line on stdout (orchestrators read the same lines).

  JSON has no NaN or infinity: such a value is printed as the string "nan", "inf" or "-inf" (so it
  is not mistaken for a missing value) and named in a warning on stderr.
  """
  clean = {}
  for key, value in values.items():
    if hasattr(value, 'item'):  # numpy scalar
      value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
      log.warning('metric %s is %s', key, value)
      value = str(value)
    clean[key] = value
  print(json.dumps(clean, sort_keys=False), flush=True)


def stderr_is_terminal() -> bool:
  """Whether progress is shown: only to a person at a terminal, never into CI or an orchestrator's logs."""
  return sys.stderr.isatty()


def progress_bar(total: Optional[int], unit: str, description: str, delay: float = 3.0):
  """A tqdm progress bar on stderr, shown only when `stderr_is_terminal()` and only once the run has
  lasted `delay` seconds (short runs print nothing). Metric lines printed while it shows go through
  `bar.external_write_mode()`, so the bar does not cut them."""
  from tqdm import tqdm
  return tqdm(total=total, unit=unit, desc=description, delay=delay, file=sys.stderr,
              disable=not stderr_is_terminal(), dynamic_ncols=True)
