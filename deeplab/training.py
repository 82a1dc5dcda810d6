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
import dataclasses
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
from deeplab import distribute, losses, model, schedules
from deeplab.compat import tf
from deeplab.config import ModelConfig, TrainConfig
from deeplab.datasets.manifest import Manifest
from deeplab.errors import UserError, tf_error_summary
from deeplab.nets import batch_norm, layers

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


def _float32_variables(getter, *args, dtype=tf.float32, **kwargs):
  """A variable getter: float16/bfloat16 variables are float32 ones read as float16/bfloat16."""
  if dtype in (tf.float16, tf.bfloat16):
    return tf.cast(getter(*args, dtype=tf.float32, **kwargs), dtype)
  return getter(*args, dtype=dtype, **kwargs)


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


# What run_training fetches with every step: `step` (fetching it runs one training step and gives
# the step count after it), the loss (the divergence guard),
# the stop requests of the workers and the count of label pixels outside the classes. Cheap: the
# step computes the loss anyway.
STEP_FETCHES = ('step', 'loss', 'stop_requested', 'out_of_range_label_pixels')
# Fetched on log steps only: the regularization term of total_loss and the gradient norm each
# cost a pass over every weight or gradient, which the step itself does not need.
LOG_FETCHES = ('total_loss', 'gradient_norm', 'learning_rate')


