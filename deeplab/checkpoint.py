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
import re
from typing import Optional

from google.protobuf import text_encoding

from deeplab import containment
from deeplab.config import ExportConfig, ModelConfig, TrainConfig
from deeplab.datasets.manifest import DatasetInfo
from deeplab.errors import UserError, tf_error_summary

log = logging.getLogger(__name__)

MODEL_JSON = 'model.json'
INDEX_FILE = 'checkpoint'  # TF's index of a checkpoint folder
# The line of the index that names the newest checkpoint (a text-format string, C-escaped), and
# how much of an index is read (TF writes a few hundred bytes).
_INDEX_ENTRY_RE = re.compile(r'\s*model_checkpoint_path\s*:\s*"(?P<name>(?:[^"\\]|\\.)*)"\s*')
_INDEX_MAX_BYTES = 1 << 20
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
       "export": ExportConfig,               (exported models)
       "lineage": {...},                     data, initial weights, code, libraries (deeplab/lineage.py)
       "training_metrics": {name: number},   the last metric line of training
       "evaluation": {...}}                  mIoU of this checkpoint, from evaluate (exported models)

  The last three are optional sections added without a new format_version: cards written before
  them load (the sections are None), and readers that predate them ignore them.
  """
  model: ModelConfig
  dataset: DatasetInfo
  training: Optional[TrainConfig] = None
  global_step: Optional[int] = None
  checkpoint: Optional[str] = None
  export: Optional[ExportConfig] = None
  lineage: Optional[dict] = None
  training_metrics: Optional[dict] = None
  evaluation: Optional[dict] = None

  def to_json(self) -> dict:
    data = {'format_version': FORMAT_VERSION, 'model': self.model.to_json(),
            'dataset': self.dataset.to_json()}
    if self.training is not None:
      data['training'] = dict(self.training.to_json(), global_step=self.global_step)
    if self.checkpoint is not None:
      data['checkpoint'] = self.checkpoint
    if self.export is not None:
      data['export'] = self.export.to_json()
    for name in ('lineage', 'training_metrics', 'evaluation'):
      if getattr(self, name) is not None:
        data[name] = getattr(self, name)
    return data

  @classmethod
  def from_json(cls, data: dict) -> 'ModelCard':
    """The card `data` describes, each section checked as the flags that make it are (bounds and
    choices; a UserError names the section), and the model's class count the dataset's."""
    from deeplab import lineage

    def section(name, read, value):
      try:
        return read(value)
      except UserError as e:  # the schema's message names the setting as a flag: --name=value
        raise UserError(f'"{name}": {str(e).removeprefix("--")}') from None

    training = dict(data.get('training') or {})
    global_step = training.pop('global_step', None)
    if global_step is not None and (not isinstance(global_step, int) or global_step < 0):
      raise UserError(f'"training": global_step={global_step!r}; expected a step count')
    card = cls(model=section('model', ModelConfig.from_json, data['model']),
               dataset=section('dataset', DatasetInfo.from_json, data['dataset']),
               training=section('training', TrainConfig.from_json, training) if training else None,
               global_step=global_step, checkpoint=data.get('checkpoint'),
               export=(section('export', ExportConfig.from_json, data['export'])
                       if data.get('export') else None),
               lineage=(lineage.check_lineage(data['lineage'])
                        if data.get('lineage') is not None else None),
               training_metrics=(lineage.check_training_metrics(data['training_metrics'])
                                 if data.get('training_metrics') is not None else None),
               evaluation=(lineage.check_evaluation(data['evaluation'])
                           if data.get('evaluation') is not None else None))
    if card.model.num_classes != card.dataset.num_classes:
      raise UserError(f'"model" has num_classes={card.model.num_classes} but "dataset" has '
                      f'num_classes={card.dataset.num_classes}; expected the same class count')
    return card

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
        card = cls.from_json(json.load(f))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
      raise UserError(f'{path}: malformed ({e!r})') from None
    except UserError as e:
      raise UserError(f'{path}: {e}') from None
    if card.checkpoint is not None:  # a name inside the folder, whether the folder holds it or not
      containment.resolve(folder, card.checkpoint, path)
    return card


def latest_prefix(folder: str) -> Optional[str]:
  """The newest checkpoint prefix in `folder` (from its `checkpoint` index), or None."""
  import tensorflow as tf
  return tf.train.latest_checkpoint(folder)


def write_index(folder: str, prefix_name: str) -> None:
  """A `checkpoint` index naming `prefix_name` relative to `folder`, as TF reads it."""
  with open(os.path.join(folder, INDEX_FILE), 'w') as f:
    f.write(f'model_checkpoint_path: "{prefix_name}"\n'
            f'all_model_checkpoint_paths: "{prefix_name}"\n')


def _indexed_prefix(folder: str) -> Optional[str]:
  """The prefix that `folder`'s `checkpoint` index names (its model_checkpoint_path line, in TF's
  text format), or None without an index. The name must lie inside the folder
  (`containment.resolve`), and the checkpoint it names must be there."""
  path = os.path.join(folder, INDEX_FILE)
  if not os.path.isfile(path):
    return None
  with open(containment.resolve(folder, INDEX_FILE, folder), 'rb') as f:
    text = f.read(_INDEX_MAX_BYTES).decode('utf-8', 'replace')
  for number, line in enumerate(text.splitlines(), 1):
    match = _INDEX_ENTRY_RE.fullmatch(line)
    if match:
      name = text_encoding.CUnescape(match.group('name')).decode('utf-8', 'replace')
      prefix = containment.resolve(folder, name, path, number)
      if not os.path.isfile(prefix + '.index'):
        raise UserError(f'{path}, line {number}: names the checkpoint {name!r}, but there is no '
                        f'{name}.index in {folder}; expected the files the index names')
      return prefix
  raise UserError(f'{path}: no model_checkpoint_path line; expected a TF checkpoint index')


def resolve_checkpoint_path(path: str) -> str:
  """A TF checkpoint prefix from a prefix, or a folder holding one (via its index or a lone .index).

  In a folder (an input), the prefix's files must lie inside it: the index may not name a path
  out of it, nor may a file of the checkpoint be a link out of it.
  """
  if os.path.isdir(path):
    prefix = _indexed_prefix(path)
    if prefix is None:
      indexes = sorted(f for f in os.listdir(path) if f.endswith('.index'))
      if len(indexes) != 1:
        raise UserError(f'{path}: no TF checkpoint found (expected a `checkpoint` index file or '
                        'exactly one *.index file)')
      prefix = os.path.join(path, indexes[0][:-len('.index')])
    folder, name = os.path.split(prefix)
    for filename in os.listdir(folder):
      if filename.startswith(name + '.'):
        containment.resolve(path, os.path.relpath(os.path.join(folder, filename), path), path)
    return prefix
  if os.path.exists(path + '.index'):
    return path
  if path.endswith('.index') and os.path.exists(path):
    return path[:-len('.index')]
  raise UserError(f'{path}: not a TF checkpoint prefix (no {path}.index)')


def _checkpoint_shapes(prefix: str) -> dict:
  """{variable name: shape} of checkpoint `prefix`, read from its index file alone."""
  import tensorflow as tf
  try:
    return tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  except (tf.errors.OpError, ValueError) as e:
    raise UserError(f'{prefix}: cannot read the checkpoint ({getattr(e, "message", e)})') from None


def _shape_mismatches(shapes: dict, variables) -> list:
  """One line per variable of `variables` whose shape in the checkpoint (`shapes`) differs."""
  return [f'{v.op.name} is {shapes[v.op.name]} in the checkpoint but {v.shape.as_list()} in the '
          'model' for v in variables
          if v.op.name in shapes and list(shapes[v.op.name]) != v.shape.as_list()]


def restore(session, saver, prefix: str, variables=None) -> None:
  """`saver.restore`, once each of `variables` (those `saver` restores; default: every global
  variable of the session's graph, as a Saver made without a list) that the checkpoint holds is
  known to have its shape there: TensorFlow would silently give a variable the checkpoint's
  shape, and a model.json describing another model than its weights would pass unnoticed. A
  damaged checkpoint (bad checksum, truncated or missing data file) is reported as one line
  naming it."""
  import tensorflow as tf
  from deeplab.model import LOGITS_SCOPE
  if variables is None:
    variables = session.graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
  mismatched = _shape_mismatches(_checkpoint_shapes(prefix), variables)
  if mismatched:
    hint = ('num_classes' if any(m.startswith(LOGITS_SCOPE) for m in mismatched)
            else 'model_variant, depth_multiplier, output_stride or the head settings')
    raise UserError(f'{prefix}: the checkpoint does not hold the model its model.json (or the '
                    f'flags) describe: {len(mismatched)} variables differ, first: {mismatched[0]} '
                    f'(check {hint})')
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
  from deeplab.model import LOGITS_SCOPE
  shapes = _checkpoint_shapes(prefix)

  def excluded(name):
    return any(name.startswith(scope) for scope in exclude_scopes)

  candidates = [v for v in variables if not excluded(v.op.name)
                and not any(m in v.op.name for m in _TRAINING_STATE_MARKERS)]
  mismatched = _shape_mismatches(shapes, candidates)
  missing = [v.op.name for v in candidates if v.op.name not in shapes]
  matched = {v.op.name: v for v in candidates if v.op.name in shapes}
  if mismatched:
    hint = (' (a different class count? pass --initialize_last_layer=false)'
            if any(m.startswith(LOGITS_SCOPE) for m in mismatched) else
            ' (is model_variant / depth_multiplier / atrous_rates / output_stride right?)')
    raise UserError(f'{prefix}: {len(mismatched)} variables do not fit the model, first: '
                    f'{mismatched[0]}{hint}')
  if not matched:
    raise UserError(f'{prefix}: no variable of the checkpoint belongs to this model '
                    '(wrong model_variant, or not a DeepLab/backbone checkpoint?)')
  model_names = {v.op.name for v in variables}
  unexpected = sorted(n for n in shapes if n not in model_names and not excluded(n)
                      and not any(m in n for m in _TRAINING_STATE_MARKERS))
  restore(session, tf.compat.v1.train.Saver(matched), prefix, list(matched.values()))
  if missing:
    log.warning('%d model variables are not in %s and start from their initializers, first: %s',
                len(missing), prefix, missing[0])
  if unexpected:
    log.warning('%d checkpoint variables are not in the model and were ignored, first: %s',
                len(unexpected), unexpected[0])
  return {'restored': sorted(matched), 'missing': missing, 'unexpected': unexpected}
