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

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Callable, Optional, Tuple

from deeplab import input as model_input
from deeplab import checkpoint as ckpt
from deeplab import losses, model, schedules
from deeplab.compat import tf
from deeplab.config import ModelConfig
from deeplab.datasets.manifest import Manifest
from deeplab.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_BASENAME = 'model.ckpt'
FINGERPRINT = 'fingerprint.json'


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Training options (names follow the original DeepLab train.py flags)."""
  training_number_of_steps: int = 30000
  train_batch_size: int = 8
  train_crop_size: Tuple[int, int] = (513, 513)
  train_split: str = 'train'
  base_learning_rate: float = 1e-4
  learning_policy: str = 'poly'
  learning_power: float = 0.9
  end_learning_rate: float = 0.0
  learning_rate_decay_step: int = 2000
  learning_rate_decay_factor: float = 0.1
  slow_start_step: int = 0
  slow_start_learning_rate: float = 1e-4
  momentum: float = 0.9
  fine_tune_batch_norm: bool = True
  min_scale_factor: float = 0.5
  max_scale_factor: float = 2.0
  scale_factor_step_size: float = 0.25
  initialize_last_layer: bool = True
  last_layers_contain_logits_only: bool = False
  log_steps: int = 10
  save_interval_steps: int = 1000
  seed: int = 0

  def __post_init__(self):
    if len(self.train_crop_size) != 2:
      raise UserError(f'--train_crop_size={",".join(map(str, self.train_crop_size))}: '
                      'expected two integers, height,width (e.g. 513,513)')
    if self.min_scale_factor > self.max_scale_factor:
      raise UserError(f'--min_scale_factor={self.min_scale_factor} exceeds '
                      f'--max_scale_factor={self.max_scale_factor}')

  def to_json(self) -> dict:
    data = dataclasses.asdict(self)
    data['train_crop_size'] = list(self.train_crop_size)
    return data


class TrainingInterrupted(Exception):
  """A stop was requested; the checkpoint of `step` is saved in `work_dir`."""

  def __init__(self, step: int, work_dir: str):
    super().__init__(f'training stopped at step {step}; checkpoint saved in {work_dir}')
    self.step, self.work_dir = step, work_dir


def fingerprint(model_config: ModelConfig, train_config: TrainConfig, manifest: Manifest) -> dict:
  """What makes two runs the same run (logging and saving intervals do not)."""
  training = train_config.to_json()
  for key in ('log_steps', 'save_interval_steps'):
    training.pop(key)
  split = manifest.splits.get(train_config.train_split)
  return {'model': model_config.to_json(), 'training': training, 'dataset': manifest.name,
          'shards': split.shards if split else None}


def work_dir_for(base: str, run_fingerprint: dict) -> str:
  """A work folder per distinct run under `base`, so different settings never resume each other."""
  digest = hashlib.sha256(json.dumps(run_fingerprint, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(base, digest)


def _excluded_scopes(train_config: TrainConfig):
  if train_config.initialize_last_layer:
    return ()
  return model.LOGITS_SCOPES if train_config.last_layers_contain_logits_only else model.LAST_LAYER_SCOPES


def build_train_graph(model_config: ModelConfig, train_config: TrainConfig, images, labels,
                      ignore_label: int):
  """The training ops over a batch.

  Returns a dict: train_op (runs one step and yields the new step count), loss, total_loss,
  learning_rate, global_step.
  """
  global_step = tf.compat.v1.train.get_or_create_global_step()
  scores = model.logits(images, model_config, is_training=True,
                        train_batch_norm=train_config.fine_tune_batch_norm)
  loss = losses.softmax_cross_entropy(scores, labels, model_config.num_classes, ignore_label)
  regularization = tf.compat.v1.losses.get_regularization_losses()
  total_loss = tf.add_n([loss] + regularization, name='total_loss')
  learning_rate = schedules.learning_rate(
      global_step, train_config.learning_policy, train_config.base_learning_rate,
      train_config.training_number_of_steps, train_config.learning_power,
      train_config.end_learning_rate, train_config.learning_rate_decay_step,
      train_config.learning_rate_decay_factor, train_config.slow_start_step,
      train_config.slow_start_learning_rate)
  optimizer = tf.compat.v1.train.MomentumOptimizer(learning_rate, train_config.momentum)
  # Batch norm moving averages update with every step.
  with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
    train_op = optimizer.minimize(total_loss, global_step=global_step)
  # The step count after this step's update (reading global_step beside train_op could race it).
  with tf.control_dependencies([train_op]):
    step_after_update = tf.identity(global_step)
  tf.compat.v1.summary.scalar('loss', loss)
  tf.compat.v1.summary.scalar('total_loss', total_loss)
  tf.compat.v1.summary.scalar('learning_rate', learning_rate)
  return {'train_op': step_after_update, 'loss': loss, 'total_loss': total_loss,
          'learning_rate': learning_rate, 'global_step': global_step}


def train(model_config: ModelConfig, train_config: TrainConfig, manifest: Manifest, work_dir: str,
          initial_checkpoint: Optional[str] = None, resume_from: Optional[str] = None,
          report: Callable[[dict], None] = lambda metrics: None,
          should_stop: Callable[[], bool] = lambda: False) -> str:
  """Trains to `training_number_of_steps`; returns the final checkpoint prefix (in work_dir).

  `report` receives a metrics dict every `log_steps` steps (and one about initialisation);
  `should_stop` is polled after every step.
  """
  os.makedirs(work_dir, exist_ok=True)
  with open(os.path.join(work_dir, FINGERPRINT), 'w') as f:
    json.dump(fingerprint(model_config, train_config, manifest), f, indent=2, sort_keys=True)
  shards = manifest.shard_paths(train_config.train_split)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(train_config.seed)
    dataset = model_input.train_dataset(
        shards, train_config.train_batch_size, train_config.train_crop_size, manifest.ignore_label,
        seed=train_config.seed, min_resize_value=model_config.min_resize_value,
        max_resize_value=model_config.max_resize_value, min_scale=train_config.min_scale_factor,
        max_scale=train_config.max_scale_factor, scale_step=train_config.scale_factor_step_size)
    images, labels = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    ops = build_train_graph(model_config, train_config, images, labels, manifest.ignore_label)
    return run_training(ops, train_config, work_dir, initial_checkpoint, resume_from, report,
                        should_stop)


def _initialize(session, saver, train_config, work_dir, initial_checkpoint, resume_from, report):
  session.run(tf.compat.v1.global_variables_initializer())
  resumed = ckpt.latest_prefix(work_dir)
  if resumed:
    saver.restore(session, resumed)
    report({'resumed_from_step': int(session.run(tf.compat.v1.train.get_global_step()))})
  elif resume_from:
    try:
      saver.restore(session, resume_from)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
      raise UserError(f'--checkpoint: {resume_from} does not fit this model '
                      f'({str(e).splitlines()[0]})') from None
    report({'resumed_from_step': int(session.run(tf.compat.v1.train.get_global_step()))})
  elif initial_checkpoint:
    result = ckpt.restore_matching(session, initial_checkpoint, tf.compat.v1.global_variables(),
                                   _excluded_scopes(train_config))
    report({'restored_variables': len(result['restored']),
            'missing_variables': len(result['missing']),
            'unexpected_variables': len(result['unexpected'])})


def run_training(ops, train_config: TrainConfig, work_dir: str, initial_checkpoint, resume_from,
                 report, should_stop) -> str:
  """Runs the training ops in a session until the total step; see `train`."""
  saver = tf.compat.v1.train.Saver(max_to_keep=2, save_relative_paths=True)
  summaries = tf.compat.v1.summary.merge_all()
  total = train_config.training_number_of_steps
  prefix = os.path.join(work_dir, CHECKPOINT_BASENAME)
  with tf.compat.v1.Session() as session:
    _initialize(session, saver, train_config, work_dir, initial_checkpoint, resume_from, report)
    writer = tf.compat.v1.summary.FileWriter(work_dir)
    step = int(session.run(ops['global_step']))
    last_saved = step if ckpt.latest_prefix(work_dir) else None
    window_start, window_steps = time.perf_counter(), 0
    while step < total:
      fetches = [ops['train_op'], ops['loss'], ops['total_loss'], ops['learning_rate']]
      log_now = (step + 1) % train_config.log_steps == 0 or step + 1 == total
      if log_now:
        fetches.append(summaries)
      results = session.run(fetches)
      step = int(results[0])
      window_steps += 1
      if log_now:
        writer.add_summary(results[4], step)
        elapsed = time.perf_counter() - window_start
        report({'step': step, 'loss': float(results[1]), 'total_loss': float(results[2]),
                'learning_rate': float(results[3]),
                'images_per_sec': window_steps * train_config.train_batch_size / max(elapsed, 1e-9)})
        window_start, window_steps = time.perf_counter(), 0
      if step % train_config.save_interval_steps == 0:
        saver.save(session, prefix, global_step=step, write_meta_graph=False)
        last_saved = step
      if should_stop() and step < total:
        if last_saved != step:
          saver.save(session, prefix, global_step=step, write_meta_graph=False)
        writer.close()
        raise TrainingInterrupted(step, work_dir)
    if last_saved != step:
      saver.save(session, prefix, global_step=step, write_meta_graph=False)
    writer.close()
  return ckpt.latest_prefix(work_dir)
