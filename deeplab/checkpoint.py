"""Checkpoint folders: model.json, TF checkpoint files, and restoring from foreign checkpoints.

A checkpoint folder (the contents of checkpoint.tar.gz) holds:
    model.json              `ModelCard`: the model, dataset facts, training options, final step
    checkpoint              TF's index, with a relative path (the folder can move)
    model.ckpt-N.index, model.ckpt-N.data-*
    events.out.tfevents.*   TensorBoard summaries of the run
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional

from deeplab.config import ExportConfig, ModelConfig, TrainConfig
from deeplab.datasets.manifest import DatasetInfo
from deeplab.errors import UserError, tf_error_summary

log = logging.getLogger(__name__)

MODEL_JSON = 'model.json'
FORMAT_VERSION = 1
# Checkpoint variables that are state of training, not of the model.
_TRAINING_STATE_MARKERS = ('global_step', '/Momentum', 'ExponentialMovingAverage', '/Adam')


@dataclasses.dataclass(frozen=True)
class ModelCard:
  """model.json: what a checkpoint or an exported model is, for the steps that read it.

      {"format_version": 1,
       "model": ModelConfig,                 the network evaluate and export rebuild
       "dataset": DatasetInfo,               classes, colormap, ignore label
       "training": TrainConfig + "global_step" (checkpoints of train)
       "checkpoint": "model.ckpt-N"          the prefix in the folder (checkpoints)
       "export": ExportConfig}               (exported models)
  """
  model: ModelConfig
  dataset: DatasetInfo
  training: Optional[TrainConfig] = None
  global_step: Optional[int] = None
  checkpoint: Optional[str] = None
  export: Optional[ExportConfig] = None

  def to_json(self) -> dict:
    data = {'format_version': FORMAT_VERSION, 'model': self.model.to_json(),
            'dataset': self.dataset.to_json()}
    if self.training is not None:
      data['training'] = dict(self.training.to_json(), global_step=self.global_step)
    if self.checkpoint is not None:
      data['checkpoint'] = self.checkpoint
    if self.export is not None:
      data['export'] = self.export.to_json()
    return data

  @classmethod
  def from_json(cls, data: dict) -> 'ModelCard':
    training = dict(data.get('training') or {})
    global_step = training.pop('global_step', None)
    return cls(model=ModelConfig.from_json(data['model']),
               dataset=DatasetInfo.from_json(data['dataset']),
               training=TrainConfig.from_json(training) if training else None,
               global_step=global_step, checkpoint=data.get('checkpoint'),
               export=ExportConfig.from_json(data['export']) if data.get('export') else None)

  def write(self, folder: str) -> str:
    path = os.path.join(folder, MODEL_JSON)
    with open(path, 'w') as f:
      json.dump(self.to_json(), f, indent=2, sort_keys=True)
      f.write('\n')
    return path

  @classmethod
  def read(cls, folder: str) -> 'ModelCard':
    """model.json of a checkpoint or model folder; a missing or malformed one is a UserError."""
    path = os.path.join(folder, MODEL_JSON)
    if not os.path.exists(path):
      raise UserError(f'{folder}: no {MODEL_JSON}; expected a checkpoint from the train step '
                      '(or a model from the export step)')
    try:
      with open(path) as f:
        return cls.from_json(json.load(f))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
      raise UserError(f'{path}: malformed ({e!r})') from None


def latest_prefix(folder: str) -> Optional[str]:
  """The newest checkpoint prefix in `folder` (from its `checkpoint` index), or None."""
  import tensorflow as tf
  return tf.train.latest_checkpoint(folder)


def write_index(folder: str, prefix_name: str) -> None:
  """A `checkpoint` index naming `prefix_name` relative to `folder`, as TF reads it."""
  with open(os.path.join(folder, 'checkpoint'), 'w') as f:
    f.write(f'model_checkpoint_path: "{prefix_name}"\n'
            f'all_model_checkpoint_paths: "{prefix_name}"\n')


def resolve_checkpoint_path(path: str) -> str:
  """A TF checkpoint prefix from a prefix, or a folder holding one (via its index or a lone .index)."""
  import tensorflow as tf
  if os.path.isdir(path):
    prefix = tf.train.latest_checkpoint(path)
    if prefix:
      return prefix
    indexes = sorted(f for f in os.listdir(path) if f.endswith('.index'))
    if len(indexes) == 1:
      return os.path.join(path, indexes[0][:-len('.index')])
    raise UserError(f'{path}: no TF checkpoint found (expected a `checkpoint` index file or '
                    'exactly one *.index file)')
  if os.path.exists(path + '.index'):
    return path
  if path.endswith('.index') and os.path.exists(path):
    return path[:-len('.index')]
  raise UserError(f'{path}: not a TF checkpoint prefix (no {path}.index)')


def restore(session, saver, prefix: str) -> None:
  """`saver.restore`, with a damaged checkpoint (bad checksum, truncated or missing data file)
  reported as one line naming it."""
  import tensorflow as tf
  try:
    saver.restore(session, prefix)
  except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
    raise UserError(f'{prefix}: corrupt checkpoint ({tf_error_summary(e)}); expected the files '
                    'train wrote, unmodified') from None
  except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
    raise UserError(f'{prefix}: the checkpoint does not fit this model or is incomplete '
                    f'({tf_error_summary(e)})') from None


def restore_matching(session, prefix: str, variables, exclude_scopes=()) -> dict:
  """Restores the `variables` found in checkpoint `prefix`, skipping `exclude_scopes`.

  Model variables missing from the checkpoint keep their initial values (e.g. the DeepLab head
  when starting from an ImageNet backbone checkpoint). Returns the names restored, missing (in the
  model, not in the checkpoint) and unexpected (in the checkpoint, not in the model; training state
  such as momentum slots is not counted). A shape mismatch is an error naming the variable; a
  checkpoint sharing no variable with the model is an error too.
  """
  import tensorflow as tf
  try:
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  except (tf.errors.OpError, ValueError) as e:
    raise UserError(f'{prefix}: cannot read the checkpoint ({getattr(e, "message", e)})') from None

  def excluded(name):
    return any(name.startswith(scope) for scope in exclude_scopes)

  matched, missing, mismatched = {}, [], []
  for variable in variables:
    name = variable.op.name
    if excluded(name) or any(m in name for m in _TRAINING_STATE_MARKERS):
      continue
    if name not in shapes:
      missing.append(name)
    elif list(shapes[name]) != variable.shape.as_list():
      mismatched.append(f'{name} is {shapes[name]} in the checkpoint but {variable.shape.as_list()} '
                        'in the model')
    else:
      matched[name] = variable
  if mismatched:
    hint = (' (a different class count? pass --initialize_last_layer=false)'
            if any(m.startswith('logits') for m in mismatched) else
            ' (is model_variant / depth_multiplier / atrous_rates / output_stride right?)')
    raise UserError(f'{prefix}: {len(mismatched)} variables do not fit the model, first: '
                    f'{mismatched[0]}{hint}')
  if not matched:
    raise UserError(f'{prefix}: no variable of the checkpoint belongs to this model '
                    '(wrong model_variant, or not a DeepLab/backbone checkpoint?)')
  model_names = {v.op.name for v in variables}
  unexpected = sorted(n for n in shapes if n not in model_names and not excluded(n)
                      and not any(m in n for m in _TRAINING_STATE_MARKERS))
  restore(session, tf.compat.v1.train.Saver(matched), prefix)
  if missing:
    log.warning('%d model variables are not in %s and start from their initializers, first: %s',
                len(missing), prefix, missing[0])
  if unexpected:
    log.warning('%d checkpoint variables are not in the model and were ignored, first: %s',
                len(unexpected), unexpected[0])
  return {'restored': sorted(matched), 'missing': missing, 'unexpected': unexpected}
