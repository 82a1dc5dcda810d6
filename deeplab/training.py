"""The trainer: builds the training graph and runs it to a total step count, resumably.

A run works in a folder of its own (`work_dir`): checkpoints every `save_interval_steps`, TensorBoard
events, and `fingerprint.json` (the model, training options and data it trains). Started again with
the same fingerprint it continues from the newest checkpoint there, up to the same total; a stop
request (SIGTERM, pre-emption) saves a checkpoint before `TrainingInterrupted` is raised.

Initialisation, first match wins: the newest checkpoint in work_dir (a resumed run), `resume_from`
(a checkpoint of an earlier run, all variables including the optimizer's), `initial_checkpoint`
(weights only; a model-zoo or backbone checkpoint), else random initialisation.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import json
import logging
import os
import time
from typing import Callable, Optional

from deeplab import input as model_input
from deeplab import checkpoint as ckpt
from deeplab import losses, model, schedules
from deeplab.compat import tf
from deeplab.config import ModelConfig, TrainConfig
from deeplab.datasets.manifest import Manifest
from deeplab.errors import UserError, tf_error_summary

log = logging.getLogger(__name__)

CHECKPOINT_BASENAME = 'model.ckpt'
FINGERPRINT = 'fingerprint.json'
LOCK_FILE = 'lock'


class TrainingDiverged(UserError):
  """The loss or the gradient norm stopped being finite; nothing of this step was saved."""

  def __init__(self, step: int, what: str, value: float, learning_rate: float):
    super().__init__(f'training diverged at step {step} ({what} {value}); try a lower '
                     f'--base_learning_rate (now {learning_rate:g})')


class TrainingInterrupted(Exception):
  """A stop was requested; the checkpoint of `step` is saved in `work_dir`."""

  def __init__(self, step: int, work_dir: str):
    super().__init__(f'training stopped at step {step}; checkpoint saved in {work_dir}')
    self.step, self.work_dir = step, work_dir


def fingerprint(model_config: ModelConfig, train_config: TrainConfig, manifest: Manifest) -> dict:
  """What makes two runs the same run (logging and saving intervals do not)."""
  training = train_config.to_json()
  for key in TrainConfig.NOT_IN_FINGERPRINT:
    training.pop(key)
  split = manifest.splits.get(train_config.train_split)
  return {'model': model_config.to_json(), 'training': training, 'dataset': manifest.name,
          'shards': split.shards if split else None}


def global_step_of(prefix: str) -> int:
  """The step a checkpoint of this trainer was saved at (its prefix ends in -<step>)."""
  return int(prefix.rsplit('-', 1)[1])


def work_dir_for(base: str, run_fingerprint: dict) -> str:
  """A work folder per distinct run under `base`, so different settings never resume each other."""
  digest = hashlib.sha256(json.dumps(run_fingerprint, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(base, digest)


@contextlib.contextmanager
def work_dir_lock(work_dir: str):
  """Holds an exclusive lock on `work_dir` (creating it): one training per work folder at a time.

  Two runs with the same fingerprint would save into the same checkpoint files; the second one
  fails at once instead, naming the process that holds the folder. The lock is the kernel's
  (fcntl), so it is released whenever the holder ends, even by SIGKILL.
  """
  os.makedirs(work_dir, exist_ok=True)
  with open(os.path.join(work_dir, LOCK_FILE), 'a+') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock.seek(0)
      holder = lock.read().strip() or 'unknown'
      raise UserError(f'another training (pid {holder}) is using {work_dir}; wait for it to end, '
                      'or give this run another --train_logdir') from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    yield


def _last_layer_scopes(train_config: TrainConfig):
  return model.LOGITS_SCOPES if train_config.last_layers_contain_logits_only else model.LAST_LAYER_SCOPES


def _excluded_scopes(train_config: TrainConfig):
  return () if train_config.initialize_last_layer else _last_layer_scopes(train_config)


def gradient_multiplier(variable_name: str, train_config: TrainConfig) -> float:
  """The factor on a variable's gradient, as the original train.py sets it: biases 2, variables
  whose name contains a last-layer scope last_layer_gradient_multiplier (their biases twice
  that), others 1."""
  bias = 2.0 if 'biases' in variable_name else 1.0
  if any(scope in variable_name for scope in _last_layer_scopes(train_config)):
    return bias * train_config.last_layer_gradient_multiplier
  return bias


def build_train_graph(model_config: ModelConfig, train_config: TrainConfig, images, labels,
                      ignore_label: int, label_histogram=None):
  """The training ops over a batch.

  `label_histogram` (pixels per class of the training split) feeds the label_weight_rule.
  Returns a dict: train_op (runs one step and yields the new step count), loss, total_loss,
  learning_rate, global_step.
  """
  global_step = tf.compat.v1.train.get_or_create_global_step()
  scores = model.logits(images, model_config, training=train_config)
  loss = losses.softmax_cross_entropy(
      scores, labels, model_config.num_classes, ignore_label,
      label_weights=losses.class_weights(train_config, label_histogram, model_config.num_classes),
      upsample_logits=train_config.upsample_logits,
      top_k_percent_pixels=train_config.top_k_percent_pixels,
      hard_example_mining_step=train_config.hard_example_mining_step, global_step=global_step)
  regularization = tf.compat.v1.losses.get_regularization_losses()
  total_loss = tf.add_n([loss] + regularization, name='total_loss')
  learning_rate = schedules.learning_rate(global_step, train_config)
  optimizer = tf.compat.v1.train.MomentumOptimizer(learning_rate, train_config.momentum)
  gradients = []
  for gradient, variable in optimizer.compute_gradients(total_loss):
    factor = gradient_multiplier(variable.op.name, train_config)
    gradients.append((gradient * factor if gradient is not None and factor != 1.0 else gradient,
                      variable))
  # Watched every step: a non-finite norm means the run has diverged (see run_training).
  gradient_norm = tf.linalg.global_norm([g for g, _ in gradients if g is not None])
  # Batch norm moving averages update with every step.
  with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
    train_op = optimizer.apply_gradients(gradients, global_step=global_step)
  # The step count after this step's update (reading global_step beside train_op could race it).
  with tf.control_dependencies([train_op]):
    step_after_update = tf.identity(global_step)
  tf.compat.v1.summary.scalar('loss', loss)
  tf.compat.v1.summary.scalar('total_loss', total_loss)
  tf.compat.v1.summary.scalar('learning_rate', learning_rate)
  return {'train_op': step_after_update, 'loss': loss, 'total_loss': total_loss,
          'gradient_norm': gradient_norm, 'learning_rate': learning_rate, 'global_step': global_step}


def train(model_config: ModelConfig, train_config: TrainConfig, manifest: Manifest, work_dir: str,
          initial_checkpoint: Optional[str] = None, resume_from: Optional[str] = None,
          report: Callable[[dict], None] = lambda metrics: None,
          should_stop: Callable[[], bool] = lambda: False) -> str:
  """Trains to `training_number_of_steps`; returns the final checkpoint prefix (in work_dir).

  `report` receives a metrics dict every `log_steps` steps (and one about initialisation);
  `should_stop` is polled after every step.
  """
  shards = manifest.verified_shard_paths(train_config.train_split)
  with work_dir_lock(work_dir), tf.Graph().as_default():
    with open(os.path.join(work_dir, FINGERPRINT), 'w') as f:
      json.dump(fingerprint(model_config, train_config, manifest), f, indent=2, sort_keys=True)
    tf.compat.v1.set_random_seed(train_config.seed)
    dataset = model_input.train_dataset(shards, model_config, train_config, manifest.ignore_label)
    images, labels = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    ops = build_train_graph(model_config, train_config, images, labels, manifest.ignore_label,
                            manifest.label_histogram(train_config.train_split))
    return run_training(ops, train_config, work_dir, initial_checkpoint, resume_from, report,
                        should_stop)


def _initialize(session, saver, train_config, work_dir, initial_checkpoint, resume_from, report):
  session.run(tf.compat.v1.global_variables_initializer())
  resumed = ckpt.latest_prefix(work_dir)
  if resumed or resume_from:
    ckpt.restore(session, saver, resumed or resume_from)
    report({'resumed_from_step': int(session.run(tf.compat.v1.train.get_global_step()))})
  elif initial_checkpoint:
    result = ckpt.restore_matching(session, initial_checkpoint, tf.compat.v1.global_variables(),
                                   _excluded_scopes(train_config))
    report({'restored_variables': len(result['restored']),
            'missing_variables': len(result['missing']),
            'unexpected_variables': len(result['unexpected'])})


def _all_finite_op():
  """A bool op: every floating-point variable is finite (checked before each save)."""
  checks = [tf.reduce_all(tf.math.is_finite(v)) for v in tf.compat.v1.global_variables()
            if v.dtype.base_dtype.is_floating]
  return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def run_training(ops, train_config: TrainConfig, work_dir: str, initial_checkpoint, resume_from,
                 report, should_stop) -> str:
  """Runs the training ops in a session until the total step; see `train`.

  A non-finite loss or gradient norm stops the run with TrainingDiverged at that step, and a
  checkpoint is saved only when every variable is finite, so the work folder never holds a
  diverged checkpoint and a restart resumes from the last finite one.
  """
  saver = tf.compat.v1.train.Saver(max_to_keep=2, save_relative_paths=True)
  summaries = tf.compat.v1.summary.merge_all()
  all_finite = _all_finite_op()
  total = train_config.training_number_of_steps
  prefix = os.path.join(work_dir, CHECKPOINT_BASENAME)
  with tf.compat.v1.Session() as session:
    _initialize(session, saver, train_config, work_dir, initial_checkpoint, resume_from, report)
    writer = tf.compat.v1.summary.FileWriter(work_dir)

    def save(step):
      if not session.run(all_finite):
        raise TrainingDiverged(step, 'weights', 'not finite', train_config.base_learning_rate)
      saver.save(session, prefix, global_step=step, write_meta_graph=False)
      return step

    step = int(session.run(ops['global_step']))
    last_saved = step if ckpt.latest_prefix(work_dir) else None
    window_start, window_steps = time.perf_counter(), 0
    learning_rate = train_config.base_learning_rate
    while step < total:
      fetches = {name: ops[name] for name in ('train_op', 'loss', 'total_loss', 'gradient_norm',
                                              'learning_rate')}
      log_now = (step + 1) % train_config.log_steps == 0 or step + 1 == total
      if log_now:
        fetches['summaries'] = summaries
      try:
        results = session.run(fetches)
      except tf.errors.InvalidArgumentError as e:
        raise UserError(_input_error(e, train_config.train_split)) from None
      step, learning_rate = int(results['train_op']), float(results['learning_rate'])
      for what in ('loss', 'total_loss', 'gradient_norm'):
        if not math.isfinite(results[what]):
          raise TrainingDiverged(step, what.replace('_', ' '), float(results[what]),
                                 train_config.base_learning_rate)
      window_steps += 1
      if log_now:
        writer.add_summary(results['summaries'], step)
        elapsed = time.perf_counter() - window_start
        report({'step': step, 'loss': float(results['loss']),
                'total_loss': float(results['total_loss']),
                'gradient_norm': float(results['gradient_norm']), 'learning_rate': learning_rate,
                'images_per_sec': window_steps * train_config.train_batch_size / max(elapsed, 1e-9)})
        window_start, window_steps = time.perf_counter(), 0
      if step % train_config.save_interval_steps == 0:
        last_saved = save(step)
      if should_stop() and step < total:
        if last_saved != step:
          save(step)
        writer.close()
        raise TrainingInterrupted(step, work_dir)
    if last_saved != step:
      save(step)
    writer.close()
  return ckpt.latest_prefix(work_dir)


def _input_error(error, split: str) -> str:
  """One line for a bad training example (the input pipeline's assertions name the example)."""
  if model_input.LABEL_SIZE_MISMATCH in error.message:
    return f'split {split!r}: {model_input.describe_assertion(error.message)}'
  return f'split {split!r}: an example cannot be decoded ({tf_error_summary(error)})'
