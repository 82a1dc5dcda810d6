"""Running a step inside the test process, as `python -m steps.<name> ...` runs it (through
`artifacts.run_step`), for tests that patch what the step calls (a write that fails for lack of
space) or that would pay a process start for nothing; and checking how a step failed."""
import contextlib
import importlib
import io
import signal
import subprocess
import sys

from steps import artifacts
from tests.conftest import StepResult


def run_step_in_process(name, *args) -> StepResult:
  """The exit status, stdout and stderr of step `name` run with flags `args`, in this process.

  sys.argv and the SIGTERM/SIGINT handlers the step installs are restored afterwards.
  """
  module = importlib.import_module(f'steps.{name}')
  argv = [f'steps/{name}.py', *map(str, args)]
  stdout, stderr = io.StringIO(), io.StringIO()
  handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
  saved_argv, status = sys.argv, 0
  try:
    sys.argv = argv
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      try:
        artifacts.run_step(module.main)
      except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
  finally:
    sys.argv = saved_argv
    for signum, handler in handlers.items():
      signal.signal(signum, handler)
  return StepResult(subprocess.CompletedProcess(argv, status, stdout.getvalue(), stderr.getvalue()))


def assert_one_error_line(result: StepResult, *fragments: str) -> str:
  """`result` failed as bad input must: exit 1, no traceback, exactly one `error:` line, which
  holds every fragment. Returns that line."""
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]
  return errors[0]
