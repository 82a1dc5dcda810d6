"""Training: resuming after SIGTERM / SIGKILL, model-zoo checkpoints, bad flags."""
import glob
import json
import os
import signal
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from deeplab.config import MODEL_VARIANTS
from tests.conftest import REPO, TINY_TRAIN_FLAGS, require_fixtures, run_step


def _start_training(tfrecords, folder, total):
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2')
  command = [sys.executable, '-m', 'steps.train', f'--tfrecords={tfrecords}',
             f'--output={folder / "checkpoint.tar.gz"}', f'--training_number_of_steps={total}',
             '--save_interval_steps=5', *TINY_TRAIN_FLAGS]
  return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True), command


def _wait_for_step(process, step):
  """Reads metric lines until `step` is logged."""
  for line in process.stdout:
    if line.startswith('{') and json.loads(line).get('step', -1) >= step:
      return
  raise AssertionError(f'training ended before step {step}: {process.stderr.read()[-2000:]}')


def _resume(command, folder):
  completed = subprocess.run(command, cwd=folder, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2'))
  assert completed.returncode == 0, completed.stderr[-2000:]
  lines = [json.loads(l) for l in completed.stdout.splitlines() if l.startswith('{')]
  return lines


# Killed at step 7 (checkpoints every 5 steps), resumed to this total (far enough that training
# cannot reach it before the signal lands on a loaded machine).
TOTAL = 20


@pytest.mark.process
@pytest.mark.parametrize('kill_signal', [signal.SIGTERM, signal.SIGKILL], ids=['SIGTERM', 'SIGKILL'])
def test_killed_training_resumes_to_the_requested_total(tiny_tfrecords, tmp_path, kill_signal):
  process, command = _start_training(tiny_tfrecords, tmp_path, total=TOTAL)
  _wait_for_step(process, 7)  # past the step-5 checkpoint
  process.send_signal(kill_signal)
  process.wait(timeout=120)
  stderr = process.stderr.read()
  work_dirs = glob.glob(str(tmp_path / '.deeplab-train' / '*'))
  assert len(work_dirs) == 1
  saved_steps = sorted(int(p.rsplit('-', 1)[1].split('.')[0])
                       for p in glob.glob(os.path.join(work_dirs[0], 'model.ckpt-*.index')))
  if kill_signal == signal.SIGTERM:
    assert process.returncode == 128 + signal.SIGTERM
    assert 'error: training stopped at step' in stderr and 'run the same command again' in stderr
    stopped_at = int(stderr.split('training stopped at step ')[1].split(';')[0])
    assert saved_steps[-1] == stopped_at >= 7  # saved on the way out, not just at step 5
  else:
    assert process.returncode == -signal.SIGKILL
    assert saved_steps and saved_steps[-1] % 5 == 0
  assert not (tmp_path / 'checkpoint.tar.gz').exists()

  lines = _resume(command, tmp_path)
  assert lines[0] == {'resumed_from_step': saved_steps[-1]}
  assert [l['step'] for l in lines if 'step' in l][0] == saved_steps[-1] + 1
  assert lines[-1]['global_step'] == TOTAL
  with tarfile.open(tmp_path / 'checkpoint.tar.gz') as tar:
    model_json = json.load(tar.extractfile('model.json'))
    assert model_json['training']['global_step'] == TOTAL
    assert f'model.ckpt-{TOTAL}.index' in tar.getnames()
  assert not work_dirs[0] in glob.glob(str(tmp_path / '.deeplab-train' / '*'))  # cleaned up


@pytest.mark.heavy
def test_model_zoo_checkpoint_loads_completely_packages_and_exports(tmp_path, tiny_tfrecords):
  """Google's trained DeepLabv3 MobileNetV2 (from the TFLite fixture) as a published-name checkpoint."""
  from tests.reference_model import write_reference_checkpoint
  tflite = require_fixtures('reference_models', 'tflite_support', 'deeplabv3.tflite')
  prefix = tmp_path / 'zoo' / 'model.ckpt'
  prefix.parent.mkdir()
  write_reference_checkpoint(str(tflite), str(prefix))
  # A 21-class dataset is needed for the class count: the original-format PASCAL shards.
  shard = require_fixtures('deeplab_testing', 'val-00000-of-00001.tfrecord')
  packaged = run_step('train', f'--tfrecords={shard.parent}', '--dataset=pascal_voc_seg',
                      '--train_split=val', f'--tf_initial_checkpoint={prefix}',
                      '--training_number_of_steps=0', '--depth_multiplier=0.5', '--output_stride=8',
                      f'--output={tmp_path / "zoo.tar.gz"}', cwd=tmp_path)
  assert packaged.metrics[0] == {'restored_variables': 272, 'missing_variables': 0,
                                 'unexpected_variables': 0}
  run_step('export', f'--checkpoint={tmp_path / "zoo.tar.gz"}', f'--output={tmp_path / "model"}')
  images = tmp_path / 'images'
  images.mkdir()
  source = tflite.parent / 'segmentation_input_rotation0.jpg'
  (images / 'horse.jpg').write_bytes(source.read_bytes())
  run_step('predict', f'--model={tmp_path / "model"}', f'--images={images}',
           f'--output={tmp_path / "predictions"}')
  with tarfile.open(tmp_path / 'predictions') as tar:
    labels = np.asarray(Image.open(tar.extractfile('labels/horse.png')))
  golden = np.asarray(Image.open(tflite.parent / 'segmentation_golden_rotation0.png')) // 10
  assert (labels == golden).mean() == 1.0


@pytest.mark.heavy
def test_a_checkpoint_of_another_class_count_needs_initialize_last_layer_false(tmp_path, tiny_tfrecords):
  tflite = require_fixtures('reference_models', 'tflite_support', 'deeplabv3.tflite')
  from tests.reference_model import write_reference_checkpoint
  prefix = tmp_path / 'model.ckpt'
  write_reference_checkpoint(str(tflite), str(prefix))
  common = (f'--tfrecords={tiny_tfrecords}', f'--tf_initial_checkpoint={prefix}',
            '--training_number_of_steps=0', '--depth_multiplier=0.5', '--output_stride=8')
  refused = run_step('train', *common, f'--output={tmp_path / "a.tar.gz"}', cwd=tmp_path, check=False)
  assert refused.returncode == 1
  assert 'logits/semantic/weights is [1, 1, 256, 21] in the checkpoint but [1, 1, 256, 4]' in \
      refused.error_line()
  assert '--initialize_last_layer=false' in refused.error_line()
  assert not (tmp_path / 'a.tar.gz').exists()
  # Only the 2 logits variables are new; by default image pooling, ASPP and projection are too.
  logits_only = run_step('train', *common, '--initialize_last_layer=false',
                         '--last_layers_contain_logits_only=true', f'--output={tmp_path / "b.tar.gz"}',
                         cwd=tmp_path)
  assert logits_only.metrics[0] == {'restored_variables': 270, 'missing_variables': 0,
                                    'unexpected_variables': 0}
  last_layers = run_step('train', *common, '--initialize_last_layer=false',
                         f'--output={tmp_path / "c.tar.gz"}', cwd=tmp_path)
  assert last_layers.metrics[0]['restored_variables'] == 270 - 3 * 5


def test_unknown_model_variant_is_one_line_and_leaves_nothing(tmp_path, tiny_tfrecords):
  result = run_step('train', f'--tfrecords={tiny_tfrecords}', '--model_variant=resnet_v9',
                    f'--output={tmp_path / "c.tar.gz"}', check=False)
  assert result.returncode == 2
  assert result.stderr.strip() == (
      "error: python -m steps.train: --model_variant: expected one of "
      + ", ".join(MODEL_VARIANTS) + ", got 'resnet_v9'")
  assert list(tmp_path.iterdir()) == []


@pytest.mark.heavy
def test_training_continues_from_a_checkpoint_artifact(tmp_path, tiny_tfrecords, tiny_checkpoint):
  common = (f'--tfrecords={tiny_tfrecords}', f'--checkpoint={tiny_checkpoint}', *TINY_TRAIN_FLAGS)
  continued = run_step('train', *common, '--training_number_of_steps=5',
                       f'--output={tmp_path / "more.tar.gz"}', cwd=tmp_path)
  assert continued.metrics[0] == {'resumed_from_step': 3}
  assert continued.last('global_step') == 5
  other_model = run_step('train', *common, '--training_number_of_steps=5', '--output_stride=8',
                         f'--output={tmp_path / "other.tar.gz"}', cwd=tmp_path, check=False)
  assert other_model.returncode == 1
  assert 'was trained with other model options: output_stride=16 (flags: 8)' in \
      other_model.error_line()
  assert not (tmp_path / 'other.tar.gz').exists()


def test_a_missing_initial_checkpoint_is_one_line(tmp_path, tiny_tfrecords):
  result = run_step('train', f'--tfrecords={tiny_tfrecords}', f'--tf_initial_checkpoint={tmp_path / "nope"}',
                    f'--output={tmp_path / "c.tar.gz"}', cwd=tmp_path, check=False)
  assert result.returncode == 1
  assert result.error_line() == (f'error: --tf_initial_checkpoint: {tmp_path / "nope"} is neither a '
                                 'checkpoint prefix, a folder nor an archive')
  assert not (tmp_path / 'c.tar.gz').exists()


def test_the_checkpoints_training_curves_are_named_as_the_trainer_logs_them(tiny_checkpoint, tmp_path):
  """The summaries' tags are the trainer's names (an op of the same name once made it 'total_loss_1')."""
  from deeplab import report
  with tarfile.open(tiny_checkpoint) as tar:
    tar.extractall(tmp_path, filter='data')
  curves = report.read_event_scalars(str(tmp_path))
  assert set(curves) == {'loss', 'total_loss', 'learning_rate'}
  assert [step for step, _ in curves['total_loss']] == [1, 2, 3]
