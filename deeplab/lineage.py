"""Lineage: what made a checkpoint or a model, recorded in its model.json, each fact computed here once.

    "lineage": {
      "data": {"dataset": "folder", "split": "train",          the training data's fingerprint
               "manifest_sha256": "<64 hex>" | null,        dataset.json (null: original shards)
               "shards": [{"file": "train-00000-of-00001.tfrecord", "sha256": "<64 hex>"}]},
      "initial_checkpoint": {"input": "tf_initial_checkpoint" | "checkpoint",
                             "sha256": "<64 hex>"} | null,   null: trained from scratch
      "code": {"package_version": "0.1.0", "git_commit": "<40 hex>" | null, "dirty": bool | null},
      "libraries": {"python": "3.11.9", "tensorflow": "2.21.0", "tf_slim": "1.1.0"},
      "created_at": "2026-12-07T14:00:00Z"
    }

evaluate's metrics.json carries the same `data` for the split it evaluated and `checkpoint_sha256`
(`checkpoint_sha256` below), and export copies both into the model's "evaluation". Read back from a
file, every field is checked as a flag is (`check_lineage`, `check_training_metrics`,
`check_evaluation`): a hostile card is one UserError naming the field.
"""
from __future__ import annotations

import datetime
import glob
import hashlib
import importlib.metadata
import math
import os
import platform
import re
import subprocess
from typing import Optional

