"""steps.inspect on every kind of artifact, and the lineage steps record beyond the tiny chain
(tests/steps/test_chain.py follows one model from train to inspect): the initial weights' digest,
export refusing the figures of another checkpoint."""
import json
import os
import tarfile

import pytest
from PIL import Image

from deeplab.lineage import checkpoint_sha256
from tests.conftest import TINY_TRAIN_FLAGS, assert_one_error_line, run_step


@pytest.fixture(scope='module')
def metrics_path(tiny_tfrecords, tiny_checkpoint, tmp_path_factory):
  path = tmp_path_factory.mktemp('inspect_metrics') / 'metrics.json'
  run_step('evaluate', f'--tfrecords={tiny_tfrecords}', f'--checkpoint={tiny_checkpoint}',
           f'--output={path}', '--report_images=0')
  return path


def _inspect_json(path):
  return json.loads(run_step('inspect', path, '--json').stdout)


def _model_json(archive):
  with tarfile.open(archive) as tar:
    return json.load(tar.extractfile('model.json'))


def test_the_card_of_a_checkpoint_and_of_a_model_is_their_model_json(tiny_checkpoint, tiny_model):
  for archive, kind in ((tiny_checkpoint, 'checkpoint'), (tiny_model, 'model')):
    assert _inspect_json(archive) == dict(_model_json(archive), kind=kind)
  text = run_step('inspect', tiny_checkpoint).stdout
  assert text.startswith('kind: checkpoint\n')
  assert '\nlineage:\n  data:\n    dataset: folder\n    split: train\n' in text
  assert '  initial_checkpoint: null\n' in text


def test_the_card_of_tfrecords_fingerprints_each_split(tiny_tfrecords):
  # The step's one run as a process of its own: no TensorFlow import is needed for it.
  card = json.loads(run_step('inspect', tiny_tfrecords, '--json', isolated=True).stdout)
  with tarfile.open(tiny_tfrecords) as tar:
    manifest = json.load(tar.extractfile('dataset.json'))
  assert card['kind'] == 'tfrecords' and sorted(card['splits']) == ['train', 'val']
  for split, fingerprint in card['splits'].items():
    assert fingerprint['num_examples'] == manifest['splits'][split]['num_examples']
    assert [s['sha256'] for s in fingerprint['shards']] == [
        s['sha256'] for s in manifest['splits'][split]['shards']]


def test_the_card_of_an_evaluation_names_the_checkpoint_it_scored(metrics_path, tiny_checkpoint, tmp_path):
  card = _inspect_json(metrics_path)
  with tarfile.open(tiny_checkpoint) as tar:
    tar.extractall(tmp_path, filter='data')
  assert card['kind'] == 'evaluation' and card['data']['split'] == 'val'
  assert card['checkpoint_sha256'] == checkpoint_sha256(str(tmp_path / 'model.ckpt-3'))
  assert _inspect_json(metrics_path.parent) == card  # the folder evaluate wrote it in


def test_the_card_of_predictions_is_its_manifest(tiny_model, tmp_path):
  (tmp_path / 'images').mkdir()
  Image.new('RGB', (40, 30), (200, 30, 30)).save(tmp_path / 'images' / 'red.png')
  run_step('predict', f'--model={tiny_model}', f'--images={tmp_path / "images"}',
           f'--output={tmp_path / "predictions.tar.gz"}')
  card = _inspect_json(tmp_path / 'predictions.tar.gz')
  assert card['kind'] == 'predictions' and list(card['images']) == ['red']
  assert (card['num_shards'], card['shard_index'], card['image_set']['count']) == (1, 0, 1)


@pytest.mark.parametrize('content, expected', [
    (b'not an archive, not JSON', "is not evaluate's metrics.json"),
    (json.dumps({'loss': 1}).encode(), 'no "miou"'),
    (json.dumps({'miou': 0.5, 'pixel_accuracy': 0.5, 'num_images': 1, 'data': {},
                 'checkpoint_sha256': 'x' * 64}).encode(), '"evaluation.checkpoint_sha256"'),
])
def test_inspect_of_a_file_that_is_no_artifact_is_one_error_line(tmp_path, content, expected):
  (tmp_path / 'thing').write_bytes(content)
  result = run_step('inspect', tmp_path / 'thing', check=False)
  assert_one_error_line(result, str(tmp_path / 'thing'), expected)
  assert result.stdout == '' and os.listdir(tmp_path) == ['thing']  # nothing written


def test_inspect_of_a_folder_or_archive_of_something_else_is_one_error_line(tmp_path):
  (tmp_path / 'folder').mkdir()
  (tmp_path / 'folder' / 'notes.txt').write_text('hello')
  with tarfile.open(tmp_path / 'other.tar.gz', 'w:gz') as tar:
    tar.add(tmp_path / 'folder', arcname='folder')
  for path in (tmp_path / 'folder', tmp_path / 'other.tar.gz'):
    assert_one_error_line(run_step('inspect', path, check=False), str(path),
                          'holds no artifact of this project', 'expected checkpoint.tar.gz')
  assert_one_error_line(run_step('inspect', tmp_path / 'absent', check=False), 'does not exist')
  assert sorted(os.listdir(tmp_path)) == ['folder', 'other.tar.gz']


def test_inspect_needs_one_artifact():
  result = run_step('inspect', check=False)
  assert result.returncode == 2 and result.stderr.startswith('error: ') and 'ARTIFACT' in result.stderr


def test_export_records_an_evaluation_only_of_the_checkpoint_it_exports(metrics_path, tiny_checkpoint,
                                                                         tmp_path):
  metrics = json.loads(metrics_path.read_text())
  other = tmp_path / 'other' / 'metrics.json'
  other.parent.mkdir()
  other.write_text(json.dumps(dict(metrics, checkpoint_sha256='0' * 64)))
  old = tmp_path / 'old.json'  # an evaluate older than lineage: it cannot say what it scored
  old.write_text(json.dumps({k: v for k, v in metrics.items() if k != 'checkpoint_sha256'}))
  out = tmp_path / 'out' / 'model.tar.gz'
  for evaluation, expected in ((other, 'evaluated a different checkpoint'), (old, 'names no checkpoint_sha256')):
    result = run_step('export', f'--checkpoint={tiny_checkpoint}', f'--evaluation={evaluation}',
                      f'--output={out}', check=False)
    assert_one_error_line(result, '--evaluation', str(evaluation), expected)
    assert not out.parent.exists()


def test_train_records_the_digest_of_the_weights_it_started_from(tiny_tfrecords, tiny_checkpoint,
                                                                tmp_path):
  out = tmp_path / 'packaged.tar.gz'
  run_step('train', f'--tfrecords={tiny_tfrecords}', f'--tf_initial_checkpoint={tiny_checkpoint}',
           '--training_number_of_steps=0', f'--output={out}', *TINY_TRAIN_FLAGS, cwd=tmp_path)
  with tarfile.open(tiny_checkpoint) as tar:
    tar.extractall(tmp_path / 'initial', filter='data')
  card = _model_json(out)
  assert card['lineage']['initial_checkpoint'] == {
      'input': 'tf_initial_checkpoint', 'sha256': checkpoint_sha256(str(tmp_path / 'initial' / 'model.ckpt-3'))}
  assert card['training_metrics']['global_step'] == 0 and 'loss' not in card['training_metrics']
