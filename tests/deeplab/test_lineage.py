"""deeplab/lineage.py: the facts a model.json records, where they come from, and cards read back."""
import copy
import hashlib
import json
import os
import subprocess

import pytest

import deeplab
from deeplab import lineage
from deeplab.checkpoint import ModelCard
from deeplab.config import ModelConfig
from deeplab.datasets.manifest import DatasetInfo, Manifest, SplitInfo
from deeplab.errors import UserError

DIGEST = 'ab' * 32
COMMIT = '0123456789abcdef0123456789abcdef01234567'


def _git(folder, *args):
  subprocess.run(['git', '-C', str(folder), '-c', 'user.name=t', '-c', 'user.email=t@t', *args],
                 check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path):
  if subprocess.run(['git', '--version'], capture_output=True).returncode != 0:
    pytest.skip('git is not installed')
  _git(tmp_path, 'init', '-q')
  (tmp_path / 'code.py').write_text('x = 1\n')
  _git(tmp_path, 'add', 'code.py')
  _git(tmp_path, 'commit', '-qm', 'first')
  return tmp_path


def test_a_clean_checkout_records_its_commit(checkout):
  head = subprocess.run(['git', '-C', str(checkout), 'rev-parse', 'HEAD'], capture_output=True,
                        text=True, check=True).stdout.strip()
  assert lineage.code_version(str(checkout), environ={}) == {
      'package_version': deeplab.__version__, 'git_commit': head, 'dirty': False}


def test_a_changed_tracked_file_makes_the_tree_dirty_an_untracked_one_does_not(checkout):
  (checkout / 'notes.txt').write_text('untracked')
  assert lineage.code_version(str(checkout), environ={})['dirty'] is False
  (checkout / 'code.py').write_text('x = 2\n')
  assert lineage.code_version(str(checkout), environ={})['dirty'] is True


def test_without_git_the_commit_the_image_recorded_else_the_package_version(tmp_path, monkeypatch):
  # A checkout, but no git program: as in an image that copied a .git by mistake.
  (tmp_path / '.git').mkdir()
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
  assert lineage.code_version(str(tmp_path), environ={}) == {
      'package_version': deeplab.__version__, 'git_commit': None, 'dirty': None}
  recorded = {lineage.SOURCE_COMMIT_ENV: f'{COMMIT}-dirty'}
  assert lineage.code_version(str(tmp_path), environ=recorded) == {
      'package_version': deeplab.__version__, 'git_commit': COMMIT, 'dirty': True}
  with pytest.raises(UserError, match=f'{lineage.SOURCE_COMMIT_ENV}=.*expected a git commit'):
    lineage.code_version(str(tmp_path), environ={lineage.SOURCE_COMMIT_ENV: 'v1.0; rm -rf /'})


def test_a_folder_that_is_no_checkout_has_no_commit(tmp_path):
  assert lineage.code_version(str(tmp_path), environ={})['git_commit'] is None


def test_the_checkpoint_digest_covers_index_and_data_files_in_order_not_the_prefix_name(tmp_path):
  for prefix in ('a/model.ckpt-5', 'b/model.ckpt'):
    os.makedirs(tmp_path / os.path.dirname(prefix))
    (tmp_path / f'{prefix}.index').write_bytes(b'index')
    (tmp_path / f'{prefix}.data-00001-of-00002').write_bytes(b'second')
    (tmp_path / f'{prefix}.data-00000-of-00002').write_bytes(b'first')
  first, second = (lineage.checkpoint_sha256(str(tmp_path / p)) for p in ('a/model.ckpt-5', 'b/model.ckpt'))
  assert first == second and len(first) == 64
  # Bytes moved from one file to the next change the digest (each file's size is part of it).
  (tmp_path / 'b/model.ckpt.data-00000-of-00002').write_bytes(b'firsts')
  (tmp_path / 'b/model.ckpt.data-00001-of-00002').write_bytes(b'econd')
  assert lineage.checkpoint_sha256(str(tmp_path / 'b/model.ckpt')) != first


def test_the_fingerprint_reuses_dataset_json_and_hashes_shards_without_a_recorded_digest(tmp_path):
  (tmp_path / 'train-00000-of-00002.tfrecord').write_bytes(b'one')
  (tmp_path / 'train-00001-of-00002.tfrecord').write_bytes(b'two')
  manifest = Manifest(name='d', num_classes=2, ignore_label=255, class_names=['a', 'b'],
                      colormap=[[0, 0, 0], [1, 1, 1]], folder=str(tmp_path), splits={'train': SplitInfo(
                          2, [{'file': 'train-00000-of-00002.tfrecord', 'sha256': DIGEST},
                              {'file': 'train-00001-of-00002.tfrecord'}])})
  fingerprint = lineage.data_fingerprint(manifest, 'train')
  assert fingerprint == {'dataset': 'd', 'split': 'train', 'manifest_sha256': None, 'shards': [
      {'file': 'train-00000-of-00002.tfrecord', 'sha256': DIGEST},  # as recorded: not hashed again
      {'file': 'train-00001-of-00002.tfrecord', 'sha256': hashlib.sha256(b'two').hexdigest()}]}
  (tmp_path / 'dataset.json').write_text('{}')
  assert lineage.data_fingerprint(manifest, 'train')['manifest_sha256'] == hashlib.sha256(b'{}').hexdigest()


