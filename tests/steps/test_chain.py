"""End-to-end smoke run of the steps on tiny data, as a user chains them."""
import hashlib
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from deeplab import metrics
from deeplab.inference import FrozenGraphPredictor
from tests.conftest import assert_one_error_line, run_step


@pytest.mark.heavy
def test_whole_chain_on_the_tiny_dataset(tiny_tfrecords, tiny_checkpoint, tmp_path):
  metrics_path = tmp_path / 'metrics.json'
  evaluated = run_step('evaluate', f'--tfrecords={tiny_tfrecords}', f'--checkpoint={tiny_checkpoint}',
                       f'--output={metrics_path}')
  result = json.loads(metrics_path.read_text())
  assert result['num_images'] == 3 and 0.0 <= result['miou'] <= 1.0
  assert evaluated.last('miou') == result['miou']
  assert set(result['per_class_iou']) == {'background', 'red_striped', 'green_spotted',
                                          'blue_checkered'}
  model_path = tmp_path / 'model.tar.gz'
  run_step('export', f'--checkpoint={tiny_checkpoint}', f'--output={model_path}',
           f'--evaluation={metrics_path}')
  with tarfile.open(model_path) as tar:
    assert sorted(tar.getnames()) == [  # the three formats by default
        'frozen_inference_graph.pb', 'model.json', 'model.tflite', 'saved_model', 'saved_model/1',
        'saved_model/1/saved_model.pb', 'saved_model/1/variables']
  assert_lineage_round_trips(tiny_tfrecords, tiny_checkpoint, result, model_path)
  # The gate knows the evaluation of the model from another checkpoint's.
  other = tmp_path / 'other' / 'metrics.json'
  other.parent.mkdir()
  other.write_text(json.dumps(dict(result, checkpoint_sha256='0' * 64)))
  refused = run_step('gate', f'--evaluation={other}', f'--model={model_path}', '--min_miou=0',
                     f'--output={tmp_path / "deployed" / "model.tar.gz"}', check=False)
  assert_one_error_line(refused, f'--evaluation: {other} scored the checkpoint with sha256 000000000000...',
                        f'but --model {model_path} was exported from {result["checkpoint_sha256"][:12]}...')
  run_step('gate', f'--evaluation={metrics_path}', f'--model={model_path}', '--min_miou=0',
           f'--output={tmp_path / "deployed" / "model.tar.gz"}')
  model_path = tmp_path / 'deployed' / 'model.tar.gz'  # what deploys
  images = tmp_path / 'images'
  (images / 'nested').mkdir(parents=True)
  Image.new('RGB', (120, 90), (200, 30, 30)).save(images / 'red.jpg')
  Image.new('RGB', (64, 64), (30, 30, 200)).save(images / 'nested' / 'blue.png')
  predictions_path = tmp_path / 'predictions.tar.gz'
  predicted = run_step('predict', f'--model={model_path}', f'--images={images}',
                       f'--output={predictions_path}')
  assert predicted.last('images') == 2
  with tarfile.open(predictions_path) as tar:
    names = sorted(n for n in tar.getnames() if n.endswith(('.png', '.jpg')))
    assert names == ['labels/nested/blue.png', 'labels/red.png', 'overlays/nested/blue.jpg',
                     'overlays/red.jpg']  # JPEG overlays by default
    label = Image.open(tar.extractfile('labels/red.png'))
    assert label.mode == 'L' and label.size == (120, 90)
  shares = [v for k, v in predicted.metrics[-1].items() if k.startswith('share_')]
  assert abs(sum(shares) - 1.0) < 1e-6


def _single_image_dataset(folder, height, width):
  rng = np.random.RandomState(3)
  (folder / 'images').mkdir(parents=True)
  (folder / 'masks').mkdir()
  (folder / 'splits').mkdir()
  image = rng.randint(0, 255, (height, width, 3)).astype(np.uint8)
  mask = rng.randint(0, 4, (height, width)).astype(np.uint8)
  mask[:, :7] = 255
  Image.fromarray(image).save(folder / 'images' / 'big.png')
  Image.fromarray(mask).save(folder / 'masks' / 'big.png')
  (folder / 'splits' / 'val.txt').write_text('big\n')
  return image, mask


def _card(archive):
  with tarfile.open(archive) as tar:
    return json.load(tar.extractfile('model.json'))


