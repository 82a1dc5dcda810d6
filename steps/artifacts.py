"""The artifacts steps exchange, one class each, and what makes them that kind of artifact.

Each knows where its contents come from (a folder, an archive, a suffix-less path), what it must
hold, and how it is packed (steps/files.py: deterministic, atomic). Steps use these, never each other.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import threading
from typing import TYPE_CHECKING, ClassVar

from deeplab.errors import UserError
from steps.archives import find_root, open_input
from steps.files import dump_json, scratch_dir, write_tarball

if TYPE_CHECKING:
  from deeplab.checkpoint import ModelCard

def _open_artifact(stack: contextlib.ExitStack, path: str, marker: str, kind: str,
                   made_by: str) -> str:
  """The folder of an artifact input holding `marker`; another kind of artifact is named as such."""
  folder = stack.enter_context(open_input(path, marker=marker))
  if os.path.exists(os.path.join(folder, marker)):
    return folder
  found = identify(folder)[0] or 'no artifact of this project'
  raise UserError(f'{path} holds {found}, not {kind}; expected the output of the {made_by} step')


def identify(folder: str):
  """(the kind of artifact an extracted `folder` holds, as `_markers` names it, and the folder
  holding its marker: `folder` or one it wraps), or (None, folder)."""
  for marker, kind in _markers():
    root = find_root(folder, marker)
    if os.path.exists(os.path.join(root, marker)):
      return kind, root
  return None, folder


def _markers():
  """(file, kind) pairs that tell the kinds apart, most specific first: a model holds a model.json
  too. Named by the modules that write them (imported here, not at --help)."""
  from deeplab.checkpoint import MODEL_JSON
  from deeplab.datasets.manifest import MANIFEST_NAME
  from deeplab.inference import FORMATS
  return ([(model_format.filename.split(os.sep)[0], 'an exported model')
           for model_format in FORMATS.values()]
          + [(MODEL_JSON, 'a checkpoint'), (MANIFEST_NAME, 'TFRecords (dataset.json)'),
             (PREDICTIONS_JSON, 'predictions'), (Evaluation.filename, 'an evaluation')])


class Artifact:
  """The protocol every artifact follows.

  `open(stack, path, ...)` reads one from a folder, an archive or a suffix-less path; its contents
  stay in `folder` for as long as `stack` lives. `new(stack, ...)` starts one in a scratch folder of
  the same lifetime, for the step to fill. `write(out_path)` packs `folder` into `out_path`,
  deterministic and atomic. `filename` is its name in an outputs folder.
  """
  filename: ClassVar[str]
  # How an error names the kind and the step that makes it; what `write` is said to be assembling.
  kind: ClassVar[str]
  made_by: ClassVar[str]
  assembling: ClassVar[str]

  def __init__(self, folder: str):
    self.folder = folder

  @staticmethod
  def _marker() -> str:
    """The file that makes a folder this kind of artifact."""
    from deeplab.checkpoint import MODEL_JSON
    return MODEL_JSON

  @classmethod
  def _open_folder(cls, stack: contextlib.ExitStack, path: str) -> str:
    return _open_artifact(stack, path, cls._marker(), cls.kind, cls.made_by)

  @classmethod
  def _new_folder(cls, stack: contextlib.ExitStack) -> str:
    return stack.enter_context(scratch_dir(cls.filename.split('.')[0], cls.assembling))

  def write(self, out_path: str) -> str:
    return write_tarball(self.folder, out_path)


class TFRecords(Artifact):
  """tfrecords.tar.gz of build_data (shards + dataset.json), or a folder of original DeepLab shards
  (then `dataset` names the dataset they hold): `manifest` describes them."""
  filename = 'tfrecords.tar.gz'
  kind, made_by, assembling = 'TFRecords', 'build_data', 'the TFRecords'

  def __init__(self, folder: str, manifest=None):
    super().__init__(folder)
    self.manifest = manifest

  @classmethod
  def open(cls, stack: contextlib.ExitStack, path: str, dataset: str = '') -> 'TFRecords':
    # Not _open_folder: original DeepLab shards have no dataset.json (`dataset` names them).
    from deeplab.datasets.manifest import MANIFEST_NAME, load_dataset
    folder = stack.enter_context(open_input(path, marker=MANIFEST_NAME))
    return cls(folder, load_dataset(folder, dataset))

  @classmethod
  def new(cls, stack: contextlib.ExitStack) -> 'TFRecords':
    """An empty folder for the shards and dataset.json."""
    return cls(cls._new_folder(stack))


class Checkpoint(Artifact):
  """checkpoint.tar.gz of train: model.json + a TF checkpoint (relative index) + TensorBoard events."""
  filename = 'checkpoint.tar.gz'
  kind, made_by, assembling = 'a checkpoint', 'train', 'the checkpoint'

  def __init__(self, folder: str, card: 'ModelCard', prefix: str):
    super().__init__(folder)
    self.card = card
    self.prefix = prefix  # the TF checkpoint prefix inside `folder`

  @classmethod
  def open(cls, stack: contextlib.ExitStack, path: str) -> 'Checkpoint':
    from deeplab import checkpoint
    folder = cls._open_folder(stack, path)
    return cls(folder, checkpoint.ModelCard.read(folder), checkpoint.resolve_checkpoint_path(folder))

  @classmethod
  def new(cls, stack: contextlib.ExitStack, prefix: str, events_dir: str,
          card: 'ModelCard') -> 'Checkpoint':
    """Checkpoint `prefix` (a path), the TensorBoard events in `events_dir` and `card`, gathered."""
    from deeplab import checkpoint
    folder = cls._new_folder(stack)
    name = os.path.basename(prefix)
    for filename in os.listdir(os.path.dirname(prefix)):
      if filename.startswith(name + '.'):
        shutil.copy2(os.path.join(os.path.dirname(prefix), filename), folder)
    for filename in os.listdir(events_dir):
      if filename.startswith('events.out.tfevents'):
        shutil.copy2(os.path.join(events_dir, filename), folder)
    checkpoint.write_index(folder, name)
    card = dataclasses.replace(card, checkpoint=name)
    card.write(folder)
    return cls(folder, card, os.path.join(folder, name))


class Model(Artifact):
  """model.tar.gz of export: model.json + the formats asked for (deeplab/inference.py FORMATS)."""
  filename = 'model.tar.gz'
  kind, made_by, assembling = 'an exported model', 'export', 'the model'

  def __init__(self, folder: str, card: 'ModelCard'):
    super().__init__(folder)
    self.card = card

  @classmethod
  def open(cls, stack: contextlib.ExitStack, path: str) -> 'Model':
    from deeplab import checkpoint, inference
    folder = cls._open_folder(stack, path)
    if not any(inference.find_models(folder).values()):
      found = 'a checkpoint' if any(n.endswith('.index') for n in os.listdir(folder)) else 'no model'
      raise UserError(f'{path} holds {found}, not an exported model; expected the output of the '
                      'export step')
    return cls(folder, checkpoint.ModelCard.read(folder))

  @classmethod
  def new(cls, stack: contextlib.ExitStack, card: 'ModelCard') -> 'Model':
    """A folder holding `card`, for the step to write the model files into."""
    folder = cls._new_folder(stack)
    card.write(folder)
    return cls(folder, card)

  def load(self, model_format: str = 'auto'):
    """The model of `model_format` ('auto': the first format the folder holds), with
    `predict(image uint8 [H, W, 3]) -> labels int32 [H, W]` and `close()`."""
    from deeplab import inference
    found, path = inference.find_model(self.folder, None if model_format == 'auto' else model_format)
    return inference.load_model(path, found)


PREDICTIONS_JSON = 'predictions.json'


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def folder_sha256(folder: str) -> str:
  """One digest of every file under `folder`: their relative paths and sha256s, sorted, so it
  does not depend on how the folder was packed or unpacked."""
  lines = sorted(f'{os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/")} '
                 f'{file_sha256(os.path.join(d, f))}\n'
                 for d, _, files in os.walk(folder) for f in files)
  return hashlib.sha256(''.join(lines).encode()).hexdigest()


def shard_of(name: str, num_shards: int) -> int:
  """The shard an image belongs to: the first 8 bytes of the sha256 of its name (UTF-8, `/`
  separators), big-endian, modulo `num_shards`. A hash rather than a position in the sorted list:
  an image's shard depends on its name alone (adding images moves no other), and shards come out
  balanced whatever the names look like."""
  return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], 'big') % num_shards


def image_set_sha256(names) -> str:
  """The identity of the whole image set a run was given (every shard's names): each shard records
  it, so a merge tells a missing image from one that was never there."""
  return hashlib.sha256(''.join(f'{name}\n' for name in sorted(names)).encode()).hexdigest()


def _check_manifest(manifest, source: str) -> None:
  """Refuses a predictions.json that predict could not have written, before anything is read by
  it: image names are paths inside the artifact (deeplab/containment.py), numbers in bounds."""
  from deeplab import containment, visualize
  from deeplab.config import MAX_SHARDS

  def expect(ok, what):
    if not ok:
      raise UserError(f'{source}: expected {what}; is it the output of the predict step?')

  def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)

  expect(isinstance(manifest, dict) and all(isinstance(manifest.get(key), dict) for key in (
      'images', 'image_set', 'model', 'settings')), 'an object with images, image_set, model, settings')
  num_shards, shard_index = manifest.get('num_shards'), manifest.get('shard_index')
  expect(is_int(num_shards) and is_int(shard_index) and 1 <= num_shards <= MAX_SHARDS
         and 0 <= shard_index < num_shards,
         f'num_shards 1 to {MAX_SHARDS} and shard_index 0 to num_shards - 1')
  expect(manifest['settings'].get('overlay_format') in visualize.OVERLAY_SUFFIXES,
         f'settings.overlay_format one of {", ".join(visualize.OVERLAY_SUFFIXES)}')
  image_set = manifest['image_set']
  expect(is_int(image_set.get('count')) and isinstance(image_set.get('sha256'), str),
         'image_set with a count and a sha256')
  for name, entry in manifest['images'].items():
    containment.check_name(name, source)
    expect(isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in (
        'source', 'image_sha256', 'labels_sha256', 'overlay_sha256')),
        f'images[{name!r}] with source, image_sha256, labels_sha256, overlay_sha256')


class Predictions(Artifact):
  """predictions.tar.gz of predict: `labels/<name>.png` (class ids) + `overlays/<name>.jpg` (or
  `.png`: the overlay_format setting), added one image at a time (`add` may be called from several
  threads), and predictions.json, the manifest: which images (`images`: name -> source, sha256 of
  the source bytes, of the label map and of the overlay), out of which set (`image_set`: count and
  `image_set_sha256`), the model (`model`: `folder_sha256` of the model artifact and the format
  run), the inference `settings`, and `num_shards`, `shard_index`. A run of one shard and the merge
  of all shards write the same manifest (num_shards 1, shard_index 0)."""
  filename = 'predictions.tar.gz'
  kind, made_by, assembling = 'predictions', 'predict', 'the predictions'

  def __init__(self, folder: str, manifest: dict):
    super().__init__(folder)
    self.manifest = manifest
    self._lock = threading.Lock()

  @staticmethod
  def _marker() -> str:
    return PREDICTIONS_JSON

  @classmethod
  def shard_filename(cls, shard_index: int, num_shards: int) -> str:
    """The file name of a shard's artifact in an outputs folder: each its own, since an
    orchestrator gathering the shards into one input folder keeps one file of a name."""
    if num_shards == 1:
      return cls.filename
    return f'predictions-{shard_index:05d}-of-{num_shards:05d}.tar.gz'

  @classmethod
  def open(cls, stack: contextlib.ExitStack, path: str) -> 'Predictions':
    folder = cls._open_folder(stack, path)
    with open(os.path.join(folder, PREDICTIONS_JSON), 'rb') as f:
      try:
        manifest = json.loads(f.read().decode('utf-8'))
      except ValueError as e:
        raise UserError(f'{path}: {PREDICTIONS_JSON} is not JSON ({e})') from None
    _check_manifest(manifest, f'{path}: {PREDICTIONS_JSON}')
    return cls(folder, manifest)

  @classmethod
  def new(cls, stack: contextlib.ExitStack, model: dict, settings: dict, image_set: dict,
          num_shards: int = 1, shard_index: int = 0) -> 'Predictions':
    return cls(cls._new_folder(stack), {
        'model': model, 'settings': settings, 'image_set': image_set, 'num_shards': num_shards,
        'shard_index': shard_index, 'images': {}})

  def overlay_suffix(self) -> str:
    from deeplab import visualize
    return visualize.OVERLAY_SUFFIXES[self.manifest['settings']['overlay_format']]

  def add(self, name: str, source: str, image_sha256: str, labels, overlay) -> None:
    from deeplab import visualize
    labels_path = self._path('labels', name, '.png')
    overlay_path = self._path('overlays', name, self.overlay_suffix())
    visualize.save_label_png(labels, labels_path)
    visualize.write_overlay(overlay, overlay_path, self.manifest['settings']['overlay_format'])
    entry = {'source': source, 'image_sha256': image_sha256,
             'labels_sha256': file_sha256(labels_path), 'overlay_sha256': file_sha256(overlay_path)}
    with self._lock:
      self.manifest['images'][name] = entry

  def files(self, name: str):
    """(relative path, sha256 the manifest records) of image `name`'s outputs."""
    entry = self.manifest['images'][name]
    return ((f'labels/{name}.png', entry['labels_sha256']),
            (f'overlays/{name}{self.overlay_suffix()}', entry['overlay_sha256']))

  def write(self, out_path: str) -> str:
    with open(os.path.join(self.folder, PREDICTIONS_JSON), 'w') as f:
      dump_json(self.manifest, f)
    return super().write(out_path)

  def _path(self, kind: str, name: str, suffix: str) -> str:
    path = os.path.join(self.folder, kind, name + suffix)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


class Evaluation:
  """metrics.json of evaluate (the file, or a folder holding it), read whole: `metrics`."""
  filename = 'metrics.json'
  # Far more than any metrics.json holds (per-class IoU of every class, a sweep's checkpoints).
  max_bytes = 16 << 20

  def __init__(self, path: str, metrics: dict):
    self.path = path
    self.metrics = metrics

  @classmethod
  def open(cls, path: str, flag: str = 'evaluation') -> 'Evaluation':
    if os.path.isdir(path):
      path = os.path.join(path, cls.filename)
    try:
      with open(path, 'rb') as f:
        text = f.read(cls.max_bytes + 1)
      if len(text) > cls.max_bytes:
        raise ValueError(f'larger than {cls.max_bytes >> 20} MiB')
      metrics = json.loads(text)
      if not isinstance(metrics, dict) or 'miou' not in metrics:
        raise ValueError('no "miou"')
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
      raise UserError(f"--{flag}: {path} is not evaluate's metrics.json ({e})") from None
    return cls(path, metrics)

  def card_section(self, flag: str = 'evaluation') -> dict:
    """The model card's "evaluation" (deeplab/lineage.py), checked; metrics.json of an evaluate
    older than lineage (no checkpoint_sha256) cannot say which checkpoint it scored."""
    from deeplab import lineage
    if 'checkpoint_sha256' not in self.metrics:
      raise UserError(f'--{flag}: {self.path} names no checkpoint_sha256; expected the '
                      'metrics.json of an evaluate run that records which checkpoint it scored')
    try:
      return lineage.evaluation_section(self.metrics)
    except UserError as e:
      raise UserError(f'--{flag}: {self.path}: {e}') from None