def build_train_graph(model_config: ModelConfig, train_config: TrainConfig, images, labels,
                      ignore_label: int, label_histogram=None, *, strategy=None,
                      out_of_range=None):
  """The training ops over a batch, replicated by `strategy` (default: this one device).

  `images` float32 [B, H, W, 3] and `labels` int32 [B, H, W] are this process's share of the
  global batch; each of its replicas trains on B / (its replica count) of them, and the update is
  the one a single device would make from the whole global batch: the mean of the replicas' loss
  gradients plus the regularization gradient. `label_histogram` (pixels per class of the
  training split) feeds the label_weight_rule. `out_of_range`: the input pipeline's counts of
  label pixels outside the classes, per example (default: counted here from `labels`).
  Returns a dict: step (runs one training step and yields the step count after it), loss, total_loss,
  gradient_norm, learning_rate, global_step, out_of_range_label_pixels (of this batch), and
  stop_request: a float placeholder (default 0) that a worker feeds 1 to ask for a stop;
  `stop_requested` (fetched with step) is then positive on every worker.
  Fetching step alone runs the step and nothing else; every other value costs only what it
  adds (STEP_FETCHES, LOG_FETCHES).
  """
  default = tf.distribute.get_strategy()
  strategy = strategy or default
  local_replicas = 1 if strategy is default else len(strategy.extended.worker_devices)
  label_weights = losses.class_weights(train_config, label_histogram, model_config.num_classes)
  # The precision choices are TensorFlow's dtype names (TrainConfig.precision).
  compute_dtype = tf.as_dtype(train_config.precision)
  with strategy.scope():
    global_step = tf.compat.v1.train.get_or_create_global_step()
    learning_rate = schedules.learning_rate(global_step, train_config)
    optimizer = tf.compat.v1.train.MomentumOptimizer(learning_rate, train_config.momentum)
    if train_config.precision == 'float16':
      optimizer = tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer(optimizer, 'dynamic')
    stop_request = tf.compat.v1.placeholder_with_default(0.0, [], name='stop_request')

    def replica_step():
      """One replica's forward and backward pass; the optimizer sums the gradients of all."""
      context = tf.distribute.get_replica_context()
      replicas = context.num_replicas_in_sync
      replica = distribute.replica_id(context)
      share = tf.shape(images)[0] // local_replicas
      first = (replica % local_replicas) * share
      with tf.compat.v1.variable_scope(tf.compat.v1.get_variable_scope(),
                                       custom_getter=_float32_variables):
        scores = model.logits(tf.cast(images[first:first + share], compute_dtype), model_config,
                              training=train_config)
      loss = losses.softmax_cross_entropy(
          tf.cast(scores, tf.float32), labels[first:first + share], model_config.num_classes,
          ignore_label, label_weights=label_weights, upsample_logits=train_config.upsample_logits,
          top_k_percent_pixels=train_config.top_k_percent_pixels,
          hard_example_mining_step=train_config.hard_example_mining_step, global_step=global_step)
      # The optimizer SUMs the replicas' gradients (tf.compat.v1 optimizers scale no loss): each
      # replica's data loss counts 1/replicas, the weights' regularization (the same on every
      # replica) is counted once, on the first.
      # (In bfloat16/float16 graphs the regularizers see the variables as read, in that dtype.)
      regularization = ([tf.cast(r, tf.float32)
                         for r in tf.compat.v1.losses.get_regularization_losses()]
                        if replica == 0 else [])
      # Not named 'total_loss': the summary of that name below would then be tagged 'total_loss_1'.
      total_loss = tf.add_n([loss / replicas] + regularization, name='loss_and_regularization')
      gradients = []
      for gradient, variable in optimizer.compute_gradients(total_loss):
        factor = gradient_multiplier(variable.op.name, train_config)
        gradients.append((gradient * factor if gradient is not None and factor != 1.0
                          else gradient, variable))
      squared_norm = tf.square(tf.linalg.global_norm([g for g, _ in gradients if g is not None]))
      apply = optimizer.apply_gradients(gradients, global_step=global_step)
      # Two all-reduces: what every step fetches (the loss and the stop requests), and what log
      # steps add; fetching the first does not compute the second.
      every_step = distribute.all_reduce(tf.distribute.ReduceOp.SUM,
                                         tf.stack([loss / replicas, stop_request]))
      logged = distribute.all_reduce(tf.distribute.ReduceOp.SUM,
                                     tf.stack([total_loss, squared_norm]))
      return apply, every_step, logged

    with batch_norm.synchronized_across_replicas(train_config.sync_batch_norm), \
         layers.native_dilations(compute_dtype):
      applies, every_step, logged = strategy.extended.call_for_each_replica(replica_step)
  loss, stop_requested = tf.unstack(strategy.experimental_local_results(every_step)[0])
  total_loss, squared_norm = tf.unstack(strategy.experimental_local_results(logged)[0])
  # The norm of the replicas' gradients taken together (the sum of their squared norms, one
  # number all-reduced, not every gradient): for one replica the gradient's norm, finite exactly
  # when the summed gradient is. With float16 loss scaling an overflowing step is skipped, not a
  # divergence: its norm is logged as 0.
  gradient_norm = tf.sqrt(squared_norm)
  if train_config.precision == 'float16':
    gradient_norm = tf.where(tf.math.is_finite(gradient_norm), gradient_norm, 0.0)
  # Batch norm moving averages update with every step.
  train_op = tf.group(list(strategy.experimental_local_results(applies)) +
                      tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS))
  # The step count after this step's update (reading global_step beside train_op could race it).
  with tf.control_dependencies([train_op]):
    step_after_update = tf.identity(global_step)
  tf.compat.v1.summary.scalar('loss', loss)
  tf.compat.v1.summary.scalar('total_loss', total_loss)
  tf.compat.v1.summary.scalar('learning_rate', learning_rate)
  if out_of_range is None:
    out_of_range = model_input.out_of_range_pixels(labels, model_config.num_classes, ignore_label)
  return {'step': step_after_update, 'loss': loss, 'total_loss': total_loss,
          'gradient_norm': gradient_norm, 'learning_rate': learning_rate, 'global_step': global_step,
          'stop_request': stop_request, 'stop_requested': stop_requested,
          'out_of_range_label_pixels': tf.reduce_sum(out_of_range)}