import deeplab
from deeplab.datasets.manifest import MANIFEST_NAME, _brief
from deeplab.errors import UserError

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where a tree without git learns its commit: the image build records it (pipelines/image.sh), as
# `<40 hex>` or `<40 hex>-dirty`.
SOURCE_COMMIT_ENV = 'DEEPLAB_SOURCE_COMMIT'
_SHA256 = re.compile(r'[0-9a-f]{64}')
_GIT_COMMIT = re.compile(r'[0-9a-f]{40}(?:[0-9a-f]{24})?')  # SHA-1 or SHA-256 repositories
_RECORDED_COMMIT = re.compile(rf'(?P<commit>{_GIT_COMMIT.pattern})(?P<dirty>-dirty)?')
_UTC_TIME = re.compile(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ')
_METRIC_NAME = re.compile(r'[a-z][a-z0-9_]{0,63}')
# Bounds of what a card read back may hold: names and versions are short, a split has few shards.
MAX_TEXT = 256
MAX_SHARDS = 100_000
MAX_METRICS = 64
# An empty shard holds no image: two splits sharing one say nothing about shared data.
EMPTY_SHA256 = hashlib.sha256(b'').hexdigest()
_CHUNK = 1 << 20
_GIT_TIMEOUT_SECONDS = 30
# The distributions TensorFlow comes as (the image installs tensorflow-cpu or tensorflow[and-cuda]).
_TENSORFLOW_DISTRIBUTIONS = ('tensorflow', 'tensorflow-cpu', 'tensorflow-intel', 'tensorflow-macos')


def file_sha256(path: str, digest=None) -> str:
  """The sha256 of a file's bytes (or, given `digest`, those bytes added to it)."""
  digest = digest or hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def data_fingerprint(manifest, split: str) -> dict:
  """The fingerprint of `split` of the TFRecords `manifest` describes: dataset.json's sha256 and
  each shard's, as dataset.json records them (build_data hashed them as it wrote them); shards
  without a recorded sha256 (original DeepLab shards, which have no dataset.json) are hashed here."""
  name = manifest.resolve_split(split)
  manifest_path = os.path.join(manifest.folder, MANIFEST_NAME)
  shards = []
  for shard, path in zip(manifest.splits[name].shards, manifest.shard_paths(name)):
    shards.append({'file': shard['file'], 'sha256': shard.get('sha256') or file_sha256(path)})
  return {'dataset': manifest.name, 'split': name, 'shards': shards,
          'manifest_sha256': file_sha256(manifest_path) if os.path.isfile(manifest_path) else None}


def checkpoint_sha256(prefix: str) -> str:
  """The digest of TF checkpoint `prefix`: sha256 over its `.index` file, then its `.data-*` files
  in name order, each as its suffix, its size and its bytes (so the prefix's own name, which
  differs between a model zoo's file and train's, does not count)."""
  digest = hashlib.sha256()
  for path in [prefix + '.index'] + sorted(glob.glob(glob.escape(prefix) + '.data-*')):
    digest.update(f'{path[len(prefix):]}\0{os.path.getsize(path)}\0'.encode())
    file_sha256(path, digest)
  return digest.hexdigest()


def _git(root: str, *args: str) -> Optional[str]:
  """The output of `git -C root args...`, or None where git is absent or fails."""
  try:
    done = subprocess.run(['git', '-C', root, *args], capture_output=True, text=True,
                          timeout=_GIT_TIMEOUT_SECONDS)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return done.stdout if done.returncode == 0 else None


def code_version(root: str = PROJECT_ROOT, environ=os.environ) -> dict:
  """The package version, and the commit of the code: `git rev-parse HEAD` of `root` when it is a
  git checkout (dirty when tracked files differ from it), else the commit the image build recorded
  in SOURCE_COMMIT_ENV; neither: null."""
  code = {'package_version': deeplab.__version__, 'git_commit': None, 'dirty': None}
  head = os.path.exists(os.path.join(root, '.git')) and _git(root, 'rev-parse', 'HEAD')
  status = head and _git(root, 'status', '--porcelain', '--untracked-files=no')
  if head and status is not None:
    code.update(git_commit=head.strip(), dirty=bool(status.strip()))
  elif environ.get(SOURCE_COMMIT_ENV, '').strip():
    recorded = environ[SOURCE_COMMIT_ENV].strip()
    match = _RECORDED_COMMIT.fullmatch(recorded)
    if not match:
      raise UserError(f'{SOURCE_COMMIT_ENV}={recorded[:80]!r}: expected a git commit (40 hex '
                      'digits), optionally followed by -dirty')
    code.update(git_commit=match['commit'], dirty=bool(match['dirty']))
  return code


def _distribution_version(*names: str) -> Optional[str]:
  for name in names:
    try:
      return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return None


def library_versions() -> dict:
  return {'python': platform.python_version(),
          'tensorflow': _distribution_version(*_TENSORFLOW_DISTRIBUTIONS),
          'tf_slim': _distribution_version('tf-slim', 'tf_slim')}


def lineage(manifest, split: str, initial_checkpoint: Optional[dict]) -> dict:
  """model.json's "lineage" of a training run on `split` of `manifest`; `initial_checkpoint` is
  {"input": its flag, "sha256": `checkpoint_sha256`} of the weights it started from, or None."""
  return {'data': data_fingerprint(manifest, split), 'initial_checkpoint': initial_checkpoint,
          'code': code_version(), 'libraries': library_versions(),
          'created_at': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}


def shared_shards(trained: dict, evaluated: dict) -> list:
  """The shard files of fingerprint `evaluated` whose bytes (sha256) are a shard of `trained` too."""
  seen = {shard['sha256'] for shard in trained['shards']} - {EMPTY_SHA256}
  return [shard['file'] for shard in evaluated['shards'] if shard['sha256'] in seen]


# Reading back: each check returns the value it was given, or raises a UserError naming `where`.

def _fail(where: str, value, expected: str):
  raise UserError(f'"{where}": {_brief(value)}; expected {expected}')


def _text(value, where: str, pattern=None, optional=False, expected='a short string'):
  if value is None and optional:
    return None
  if (not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT or not value.isprintable()
      or (pattern is not None and not pattern.fullmatch(value))):
    _fail(where, value, expected + (' or null' if optional else ''))
  return value


def _digest(value, where: str, optional=False):
  return _text(value, where, _SHA256, optional, 'a sha256 (64 lowercase hex digits)')


def _mapping(value, where: str, required=()) -> dict:
  if not isinstance(value, dict):
    _fail(where, value, 'an object')
  missing = [key for key in required if key not in value]
  if missing:
    raise UserError(f'"{where}": no "{missing[0]}"; expected {", ".join(required)}')
  return value


def _number(value, where: str, low=None, high=None, integer=False, optional=False):
  if value is None and optional:
    return None
  kinds = (int,) if integer else (int, float)
  if (isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value)
      or (low is not None and value < low) or (high is not None and value > high)):
    bounds = f' in [{low}, {high}]' if high is not None else f' >= {low}' if low is not None else ''
    _fail(where, value, f'{"an integer" if integer else "a finite number"}{bounds}'
          + (' or null' if optional else ''))
  return value