def test_shared_shards_are_found_by_content_and_empty_shards_never_count():
  empty = hashlib.sha256(b'').hexdigest()
  trained = {'shards': [{'file': 'train-0', 'sha256': DIGEST}, {'file': 'train-1', 'sha256': empty}]}
  evaluated = {'shards': [{'file': 'val-0', 'sha256': DIGEST}, {'file': 'val-1', 'sha256': empty},
                          {'file': 'val-2', 'sha256': 'cd' * 32}]}
  assert lineage.shared_shards(trained, evaluated) == ['val-0']


def _card():
  """A card with every section, as train and export write them."""
  fingerprint = {'dataset': 'd', 'split': 'train', 'manifest_sha256': DIGEST,
                 'shards': [{'file': 'train-00000-of-00001.tfrecord', 'sha256': DIGEST}]}
  return {
      'format_version': 1,
      'model': ModelConfig(num_classes=2).to_json(),
      'dataset': DatasetInfo('d', 2, 255, ['a', 'b'], [[0, 0, 0], [1, 1, 1]]).to_json(),
      'lineage': {'data': fingerprint, 'initial_checkpoint': {'input': 'tf_initial_checkpoint',
                                                              'sha256': DIGEST},
                  'code': {'package_version': '0.1.0', 'git_commit': COMMIT, 'dirty': False},
                  'libraries': {'python': '3.11.7', 'tensorflow': '2.21.0', 'tf_slim': None},
                  'created_at': '2026-12-07T14:00:00Z'},
      'training_metrics': {'loss': 0.5, 'global_step': 10},
      'evaluation': {'miou': 0.5, 'pixel_accuracy': 0.9, 'num_images': 3, 'checkpoint_sha256': DIGEST,
                     'data': dict(fingerprint, split='val')},
  }


def test_a_card_with_every_section_round_trips():
  data = _card()
  assert ModelCard.from_json(copy.deepcopy(data)).to_json() == data


def test_an_old_card_without_the_sections_loads():
  data = _card()
  for name in ('lineage', 'training_metrics', 'evaluation'):
    del data[name]
  card = ModelCard.from_json(data)
  assert (card.lineage, card.training_metrics, card.evaluation) == (None, None, None)
  assert card.to_json() == data


@pytest.mark.parametrize('path, value, message', [
    (('lineage', 'data', 'shards', 0, 'sha256'), 'AB' * 32, '"lineage.data.shards[0].sha256"'),
    (('lineage', 'data', 'shards', 0, 'sha256'), DIGEST + '00', 'expected a sha256'),
    (('lineage', 'initial_checkpoint', 'sha256'), 5, '"lineage.initial_checkpoint.sha256"'),
    (('lineage', 'code', 'git_commit'), 'HEAD', '"lineage.code.git_commit"'),
    (('lineage', 'code', 'dirty'), 'yes', 'true, false or null'),
    (('lineage', 'libraries', 'tensorflow'), 'x' * 100_000, "'xxxx"),
    (('lineage', 'libraries', 'python'), 'a\nb', '"lineage.libraries.python"'),
    (('lineage', 'created_at'), 'yesterday', 'a UTC time'),
    (('lineage', 'data', 'shards'), 'all', 'a list of at most'),
    (('lineage', 'data'), [], '"lineage.data": []; expected an object'),
    (('training_metrics', 'loss'), 'low', '"training_metrics.loss"'),
    (('training_metrics', 'loss'), True, '"training_metrics.loss"'),
    (('evaluation', 'miou'), 1.5, '"evaluation.miou": 1.5; expected a finite number in [0, 1]'),
    (('evaluation', 'num_images'), -1, '"evaluation.num_images"'),
    (('evaluation', 'checkpoint_sha256'), None, '"evaluation.checkpoint_sha256"'),
])
def test_a_hostile_card_is_one_error_naming_the_field(tmp_path, path, value, message):
  data = _card()
  parent = data
  for key in path[:-1]:
    parent = parent[key]
  parent[path[-1]] = value
  (tmp_path / 'model.json').write_text(json.dumps(data))
  with pytest.raises(UserError) as raised:
    ModelCard.read(str(tmp_path))
  line = str(raised.value)
  assert message in line and str(tmp_path / 'model.json') in line
  assert '\n' not in line and len(line) < 400


def test_a_missing_field_and_too_many_metrics_are_named():
  data = _card()
  del data['lineage']['code']['git_commit']
  with pytest.raises(UserError, match='"lineage.code": no "git_commit"'):
    ModelCard.from_json(data)
  data = _card()
  data['training_metrics'] = {f'm{i}': 0 for i in range(lineage.MAX_METRICS + 1)}
  with pytest.raises(UserError, match='"training_metrics"'):
    ModelCard.from_json(data)