def train(model_config: ModelConfig, train_config: TrainConfig, manifest: Manifest, work_dir: str,
          initial_checkpoint: Optional[str] = None, resume_from: Optional[str] = None,
          report: Callable[[dict], None] = lambda metrics: None,
          should_stop: Callable[[], bool] = lambda: False,
          cluster: Optional[distribute.Cluster] = None) -> Optional[str]:
  """Trains to `training_number_of_steps`; returns the final checkpoint prefix (in work_dir).

  Replicated over `train_config.num_replicas` local devices, and over the workers of `cluster`
  when given. Then only the chief (rank 0) uses work_dir: it restores, saves and reports, and
  every other worker trains along from the chief's weights and returns None.
  `report` receives a metrics dict every `log_steps` steps (and one about initialisation);
  `should_stop` is polled after every step (any worker's request stops all).

  Label pixels that are neither a class nor the ignore label (a dataset.json whose class count
  does not fit its labels) are counted as they are read: `out_of_range_label_pixels` in the
  metrics (this process's batches so far), and a warning the first time it is not 0. They are not
  an error: the loss gives them weight 0 (as the original DeepLab's did), so the model learns
  nothing false from them, and train cannot know they exist before it reads them; evaluate, whose
  scores they would falsify, refuses them.
  """
  shards = manifest.verified_shard_paths(train_config.train_split)
  devices = distribute.local_devices(train_config.num_replicas)
  workers = len(cluster.workers) if cluster else 1
  if train_config.train_batch_size % (len(devices) * workers):
    raise UserError(f'--train_batch_size={train_config.train_batch_size} does not split evenly '
                    f'into {workers} worker(s) x {len(devices)} replica(s); pass a multiple of '
                    f'{len(devices) * workers}')
  is_chief = not cluster or cluster.is_chief
  with (work_dir_lock(work_dir) if is_chief else contextlib.nullcontext()), \
       tf.Graph().as_default():
    if is_chief:
      with open(os.path.join(work_dir, FINGERPRINT), 'w') as f:
        json.dump(fingerprint(model_config, train_config, manifest), f, indent=2, sort_keys=True)
    tf.compat.v1.set_random_seed(train_config.seed)
    # Each worker reads its share of the global batch, shuffled and augmented with a seed of its own.
    rank = cluster.rank if cluster else 0
    dataset = model_input.train_dataset(
        shards, model_config, dataclasses.replace(
            train_config, train_batch_size=train_config.train_batch_size // workers,
            seed=train_config.seed + rank), manifest.ignore_label)
    images, labels, out_of_range = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    strategy = distribute.strategy_for(devices, cluster)
    ops = build_train_graph(model_config, train_config, images, labels, manifest.ignore_label,
                            manifest.label_histogram(train_config.train_split), strategy=strategy,
                            out_of_range=out_of_range)
    config = distribute.session_config(devices)
    if cluster:
      ops['copy_from_chief'] = distribute.copy_from_chief(strategy, tf.compat.v1.global_variables())
      server = distribute.start_server(strategy, cluster, config, train_config.worker_timeout)
      config = strategy.update_config_proto(config)
      log.info('worker %d of %d%s', rank, workers,
               ' (the chief: it saves the checkpoints)' if is_chief else
               ': the chief saves the checkpoints and writes the artifact')
    warned = []

    def report_label_range(metrics):
      if metrics.get('out_of_range_label_pixels') and not warned:
        warned.append(True)
        log.warning('split %r: %d label pixels so far are neither a class (0..%d, dataset.json has '
                    'num_classes=%d) nor the ignore label %d; the loss ignores them (does the '
                    'class count fit the labels?)', train_config.train_split,
                    metrics['out_of_range_label_pixels'], manifest.num_classes - 1,
                    manifest.num_classes, manifest.ignore_label)
      report(metrics)

    return run_training(ops, train_config, work_dir if is_chief else None, initial_checkpoint,
                        resume_from, report_label_range if is_chief else lambda metrics: None,
                        should_stop,
                        session=tf.compat.v1.Session(server.target if cluster else '', config=config),
                        cluster=cluster)


def _initialize(session, saver, train_config, work_dir, initial_checkpoint, resume_from, report):
  session.run(tf.compat.v1.global_variables_initializer())
  resumed = work_dir and ckpt.latest_prefix(work_dir)
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


# What a step fails with when another worker of the job is gone or no longer answering.
_WORKER_LOST = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.InternalError)