def check_fingerprint(value, where: str) -> dict:
  data = _mapping(value, where, ('dataset', 'split', 'shards', 'manifest_sha256'))
  if not isinstance(data['shards'], list) or len(data['shards']) > MAX_SHARDS:
    _fail(f'{where}.shards', data['shards'], f'a list of at most {MAX_SHARDS} shards')
  shards = []
  for index, shard in enumerate(data['shards']):
    shard = _mapping(shard, f'{where}.shards[{index}]', ('file', 'sha256'))
    shards.append({'file': _text(shard['file'], f'{where}.shards[{index}].file'),
                   'sha256': _digest(shard['sha256'], f'{where}.shards[{index}].sha256')})
  return {'dataset': _text(data['dataset'], f'{where}.dataset'),
          'split': _text(data['split'], f'{where}.split'), 'shards': shards,
          'manifest_sha256': _digest(data['manifest_sha256'], f'{where}.manifest_sha256', True)}


def check_lineage(value) -> dict:
  data = _mapping(value, 'lineage', ('data', 'initial_checkpoint', 'code', 'libraries', 'created_at'))
  initial = data['initial_checkpoint']
  if initial is not None:
    initial = _mapping(initial, 'lineage.initial_checkpoint', ('input', 'sha256'))
    initial = {'input': _text(initial['input'], 'lineage.initial_checkpoint.input'),
               'sha256': _digest(initial['sha256'], 'lineage.initial_checkpoint.sha256')}
  code = _mapping(data['code'], 'lineage.code', ('package_version', 'git_commit', 'dirty'))
  if code['dirty'] not in (None, True, False):
    _fail('lineage.code.dirty', code['dirty'], 'true, false or null')
  libraries = _mapping(data['libraries'], 'lineage.libraries', ('python', 'tensorflow', 'tf_slim'))
  return {
      'data': check_fingerprint(data['data'], 'lineage.data'),
      'initial_checkpoint': initial,
      'code': {'package_version': _text(code['package_version'], 'lineage.code.package_version'),
               'git_commit': _text(code['git_commit'], 'lineage.code.git_commit', _GIT_COMMIT, True,
                                   'a git commit (40 hex digits)'),
               'dirty': code['dirty']},
      'libraries': {name: _text(libraries[name], f'lineage.libraries.{name}', optional=True)
                    for name in ('python', 'tensorflow', 'tf_slim')},
      'created_at': _text(data['created_at'], 'lineage.created_at', _UTC_TIME,
                          expected='a UTC time YYYY-MM-DDTHH:MM:SSZ'),
  }


def check_training_metrics(value) -> dict:
  """{metric name: number} of a training run's last metric line, as train recorded it."""
  data = _mapping(value, 'training_metrics')
  if len(data) > MAX_METRICS:
    _fail('training_metrics', f'{len(data)} metrics', f'at most {MAX_METRICS}')
  for name, number in data.items():
    _text(name, 'training_metrics', _METRIC_NAME, expected='metric names')
    _number(number, f'training_metrics.{name}')
  return dict(data)


def evaluation_section(metrics: dict) -> dict:
  """The model card's "evaluation" from evaluate's metrics.json, checked as a card's is."""
  return check_evaluation({key: metrics.get(key) for key in
                           ('miou', 'pixel_accuracy', 'num_images', 'checkpoint_sha256', 'data')})


def check_evaluation(value) -> dict:
  data = _mapping(value, 'evaluation',
                  ('miou', 'pixel_accuracy', 'num_images', 'checkpoint_sha256', 'data'))
  return {'miou': _number(data['miou'], 'evaluation.miou', 0, 1, optional=True),
          'pixel_accuracy': _number(data['pixel_accuracy'], 'evaluation.pixel_accuracy', 0, 1,
                                    optional=True),
          'num_images': _number(data['num_images'], 'evaluation.num_images', 0, integer=True),
          'checkpoint_sha256': _digest(data['checkpoint_sha256'], 'evaluation.checkpoint_sha256'),
          'data': check_fingerprint(data['data'], 'evaluation.data')}
