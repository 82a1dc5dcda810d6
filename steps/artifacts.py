"""The artifacts steps exchange, one class each, and what makes them that kind of artifact.

Each knows where its contents come from (a folder, an archive, a suffix-less path), what it must
hold, and how it is packed (steps/files.py: deterministic, atomic). Steps use these, never each other.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from typing import TYPE_CHECKING, Callable, ClassVar

from deeplab.errors import UserError
from steps.archives import open_input
from steps.files import scratch_dir, write_tarball

if TYPE_CHECKING:
  from deeplab.checkpoint import ModelCard

def _open_artifact(stack: contextlib.ExitStack, path: str, marker: str, kind: str,
                   made_by: str) -> str:
  """The folder of an artifact input holding `marker`; another kind of artifact is named as such."""
  folder = stack.enter_context(open_input(path, marker=marker))
  if os.path.exists(os.path.join(folder, marker)):
    return folder
  found = next((what for name, what in _ARTIFACT_MARKERS if os.path.exists(os.path.join(folder, name))),
               'no artifact of this project')
  raise UserError(f'{path} holds {found}, not {kind}; expected the output of the {made_by} step')


# What tells the kinds apart, most specific first: a model holds a model.json too.
_ARTIFACT_MARKERS = (('frozen_inference_graph.pb', 'an exported model'),
                     ('saved_model', 'an exported model'), ('model.tflite', 'an exported model'),
                     ('model.json', 'a checkpoint'),
                     ('dataset.json', 'TFRecords (dataset.json)'))


class TFRecords:
  """tfrecords.tar.gz of build_data (shards + dataset.json), or a folder of original DeepLab shards
  (then `dataset` names the dataset they hold)."""
  filename = 'tfrecords.tar.gz'

  @staticmethod
  def open(stack: contextlib.ExitStack, path: str, dataset: str = ''):
    """The dataset Manifest, its shards in a folder that lives as long as `stack`."""
    from deeplab.datasets.manifest import MANIFEST_NAME, load_dataset
    return load_dataset(stack.enter_context(open_input(path, marker=MANIFEST_NAME)), dataset)

  @staticmethod
  def write(staging: str, out_path: str) -> str:
    return write_tarball(staging, out_path)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """checkpoint.tar.gz of train: model.json + a TF checkpoint (relative index) + TensorBoard events."""
  card: 'ModelCard'
  prefix: str  # the TF checkpoint prefix inside the opened folder
  filename: ClassVar[str] = 'checkpoint.tar.gz'

  @classmethod
  def open(cls, stack: contextlib.ExitStack, path: str) -> 'Checkpoint':
    from deeplab import checkpoint
    folder = _open_artifact(stack, path, checkpoint.MODEL_JSON, 'a checkpoint', 'train')
    return cls(checkpoint.ModelCard.read(folder), checkpoint.resolve_checkpoint_path(folder))

  @staticmethod
  def write(out_path: str, prefix: str, events_dir: str, card: 'ModelCard') -> str:
    """Packs checkpoint `prefix` (a path), the events in `events_dir` and `card`."""
    from deeplab import checkpoint
    with scratch_dir('checkpoint', 'the checkpoint') as staging:
      name = os.path.basename(prefix)
      for filename in os.listdir(os.path.dirname(prefix)):
        if filename.startswith(name + '.'):
          shutil.copy2(os.path.join(os.path.dirname(prefix), filename), staging)
      for filename in os.listdir(events_dir):
        if filename.startswith('events.out.tfevents'):
          shutil.copy2(os.path.join(events_dir, filename), staging)
      checkpoint.write_index(staging, name)
      dataclasses.replace(card, checkpoint=name).write(staging)
      return write_tarball(staging, out_path)


@dataclasses.dataclass(frozen=True)
class Model:
  """model.tar.gz of export: model.json + the formats asked for (frozen_inference_graph.pb,
  saved_model/, model.tflite)."""
  card: 'ModelCard'
  folder: str
  filename: ClassVar[str] = 'model.tar.gz'

  @classmethod
  def open(cls, stack: contextlib.ExitStack, path: str) -> 'Model':
    from deeplab import checkpoint, inference
    folder = _open_artifact(stack, path, checkpoint.MODEL_JSON, 'an exported model', 'export')
    if not any(inference.find_models(folder).values()):
      found = 'a checkpoint' if any(n.endswith('.index') for n in os.listdir(folder)) else 'no model'
      raise UserError(f'{path} holds {found}, not an exported model; expected the output of the '
                      'export step')
    return cls(checkpoint.ModelCard.read(folder), folder)

  def load(self, model_format: str = 'auto'):
    """The model of `model_format` ('auto': the first format the folder holds), with
    `predict(image uint8 [H, W, 3]) -> labels int32 [H, W]` and `close()`."""
    from deeplab import inference
    found, path = inference.find_model(self.folder, None if model_format == 'auto' else model_format)
    return inference.load_model(path, found)

  @staticmethod
  def write(out_path: str, card: 'ModelCard', fill: Callable[[str], None]) -> str:
    """Packs `card` and what `fill(folder)` writes into the folder (the model files)."""
    with scratch_dir('model', 'the model') as staging:
      fill(staging)
      card.write(staging)
      return write_tarball(staging, out_path)


class Predictions:
  """predictions.tar.gz of predict: `labels/<name>.png` (class ids) + `overlays/<name>.jpg` (or
  `.png`: `overlay_format`), filled one image at a time in a scratch folder that lives as long as
  `stack`; `add` may be called from several threads."""
  filename = 'predictions.tar.gz'

  def __init__(self, stack: contextlib.ExitStack, overlay_format: str):
    self.staging = stack.enter_context(scratch_dir('predictions', 'the predictions'))
    self.overlay_format = overlay_format

  def add(self, name: str, labels, overlay) -> None:
    from deeplab import visualize
    visualize.save_label_png(labels, self._path('labels', name, '.png'))
    visualize.write_overlay(
        overlay, self._path('overlays', name, visualize.OVERLAY_SUFFIXES[self.overlay_format]),
        self.overlay_format)

  def _path(self, kind: str, name: str, suffix: str) -> str:
    path = os.path.join(self.staging, kind, name + suffix)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path

  def write(self, out_path: str) -> str:
    return write_tarball(self.staging, out_path)