def run_training(ops, train_config: TrainConfig, work_dir: Optional[str], initial_checkpoint,
                 resume_from, report, should_stop, session=None,
                 cluster: Optional[distribute.Cluster] = None) -> Optional[str]:
  """Runs the training ops in `session` (default: a local one) until the total step; see `train`.

  A non-finite loss stops the run with TrainingDiverged at that step, as does a non-finite total
  loss or gradient norm on a log step (they are computed on log steps only; a step whose gradient
  is not finite makes the weights so, and the next step's loss with them), and a checkpoint is
  saved only when every variable is finite, so the work folder never holds a diverged checkpoint
  and a restart resumes from the last finite one. work_dir None (a worker
  that is not the chief) restores and saves nothing: ops['copy_from_chief'] gives it the chief's
  weights after initialisation, and it returns None. Each step's ops['out_of_range_label_pixels']
  (fetched with the step, from the input pipeline) is summed into that metric of the reports.
  """
  saver = tf.compat.v1.train.Saver(max_to_keep=2, save_relative_paths=True)
  summaries = tf.compat.v1.summary.merge_all()
  all_finite = _all_finite_op()
  total = train_config.training_number_of_steps
  # On a cluster a step waits for every worker: bounded, so a lost worker ends the job.
  run_options = tf.compat.v1.RunOptions(
      timeout_in_ms=train_config.worker_timeout * 1000 if cluster else 0)
  with session or tf.compat.v1.Session() as session:
    _initialize(session, saver, train_config, work_dir, initial_checkpoint, resume_from, report)
    if 'copy_from_chief' in ops:
      session.run(ops['copy_from_chief'], options=run_options)
    writer = work_dir and tf.compat.v1.summary.FileWriter(work_dir)

    def save(step):
      if not session.run(all_finite):
        raise TrainingDiverged(step, 'weights', 'not finite', train_config.base_learning_rate)
      if work_dir:
        saver.save(session, os.path.join(work_dir, CHECKPOINT_BASENAME), global_step=step,
                   write_meta_graph=False)
      return step

    step = int(session.run(ops['global_step']))
    last_saved = step if work_dir and ckpt.latest_prefix(work_dir) else None
    window_start, window_steps = time.perf_counter(), 0
    stop_requested = False
    out_of_range_pixels = 0
    while step < total:
      # Every worker's steps are the same (log steps follow the step count), so all of them fetch
      # the log steps' values, and run their all-reduce, together.
      log_now = (step + 1) % train_config.log_steps == 0 or step + 1 == total
      fetches = {name: ops[name] for name in STEP_FETCHES + (LOG_FETCHES if log_now else ())}
      if log_now and work_dir:
        fetches['summaries'] = summaries
      try:
        # Every worker learns of a stop request of any of them in the same step.
        results = session.run(fetches, {ops['stop_request']: float(stop_requested)},
                              options=run_options)
      except tf.errors.InvalidArgumentError as e:
        raise UserError(_input_error(e, train_config.train_split)) from None
      except _WORKER_LOST as e:
        if not cluster:
          raise
        raise UserError(f'step {step + 1} did not finish on all {len(cluster.workers)} workers '
                        f'({tf_error_summary(e)}): a worker stopped or is unreachable; start the '
                        'job again to resume from the last checkpoint') from None
      step = int(results['step'])
      out_of_range_pixels += int(results['out_of_range_label_pixels'])
      for what in ('loss', 'total_loss', 'gradient_norm'):
        if what in results and not math.isfinite(results[what]):
          raise TrainingDiverged(step, what.replace('_', ' '), float(results[what]),
                                 train_config.base_learning_rate)
      window_steps += 1
      if log_now:
        if writer:
          writer.add_summary(results['summaries'], step)
        elapsed = time.perf_counter() - window_start
        report({'step': step, 'loss': float(results['loss']),
                'total_loss': float(results['total_loss']),
                'gradient_norm': float(results['gradient_norm']),
                'learning_rate': float(results['learning_rate']),
                'images_per_sec': window_steps * train_config.train_batch_size / max(elapsed, 1e-9),
                'out_of_range_label_pixels': out_of_range_pixels})
        window_start, window_steps = time.perf_counter(), 0
      if step % train_config.save_interval_steps == 0:
        last_saved = save(step)
      stop_requested = should_stop()
      if (results['stop_requested'] > 0 or (stop_requested and not cluster)) and step < total:
        if last_saved != step:
          save(step)
        if writer:
          writer.close()
        raise TrainingInterrupted(step, work_dir or 'the chief\'s work folder')
    if last_saved != step:
      save(step)
    if writer:
      writer.close()
  return work_dir and ckpt.latest_prefix(work_dir)


def _input_error(error, split: str) -> str:
  """One line for a bad training example (the input pipeline's assertions name the example)."""
  if model_input.LABEL_SIZE_MISMATCH in error.message:
    return f'split {split!r}: {model_input.describe_assertion(error.message)}'
  return f'split {split!r}: an example cannot be decoded ({tf_error_summary(error)})'
