"""Shared test helpers: running steps as users do, the shared fixtures folder, a tiny dataset."""
import contextlib
import fcntl
import importlib
import io
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import tarfile
import sys
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / 'shared' / 'fixtures'


def require_fixtures(*relative):
  """The path of a file in ../shared/fixtures; skips the test when it is absent."""
  path = FIXTURES.joinpath(*relative)
  if not path.exists():
    pytest.skip(f'shared fixture {path} is absent (a clone without ../shared/fixtures)')
  return path


class StepResult:
  def __init__(self, completed):
    self.returncode = completed.returncode
    self.stdout = completed.stdout
    self.stderr = completed.stderr
    self.metrics = [json.loads(line) for line in completed.stdout.splitlines()
                    if line.startswith('{')]

  def last(self, key):
    """The value of `key` in the last metric line that has it."""
    return next(m[key] for m in reversed(self.metrics) if key in m)

  def error_line(self):
    lines = [l for l in self.stderr.splitlines() if l.startswith('error:')]
    return lines[-1] if lines else ''


def run_module(module, *args, cwd=None, check=True, timeout=600, env=None):
  """Runs `python -m <module> args...` like a user; check=True asserts a zero exit."""
  environment = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
  completed = subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=cwd,
                             capture_output=True, text=True, timeout=timeout, env=environment)
  result = StepResult(completed)
  if check and result.returncode != 0:
    raise AssertionError(f'{module} exited {result.returncode}:\n{result.stderr[-3000:]}')
  return result


def assert_one_error_line(result, *fragments, status=1):
  """`result` failed as bad input must: exit `status`, no traceback, exactly one `error:` line,
  holding every fragment and never naming a temp folder that is gone by then. Returns the line."""
  assert result.returncode == status, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]
  assert '/deeplab-input-' not in errors[0]
  return errors[0]


def run_step(name, *args, isolated=False, cwd=None, check=True, timeout=600, env=None):
  """Runs step `name` with `args` and returns its exit status, stdout and stderr.

  In this process by default: the step's `main(argv)` under the same `run_step` wrapper its
  `__main__` uses, so the contract (error line, exit status, metric lines, no partial output) is the
  same and ~4 s of TensorFlow import is not paid again. `isolated=True` starts a real
  `python -m steps.<name>` process instead: for signals, native crashes, memory peaks and the one
  real subprocess run each step keeps (`timeout` applies only there).
  """
  if isolated:
    return run_module(f'steps.{name}', *args, cwd=cwd, check=check, timeout=timeout, env=env)
  result = StepResult(_call_in_process(name, [str(a) for a in args], cwd, env))
  if check and result.returncode != 0:
    raise AssertionError(f'steps.{name} exited {result.returncode}:\n{result.stderr[-3000:]}')
  return result


