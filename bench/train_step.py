"""Benchmark: what the trainer's step costs beyond its train op, and against the trainer of commit
28bc9e4 (before the divergence guard, the finite-checkpoint rule, replicas and the label count).

    python -m bench.train_step [--rounds=7] [--steps=10] [--crop=257] [--batch=4]

Model: DeepLabv3 MobileNetV2 (depth multiplier 1, output stride 16), a fixed in-memory batch
(random images and labels), the session's default thread pools. Contenders, interleaved round by
round (bench/harness.py), each `--steps` steps a round (the default, the trainer's default
--log_steps, puts one log step in every round):

- bare_train_op: `session.run(ops['step'])` of today's training graph, nothing else fetched.
- todays_step: `deeplab.training.run_training` on the same graph, with everything it does per
  step (fetches, the divergence checks, reports and summaries on log steps) into a scratch folder.
- step_at_28bc9e4: `run_training` of commit 28bc9e4 on its own graph of the same model and batch,
  imported from `git archive 28bc9e4` of this repository in a scratch folder (skipped where git
  or the commit is missing).

Both trainers run in a thread of their own and are paused between steps by their own
`should_stop` callback, which every run_training calls once a step: a step is exactly one
iteration of their real loop, without a session restart or copied code. Within a round the
contenders take their steps in turn (A, B, C, A, B, C, ...), so that each contender's round is
paired closely in time with the others' (bench/harness.py's rounds, at the grain of a step).
Targets: the guards cost at most 3% (todays_step >= 0.97 x bare_train_op), and today's step is
no slower than 28bc9e4's (>= 1.0). A traced run of each fetch set also counts the kernels a step
runs beyond the bare train op, on log steps and on the others (the noise-free side of the cost).
"""
import contextlib
import importlib
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from bench import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_COMMIT = '28bc9e4'
NUM_CLASSES = 21
IGNORE_LABEL = 255


def _import_trainer_at(commit: str, folder: str):
  """(training, config) modules of `commit`'s deeplab package, or None (the reason printed).

  The old package is imported under its own name `deeplab` with this tree's modules set aside,
  then this tree's are put back: the old functions keep their own module globals.
  """
  try:
    archive = subprocess.run(['git', '-C', REPO, 'archive', commit, 'deeplab'], check=True,
                             capture_output=True).stdout
    subprocess.run(['tar', 'x', '-C', folder], input=archive, check=True, capture_output=True)
  except (OSError, subprocess.CalledProcessError) as error:
    print(f'skipping the {commit} contender: no git archive of it here ({error})', flush=True)
    return None
  ours = {name: module for name, module in sys.modules.items()
          if name == 'deeplab' or name.startswith('deeplab.')}
  for name in ours:
    del sys.modules[name]
  sys.path.insert(0, folder)
  try:
    return importlib.import_module('deeplab.training'), importlib.import_module('deeplab.config')
  finally:
    sys.path.remove(folder)
    for name in [n for n in sys.modules if n == 'deeplab' or n.startswith('deeplab.')]:
      del sys.modules[name]
    sys.modules.update(ours)


class SteppedTrainer:
  """A trainer's own run_training in a thread, advanced a given number of steps at a time.

  run_training calls `should_stop` after every step: here it waits until the next step is asked
  for, so a round times the trainer's whole loop and nothing else (the thread waits idle).
  """

  def __init__(self, training_module, graph, ops, train_config, **run_options):
    self._resume, self._paused = threading.Semaphore(0), threading.Semaphore(0)
    self._stop = False
    self._error = None
    self._folder = tempfile.TemporaryDirectory()

    def should_stop():
      self._paused.release()
      self._resume.acquire()
      return self._stop

    def run():
      try:
        with graph.as_default():
          training_module.run_training(ops, train_config, self._folder.name, None, None,
                                       lambda metrics: None, should_stop, **run_options)
      except training_module.TrainingInterrupted:
        pass
      except BaseException as error:  # reported by the thread that waits
        self._error = error
      self._paused.release()

    self._thread = threading.Thread(target=run, daemon=True)
    self._thread.start()
    self._wait()  # initialisation and the first step: kernel set-up, Grappler's rewrite

  def _wait(self):
    self._paused.acquire()
    if self._error:
      raise self._error

  def step(self):
    self._resume.release()
    self._wait()

  def close(self):
    self._stop = True
    self._resume.release()
    self._thread.join()
    self._folder.cleanup()


def _interleaved_steps(contenders, rounds, steps, batch):
  """Images/s of each contender per round of `steps` steps, its steps taken in turn with the
  others' (A, B, C, A, B, C, ...; the order rotated each round): a step of one lies a few hundred
  milliseconds from a step of each other, so load that comes and goes hits all of them alike."""
  names = list(contenders)
  values = {name: [] for name in names}
  for round_index in range(rounds):
    shift = round_index % len(names)
    order = names[shift:] + names[:shift]
    seconds = dict.fromkeys(names, 0.0)
    for _ in range(steps):
      for name in order:
        started = time.perf_counter()
        contenders[name]()
        seconds[name] += time.perf_counter() - started
    for name in names:
      values[name].append(steps * batch / seconds[name])
  return values