def assert_lineage_round_trips(tfrecords, checkpoint, metrics, model_path):
  """train's lineage, evaluate's figures of that checkpoint and export's card agree, and inspect
  prints that card."""
  import tensorflow as tf
  import deeplab
  trained, exported = _card(checkpoint), _card(model_path)
  with tarfile.open(tfrecords) as tar:
    manifest = json.load(tar.extractfile('dataset.json'))
    manifest_sha256 = hashlib.sha256(tar.extractfile('dataset.json').read()).hexdigest()
  lineage = trained['lineage']
  assert lineage['data'] == {'dataset': manifest['name'], 'split': 'train', 'manifest_sha256': manifest_sha256,
                             'shards': [{'file': s['file'], 'sha256': s['sha256']}
                                        for s in manifest['splits']['train']['shards']]}
  assert lineage['initial_checkpoint'] is None  # trained from scratch
  assert lineage['code']['package_version'] == deeplab.__version__
  assert len(lineage['code']['git_commit']) == 40 and lineage['code']['dirty'] in (True, False)
  assert lineage['libraries']['tensorflow'] == tf.__version__
  assert trained['training_metrics']['global_step'] == trained['training']['global_step'] == 3
  assert trained['training_metrics']['step'] == 3 and trained['training_metrics']['loss'] > 0
  # The checkpoint evaluate scored is the one exported: its card carries those figures.
  assert metrics['data']['split'] == 'val' and metrics['data']['shards'][0]['file'].startswith('val-')
  assert exported['evaluation'] == {key: metrics[key] for key in (
      'miou', 'pixel_accuracy', 'num_images', 'checkpoint_sha256', 'data')}
  assert exported['lineage'] == lineage and exported['training_metrics'] == trained['training_metrics']
  shown = run_step('inspect', model_path, '--json').stdout
  assert json.loads(shown) == dict(exported, kind='model')


@pytest.mark.heavy
def test_exported_graph_agrees_with_evaluate_on_a_333x500_image(tiny_checkpoint, tmp_path):
  image, mask = _single_image_dataset(tmp_path / 'raw', 333, 500)
  run_step('build_data', '--dataset=folder', f'--raw_data={tmp_path / "raw"}', '--num_classes=4',
           '--num_shards=1', '--num_workers=1', f'--output={tmp_path / "val.tar.gz"}')
  run_step('evaluate', f'--tfrecords={tmp_path / "val.tar.gz"}', f'--checkpoint={tiny_checkpoint}',
           f'--output={tmp_path / "metrics.json"}')
  run_step('export', f'--checkpoint={tiny_checkpoint}', f'--output={tmp_path / "model.tar.gz"}')
  with tarfile.open(tmp_path / 'model.tar.gz') as tar:
    tar.extractall(tmp_path / 'model')
  frozen = FrozenGraphPredictor(str(tmp_path / 'model' / 'frozen_inference_graph.pb'))
  predictions, probabilities = frozen.session.run(
      ['SemanticPredictions:0', 'SemanticProbabilities:0'], {'ImageTensor:0': image[None]})
  frozen.close()
  assert predictions.shape == (1, 333, 500) and predictions.dtype == np.int32
  assert probabilities.shape == (1, 333, 500, 4) and probabilities.dtype == np.float32
  evaluated = json.loads((tmp_path / 'confusion_matrix.json').read_text())['matrix']
  exported = metrics.confusion_matrix(mask, predictions[0], 4, 255)
  assert exported.tolist() == evaluated


@pytest.mark.heavy
def test_evaluate_rejects_labels_out_of_range_in_original_deeplab_tfrecords(tmp_path):
  from tests.conftest import require_fixtures, TINY_TRAIN_FLAGS
  shard = require_fixtures('deeplab_testing', 'val-00000-of-00001.tfrecord')
  # A 21-class checkpoint; training ignores labels that are not classes, evaluation must not.
  run_step('train', f'--tfrecords={shard.parent}', '--dataset=pascal_voc_seg', '--train_split=val',
           '--training_number_of_steps=1', f'--output={tmp_path / "ckpt.tar.gz"}',
           *TINY_TRAIN_FLAGS, cwd=tmp_path)
  result = run_step('evaluate', f'--tfrecords={shard.parent}', '--dataset=pascal_voc_seg',
                    f'--checkpoint={tmp_path / "ckpt.tar.gz"}', f'--output={tmp_path / "m.json"}',
                    '--allow_train_split', check=False)  # the shards it was trained on
  assert result.returncode == 1
  assert "example '2007_000033': label out of range" in result.error_line()
  assert not (tmp_path / 'm.json').exists()


@pytest.mark.heavy
def test_evaluate_scores_every_checkpoint_of_a_sweep(tiny_tfrecords, tiny_checkpoint, tmp_path):
  # Valohai hands evaluate the checkpoint.tar.gz of each execution of a task in one input folder.
  inputs = tmp_path / 'inputs'
  for trial in ('trial-a', 'trial-b'):
    (inputs / trial).mkdir(parents=True)
    (inputs / trial / 'checkpoint.tar.gz').write_bytes(tiny_checkpoint.read_bytes())
  result = run_step('evaluate', f'--tfrecords={tiny_tfrecords}', f'--checkpoint={inputs}',
                    f'--output={tmp_path / "metrics.json"}')
  assert [m['checkpoint_index'] for m in result.metrics if 'checkpoint_index' in m] == [0, 1]
  saved = json.loads((tmp_path / 'metrics.json').read_text())
  assert [c['checkpoint'] for c in saved['checkpoints']] == ['trial-a/checkpoint.tar.gz',
                                                             'trial-b/checkpoint.tar.gz']
  assert saved['miou'] == max(c['miou'] for c in saved['checkpoints'])
  assert saved['checkpoint'] == 'trial-a/checkpoint.tar.gz'
  # The top level is the best checkpoint's, its digest included: export accepts it for that one.
  assert saved['checkpoint_sha256'] == saved['checkpoints'][0]['checkpoint_sha256']
  assert result.last('miou') == saved['miou']