def _call_in_process(name, argv, cwd, env):
  from steps import runtime
  module = importlib.import_module(f'steps.{name}')
  stdout, stderr = io.StringIO(), io.StringIO()
  root = logging.getLogger()
  saved = dict(cwd=os.getcwd(), environ=dict(os.environ), handlers=list(root.handlers),
               level=root.level, signals={s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)},
               tempdir=tempfile.tempdir)
  handler = logging.StreamHandler(stderr)
  handler.setFormatter(logging.Formatter('%(asctime)s %(name)s %(levelname)s %(message)s'))
  returncode = 0
  try:
    os.environ.update(TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
    if cwd:
      os.chdir(cwd)
    if 'TMPDIR' in (env or {}):
      tempfile.tempdir = None  # looked up again from TMPDIR, as a new process would
    root.addHandler(handler)  # what the step logs reaches its stderr, as in a process of its own
    root.setLevel(logging.INFO)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      try:
        runtime.run_step(lambda: module.main(argv))
      except SystemExit as e:
        returncode = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    os.chdir(saved['cwd'])
    tempfile.tempdir = saved['tempdir']
    os.environ.clear()
    os.environ.update(saved['environ'])
    root.handlers, root.level = saved['handlers'], saved['level']
    for signum, previous in saved['signals'].items():
      signal.signal(signum, previous)
  return subprocess.CompletedProcess(['steps.' + name, *argv], returncode, stdout.getvalue(),
                                     stderr.getvalue())


# Small enough for seconds per step on 2 cores; the demo (params.yaml) trains the real thing.
TINY_TRAIN_FLAGS = ('--depth_multiplier=0.25', '--train_crop_size=65,65', '--train_batch_size=2',
                    '--base_learning_rate=0.01', '--log_steps=1', '--batch_norm_decay=0.9',
                    '--min_scale_factor=1', '--max_scale_factor=1')


# Fixtures that start a real process (a server, a mount): their tests are marked `process` too.
PROCESS_FIXTURES = {'server', 'limited_server', 'small_disk', 'raw_data'}


# What a test costs, roughly, by its marks: seconds, from the CPU each test took on a 2-core machine.
_COST = {'slow': 300, 'process': 15, 'heavy': 6}


def pytest_collection_modifyitems(items):
  for item in items:
    if PROCESS_FIXTURES & set(getattr(item, 'fixturenames', ())):
      item.add_marker(pytest.mark.process)
  # The costliest modules first: `make test` hands whole modules to its workers in this order
  # (--dist loadscope), and a long module handed out last keeps one worker busy after the others
  # are done (a run once ended 3 minutes after its first worker so). Within a module, the order
  # is the file's.
  def module_cost(item):
    return sum(next((cost for mark, cost in _COST.items() if test.get_closest_marker(mark)), 0.2)
               for test in modules[item.module.__name__])
  modules = {}
  for item in items:
    modules.setdefault(item.module.__name__, []).append(item)
  costs = {name: module_cost(tests[0]) for name, tests in modules.items()}
  items.sort(key=lambda item: -costs[item.module.__name__])  # stable: each module stays whole


def built_once(tmp_path_factory, name, build):
  """What `build(folder)` returns (a path inside `folder`), built once per test run: pytest-xdist's
  workers (make test runs one per core) share the run's base temp folder, so the first worker to
  ask builds under a lock and the others wait for it and reuse the result."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent  # the run's folder, above each worker's own
  folder, done = base / name, base / f'{name}.done'
  with open(base / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not done.exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      done.write_text(str(pathlib.Path(build(folder)).relative_to(folder)))
  return folder / done.read_text()


@pytest.fixture(scope='session')
def tiny_tfrecords(tmp_path_factory):
  """tfrecords.tar.gz of a small synthetic folder dataset (4 classes, ignore 255)."""
  return built_once(tmp_path_factory, 'tiny_tfrecords',
                    lambda folder: synthetic_tfrecords(folder, 8, 3, (72, 88)))


@pytest.fixture
def step_tmpdir(tmp_path, monkeypatch):
  """The steps' temp folder (scratch and extraction), the test's own, to see what a step leaves
  there: for steps run in this process and as processes alike."""
  folder = tmp_path / 'tmpdir'
  folder.mkdir()
  monkeypatch.setenv('TMPDIR', str(folder))
  monkeypatch.setattr(tempfile, 'tempdir', str(folder))
  return folder


def synthetic_tfrecords(folder, num_train, num_val, image_size, extract=False):
  """tfrecords.tar.gz (or, with `extract`, its extracted folder) of a synthetic folder dataset
  written under `folder`."""
  from deeplab.datasets import synthetic
  raw = synthetic.write_dataset('folder', str(folder / 'raw'), seed=1, num_train=num_train,
                                num_val=num_val, image_size=image_size)
  archive = folder / 'tfrecords.tar.gz'
  run_step('build_data', '--dataset=folder', f'--raw_data={raw}', f'--output={archive}',
           '--num_shards=1', '--num_workers=1')
  if not extract:
    return archive
  with tarfile.open(archive) as tar:
    tar.extractall(folder / 'extracted', filter='data')
  return folder / 'extracted'


@pytest.fixture(scope='session')
def tiny_checkpoint(tiny_tfrecords, tmp_path_factory):
  """checkpoint.tar.gz of a few training steps on `tiny_tfrecords`."""
  def build(folder):
    run_step('train', f'--tfrecords={tiny_tfrecords}', f'--output={folder / "checkpoint.tar.gz"}',
             '--training_number_of_steps=3', *TINY_TRAIN_FLAGS, cwd=folder)
    return folder / 'checkpoint.tar.gz'
  return built_once(tmp_path_factory, 'tiny_checkpoint', build)


@pytest.fixture(scope='session')
def tiny_model(tiny_checkpoint, tmp_path_factory):
  """model.tar.gz of `tiny_checkpoint` in every format."""
  def build(folder):
    run_step('export', f'--checkpoint={tiny_checkpoint}', f'--output={folder / "model.tar.gz"}')
    return folder / 'model.tar.gz'
  return built_once(tmp_path_factory, 'tiny_model', build)