def _kernels(session, fetches):
  """The names of the kernels one traced run of `fetches` executes."""
  from deeplab.compat import tf
  metadata = tf.compat.v1.RunMetadata()
  session.run(fetches, options=tf.compat.v1.RunOptions(
      trace_level=tf.compat.v1.RunOptions.FULL_TRACE), run_metadata=metadata)
  return {node.node_name for device in metadata.step_stats.dev_stats for node in device.node_stats}


def _extra_kernels(session, ops):
  """Kernels today's step runs beyond the bare train op: (on a step that does not log, on a log
  step), as run_training fetches them."""
  from deeplab import training
  from deeplab.compat import tf
  bare = _kernels(session, ops['step'])
  every_step = {name: ops[name] for name in training.STEP_FETCHES}
  log_step = dict(every_step, **{name: ops[name] for name in training.LOG_FETCHES},
                  summaries=tf.compat.v1.summary.merge_all())
  return len(_kernels(session, every_step) - bare), len(_kernels(session, log_step) - bare)


def measure(args):
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from deeplab import distribute, training
  from deeplab.compat import tf
  from deeplab.config import ModelConfig, TrainConfig
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (args.batch, args.crop, args.crop, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, (args.batch, args.crop, args.crop)).astype(np.int32)
  # Never reached: the bench stops the trainers itself.
  settings = dict(train_batch_size=args.batch, train_crop_size=(args.crop, args.crop),
                  training_number_of_steps=10 ** 9)
  contenders = {}
  with contextlib.ExitStack() as cleanup:
    graph = tf.Graph()
    with graph.as_default():
      train_config = TrainConfig(**settings)
      ops = training.build_train_graph(ModelConfig(num_classes=NUM_CLASSES), train_config,
                                       tf.constant(images), tf.constant(labels), IGNORE_LABEL)
      bare = tf.compat.v1.Session(config=distribute.session_config(['/cpu:0']))
      cleanup.callback(bare.close)
      bare.run(tf.compat.v1.global_variables_initializer())
      bare.run(ops['step'])
      extra_every_step, extra_log_step = _extra_kernels(bare, ops)
      todays = tf.compat.v1.Session(config=distribute.session_config(['/cpu:0']))

    contenders['bare_train_op'] = lambda: bare.run(ops['step'])
    todays_trainer = SteppedTrainer(training, graph, ops, train_config, session=todays)
    cleanup.callback(todays_trainer.close)
    contenders['todays_step'] = todays_trainer.step
    old_folder = cleanup.enter_context(tempfile.TemporaryDirectory())
    old = _import_trainer_at(OLD_COMMIT, old_folder)
    if old:
      old_training, old_config = old
      old_graph = tf.Graph()
      with old_graph.as_default():
        old_train_config = old_training.TrainConfig(**settings)
        old_ops = old_training.build_train_graph(
            old_config.ModelConfig(num_classes=NUM_CLASSES), old_train_config,
            tf.constant(images), tf.constant(labels), IGNORE_LABEL)
      old_trainer = SteppedTrainer(old_training, old_graph, old_ops, old_train_config)
      cleanup.callback(old_trainer.close)
      contenders[f'step_at_{OLD_COMMIT}'] = old_trainer.step
    values = _interleaved_steps(contenders, args.rounds, args.steps, args.batch)

  model = f'MobileNetV2 DeepLabv3 {args.crop}x{args.crop} batch {args.batch}'
  guards = harness.Measurement(
      'train_step_guards', 'images/s', 'bare_train_op',
      {name: values[name] for name in ('bare_train_op', 'todays_step')},
      target=f'{model}: todays_step >= 0.97 x bare_train_op',
      notes={'kernels_beyond_train_op_per_step': extra_every_step,
             'kernels_beyond_train_op_per_log_step': extra_log_step})
  measurements = [harness.judged(guards, 'todays_step', 0.97)]
  if f'step_at_{OLD_COMMIT}' in values:
    against_old = harness.Measurement(
        'train_step_vs_old', 'images/s', f'step_at_{OLD_COMMIT}',
        {name: values[name] for name in (f'step_at_{OLD_COMMIT}', 'todays_step')},
        target=f'{model}: todays_step >= 1.0 x the trainer at {OLD_COMMIT}')
    measurements.append(harness.judged(against_old, 'todays_step', 1.0))
  return measurements


def add_arguments(parser):
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--crop', type=int, default=257)
  parser.add_argument('--batch', type=int, default=4)


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
