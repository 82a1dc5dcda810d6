"""Hostile and broken inputs, one test per way they used to get through: each asserts the exit
status, the one `error:` line naming the user's file or flag, and that nothing was written outside
the step's folders or left behind."""
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from deeplab.datasets import manifest as manifest_lib
from deeplab.datasets import tfrecord
from steps import archives, files, runtime
from tests.conftest import REPO, TINY_TRAIN_FLAGS, assert_one_error_line, run_step


def _sha256(path):
  return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


# ----------------------------------------------------------------------------- archives

def _add(tar, name, data=b'', **attributes):
  info = tarfile.TarInfo(name)
  for key, value in attributes.items():
    setattr(info, key, value)
  info.size = len(data) if info.type == tarfile.REGTYPE else 0
  tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)


def _symlink_chain_tar(path, target_file):
  """l1 -> ., l1/l1/.../l2 -> ../../.. (deep enough to reach /), then a file under l2/<abs path>:
  each member looks harmless when checked by name alone."""
  depth = len(os.path.abspath(target_file).split(os.sep)) + 2
  with tarfile.open(path, 'w') as tar:
    _add(tar, 'l1', type=tarfile.SYMTYPE, linkname='.')
    _add(tar, '/'.join(['l1'] * depth) + '/l2', type=tarfile.SYMTYPE, linkname='/'.join(['..'] * depth))
    _add(tar, 'l2' + os.path.abspath(target_file), _png(np.zeros((4, 4, 3), np.uint8)))
  return path


def _hardlink_tar(path, outside_file):
  """A hard link whose target, read from the archive root as tar does, leaves it; read from the
  member's own folder it would look inside."""
  with tarfile.open(path, 'w') as tar:
    _add(tar, 'a/b/c', type=tarfile.DIRTYPE)
    relative = os.path.relpath(outside_file, os.path.dirname(path))
    _add(tar, 'a/b/c/stolen.png', type=tarfile.LNKTYPE, linkname='../' + relative)
    _add(tar, 'a/real.png', _png(np.zeros((8, 8, 3), np.uint8)))
  return path


@pytest.mark.parametrize('step, flag', [('predict', 'images'), ('build_data', 'raw_data'),
                                        ('export', 'checkpoint')])
def test_a_symlink_chain_cannot_write_outside(tmp_path, step_tmpdir, tiny_model, step, flag):
  target = tmp_path / 'victim' / 'planted.png'
  archive = _symlink_chain_tar(tmp_path / 'chain.tar', target)
  extra = {'predict': [f'--model={tiny_model}'], 'build_data': [], 'export': []}[step]
  result = run_step(step, f'--{flag}={archive}', *extra, f'--output={tmp_path / "out" / "a.tar.gz"}',
                    check=False)
  assert_one_error_line(result, str(archive), "'l1'", 'is a symbolic link', 'refusing to extract')
  assert not target.exists() and not (tmp_path / 'out').exists()
  assert os.listdir(step_tmpdir) == []


def test_a_hardlink_cannot_bring_an_outside_file_in(tmp_path, step_tmpdir, tiny_model):
  secret = tmp_path / 'secret.png'
  secret.write_bytes(_png(np.full((8, 8, 3), 200, np.uint8)))
  archive = _hardlink_tar(tmp_path / 'images.tar', secret)
  out = tmp_path / 'out' / 'predictions.tar.gz'
  result = run_step('predict', f'--model={tiny_model}', f'--images={archive}', f'--output={out}',
                    check=False)
  assert_one_error_line(result, str(archive), 'stolen.png', 'is a hard link')
  assert not out.exists() and os.listdir(step_tmpdir) == []


def _gzip_bomb(path, expanded_bytes):
  """A tar.gz of one member of `expanded_bytes` zeros, about 1 MB per GB: the gzip stream is one
  compressed MiB of zeros repeated as concatenated gzip members (valid gzip, cheap to make)."""
  header = tarfile.TarInfo('zeros.bin')
  header.size = expanded_bytes
  chunk = 1 << 20
  zero_member = gzip.compress(b'\0' * chunk, compresslevel=9, mtime=0)
  with open(path, 'wb') as f:
    f.write(gzip.compress(header.tobuf(format=tarfile.GNU_FORMAT), mtime=0))
    for _ in range(expanded_bytes // chunk):
      f.write(zero_member)
    f.write(gzip.compress(b'\0' * 1024, mtime=0))  # end-of-archive blocks
  return path


def _zip_bomb(path, expanded_bytes):
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as zf:
    with zf.open('zeros.bin', 'w', force_zip64=True) as member:
      chunk = b'\0' * (1 << 20)
      for _ in range(expanded_bytes // len(chunk)):
        member.write(chunk)
  return path


@pytest.mark.parametrize('make', [_gzip_bomb, _zip_bomb], ids=['tar.gz', 'zip'])
def test_an_archive_bomb_is_stopped_before_it_fills_the_disk(tmp_path, step_tmpdir, monkeypatch, make):
  bomb = make(tmp_path / 'bomb', 1 << 30)
  assert os.path.getsize(bomb) < 2 << 20  # 1 GB behind about 1 MB
  limit = 64 << 20
  result = run_step('build_data', f'--raw_data={bomb}', f'--output={tmp_path / "out.tar.gz"}',
                    env={archives.MAX_EXTRACT_ENV: str(limit)}, check=False)
  assert_one_error_line(result, str(bomb), f'expands to more than {limit} bytes',
                         archives.MAX_EXTRACT_ENV)
  assert os.listdir(step_tmpdir) == [] and not (tmp_path / 'out.tar.gz').exists()


def _damaged_zip(path):
  """A zip whose directory is intact but whose compressed data is not."""
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as zf:
    zf.writestr('images/a.png', os.urandom(4096) * 4)
  data = bytearray(path.read_bytes())
  for offset in range(60, 400):
    data[offset] ^= 0x5a
  path.write_bytes(bytes(data))
  return path


def _truncated_tar_gz(path):
  with tarfile.open(path, 'w:gz') as tar:
    _add(tar, 'images/a.png', os.urandom(20000))
  path.write_bytes(path.read_bytes()[:5000])
  return path


@pytest.mark.parametrize('make', [_damaged_zip, _truncated_tar_gz], ids=['zip', 'tar.gz'])
def test_a_damaged_archive_is_one_line(tmp_path, step_tmpdir, make):
  damaged = make(tmp_path / 'damaged')
  result = run_step('build_data', f'--raw_data={damaged}', f'--output={tmp_path / "o.tar.gz"}',
                    check=False)
  assert_one_error_line(result, str(damaged), 'not a readable archive')
  assert os.listdir(step_tmpdir) == [] and not (tmp_path / 'o.tar.gz').exists()


def test_the_wrong_artifact_kind_names_the_users_file(tmp_path, tiny_tfrecords):
  result = run_step('export', f'--checkpoint={tiny_tfrecords}', f'--output={tmp_path / "m.tar.gz"}',
                    check=False)
  assert_one_error_line(result, str(tiny_tfrecords), 'holds TFRecords (dataset.json), not a checkpoint',
                         'expected the output of the train step')


# ----------------------------------------------------------------------------- outputs

def _output_is_input_cases(tiny_tfrecords, tiny_checkpoint, tiny_model, images):
  return {
      'build_data': (['--dataset=folder'], 'raw_data', images),
      'train': ([f'--tfrecords={tiny_tfrecords}', '--training_number_of_steps=1', *TINY_TRAIN_FLAGS],
                'checkpoint', tiny_checkpoint),
      'evaluate': ([f'--tfrecords={tiny_tfrecords}'], 'checkpoint', tiny_checkpoint),
      'export': ([], 'checkpoint', tiny_checkpoint),
      'predict': ([f'--model={tiny_model}'], 'images', images),
  }


@pytest.mark.parametrize('step', ['build_data', 'train', 'evaluate', 'export', 'predict'])
def test_an_output_that_is_an_input_is_refused_before_any_work(step, tmp_path, tiny_tfrecords,
                                                               tiny_checkpoint, tiny_model):
  images = tmp_path / 'images.tar'
  with tarfile.open(images, 'w') as tar:
    _add(tar, 'a.png', _png(np.zeros((8, 8, 3), np.uint8)))
  args, flag, path = _output_is_input_cases(tiny_tfrecords, tiny_checkpoint, tiny_model,
                                            images)[step]
  before = _sha256(path)
  result = run_step(step, *args, f'--{flag}={path}', f'--output={path}', cwd=tmp_path, check=False)
  assert_one_error_line(result, f'--output={path}', f'--{flag}={path}', 'refusing to overwrite')
  assert _sha256(path) == before and result.metrics == []


def test_an_output_inside_an_input_folder_is_refused(tmp_path, tiny_model):
  images = tmp_path / 'photos'
  images.mkdir()
  (images / 'a.png').write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))
  result = run_step('predict', f'--model={tiny_model}', f'--images={images}',
                    f'--output={images / "predictions.tar.gz"}', check=False)
  assert_one_error_line(result, 'lies inside the input --images')
  assert os.listdir(images) == ['a.png']


@pytest.mark.parametrize('output, message', [
    ('parent_is_a_file/x/out.tar.gz', 'is a file, not a folder'),
    ('/proc/deeplab-test/out.tar.gz', 'cannot write in /proc'),
])
def test_an_unwritable_output_is_refused_before_training(tmp_path, tiny_tfrecords, output, message):
  (tmp_path / 'parent_is_a_file').write_text('a file')
  output = output if output.startswith('/') else str(tmp_path / output)
  result = run_step('train', f'--tfrecords={tiny_tfrecords}', f'--output={output}',
                    '--training_number_of_steps=1', *TINY_TRAIN_FLAGS, cwd=tmp_path, check=False)
  assert_one_error_line(result, f'--output={output}', message)
  assert result.metrics == []  # not one training step was run
  assert not (tmp_path / '.deeplab-train').exists()


# ----------------------------------------------------------------------------- training

@pytest.mark.heavy
def test_divergence_stops_training_without_an_artifact_or_a_non_finite_checkpoint(tmp_path,
                                                                                   tiny_tfrecords):
  out = tmp_path / 'checkpoint.tar.gz'
  result = run_step('train', f'--tfrecords={tiny_tfrecords}', f'--output={out}',
                    '--training_number_of_steps=20', *TINY_TRAIN_FLAGS, '--base_learning_rate=1e6',
                    '--save_interval_steps=1', f'--train_logdir={tmp_path / "logs"}', check=False)
  error = assert_one_error_line(result, 'training diverged at step',
                                 'try a lower --base_learning_rate (now 1e+06)')
  assert not out.exists()
  losses = [m['loss'] for m in result.metrics if 'loss' in m]
  assert losses and all(isinstance(loss, float) and np.isfinite(loss) for loss in losses)
  diverged_at = int(error.split('at step ')[1].split()[0])
  # The step whose update made the weights non-finite may have printed its (finite) loss.
  assert max(m.get('step', 0) for m in result.metrics) <= diverged_at
  from deeplab.compat import tf
  saved = [os.path.join(dirpath, name[:-len('.index')])
           for dirpath, _, names in os.walk(tmp_path / 'logs') for name in names
           if name.endswith('.index')]
  for prefix in saved:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
      value = reader.get_tensor(name)
      if np.issubdtype(np.asarray(value).dtype, np.floating):
        assert np.isfinite(value).all(), f'{prefix}: {name} is not finite'


@pytest.mark.process
def test_a_second_training_in_the_same_folder_fails_at_once(tmp_path, tiny_tfrecords):
  logs = tmp_path / 'logs'
  args = [f'--tfrecords={tiny_tfrecords}', '--training_number_of_steps=100000', *TINY_TRAIN_FLAGS,
          f'--train_logdir={logs}']
  first = subprocess.Popen([sys.executable, '-m', 'steps.train', *args,
                            f'--output={tmp_path / "first.tar.gz"}'],
                           env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2'),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 120
    while not list(logs.glob('*/lock')) and time.monotonic() < deadline:
      time.sleep(0.2)
    assert list(logs.glob('*/lock')), 'the first training never took its lock'
    second = run_step('train', *args, f'--output={tmp_path / "second.tar.gz"}', check=False)
    work_dir = list(logs.glob('*/lock'))[0].parent
    assert_one_error_line(second, f'another training (pid {first.pid}) is using {work_dir}')
    assert second.metrics == [] and not (tmp_path / 'second.tar.gz').exists()
  finally:
    first.kill()
    first.wait()


# ----------------------------------------------------------------------------- integrity

def _extract(archive, folder):
  with tarfile.open(archive) as tar:
    tar.extractall(folder, filter='data')
  return folder


def _flip_bytes(path, every=4096):
  data = bytearray(path.read_bytes())
  for offset in range(100, len(data), every):
    data[offset] ^= 0xff
  path.write_bytes(bytes(data))


def test_a_modified_shard_is_named_before_it_is_read(tmp_path, tiny_tfrecords, tiny_checkpoint):
  folder = _extract(tiny_tfrecords, tmp_path / 'tfrecords')
  shard = next(folder.glob('val-*.tfrecord'))
  _flip_bytes(shard, every=10**9)  # one byte, CRCs still say nothing about the content hash
  result = run_step('evaluate', f'--tfrecords={folder}', f'--checkpoint={tiny_checkpoint}',
                    f'--output={tmp_path / "m.json"}', check=False)
  assert_one_error_line(result, str(shard), 'corrupt or modified', 'dataset.json')
  assert not (tmp_path / 'm.json').exists()


def test_a_truncated_original_format_shard_is_named(tmp_path, tiny_tfrecords, tiny_checkpoint):
  """Original DeepLab shards have no dataset.json (no checksums): a read error names the shard."""
  folder = _extract(tiny_tfrecords, tmp_path / 'tfrecords')
  (folder / 'dataset.json').unlink()
  shard = next(folder.glob('train-*.tfrecord'))
  shard.write_bytes(shard.read_bytes()[:-7])
  # A known dataset name supplies the classes; the shards are read before the class counts meet.
  result = run_step('train', f'--tfrecords={folder}', '--dataset=pascal_voc_seg',
                    f'--output={tmp_path / "c.tar.gz"}', '--training_number_of_steps=1',
                    *TINY_TRAIN_FLAGS, cwd=tmp_path, check=False)
  assert_one_error_line(result, str(shard), 'corrupt')


def test_a_corrupt_checkpoint_names_the_artifact(tmp_path, tiny_checkpoint):
  folder = _extract(tiny_checkpoint, tmp_path / 'ckpt')
  _flip_bytes(next(folder.glob('*.data-*')))
  damaged = tmp_path / 'damaged.tar.gz'
  files.write_tarball(str(folder), str(damaged))
  result = run_step('export', f'--checkpoint={damaged}', f'--output={tmp_path / "m.tar.gz"}',
                    check=False)
  assert_one_error_line(result, str(damaged), 'corrupt checkpoint')
  assert not (tmp_path / 'm.tar.gz').exists()


def _tfrecords_with_a_stretched_label(folder):
  """A one-shard dataset (4 classes) whose only example has a label 8 rows short of its image."""
  folder.mkdir()
  image = _png(np.full((72, 88, 3), 90, np.uint8))
  label = _png(np.ones((64, 88), np.uint8))
  shard = manifest_lib.shard_name('train', 0, 1)
  with open(folder / shard, 'wb') as f:
    writer = tfrecord.RecordWriter(f)
    writer.write(tfrecord.encode_example(image, 'png', 'odd_one', 72, 88, 3, label))
  split = manifest_lib.SplitInfo(1, [{'file': shard, 'num_examples': 1, 'sha256': writer.sha256()}])
  manifest_lib.write_manifest(manifest_lib.Manifest(
      'folder', 4, 255, ['a', 'b', 'c', 'd'], [[0, 0, 0]] * 4, {'train': split, 'val': split}),
      str(folder))
  return folder


@pytest.mark.heavy
def test_a_label_of_another_size_names_the_example_in_train_and_evaluate(tmp_path, tiny_checkpoint):
  data = _tfrecords_with_a_stretched_label(tmp_path / 'odd')
  trained = run_step('train', f'--tfrecords={data}', f'--output={tmp_path / "c.tar.gz"}',
                     '--training_number_of_steps=2', *TINY_TRAIN_FLAGS, cwd=tmp_path, check=False)
  assert_one_error_line(trained, "'odd_one'", 'label is 64x88', 'image is 72x88')
  evaluated = run_step('evaluate', f'--tfrecords={data}', f'--checkpoint={tiny_checkpoint}',
                       f'--output={tmp_path / "m.json"}', check=False)
  assert_one_error_line(evaluated, "'odd_one'", 'label is 64x88', 'image is 72x88')
  assert not (tmp_path / 'c.tar.gz').exists() and not (tmp_path / 'm.json').exists()


# ----------------------------------------------------------------------------- interruptions

def _dead_pid():
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def _images_folder(folder, count, size=(96, 128)):
  folder.mkdir()
  rng = np.random.default_rng(0)
  for index in range(count):
    Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(folder / f'{index:04d}.png')
  return folder


@pytest.mark.process
def test_sigterm_removes_partial_outputs_and_staging_folders(tmp_path, step_tmpdir, tiny_model):
  images = _images_folder(tmp_path / 'images', 400)
  out_dir = tmp_path / 'out'
  process = subprocess.Popen(
      [sys.executable, '-m', 'steps.predict', f'--model={tiny_model}', f'--images={images}',
       f'--output={out_dir / "predictions.tar.gz"}'],
      env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2', TMPDIR=str(step_tmpdir)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline and not any(
      (step_tmpdir / name / 'labels').exists() for name in os.listdir(step_tmpdir)):
    time.sleep(0.1)  # until predictions are being written into the staging folder
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
  assert [l for l in stderr.splitlines() if l.startswith('error:')] == [
      'error: interrupted (SIGTERM); partial outputs removed']
  assert os.listdir(step_tmpdir) == []
  assert not out_dir.exists() or os.listdir(out_dir) == []


@pytest.mark.process
def test_leftovers_of_a_killed_run_are_removed_by_the_next_run(tmp_path, step_tmpdir, tiny_checkpoint):
  out = tmp_path / 'model.tar.gz'
  host, dead = files._HOST, _dead_pid()
  partial = tmp_path / f'.model.tar.gz.{host}.{dead}.abc123.partial'
  partial.write_bytes(b'half an artifact')
  staging = step_tmpdir / f'deeplab-model-{host}.{dead}-xyz'
  staging.mkdir()
  alive = tmp_path / f'.model.tar.gz.{host}.{os.getppid()}.live01.partial'  # a run still going
  alive.write_bytes(b'')
  run_step('export', f'--checkpoint={tiny_checkpoint}', f'--output={out}')
  assert out.exists() and not partial.exists() and not staging.exists() and alive.exists()


# ----------------------------------------------------------------------------- predict and export

def test_two_images_with_one_name_are_refused(tmp_path, tiny_model):
  images = tmp_path / 'images'
  images.mkdir()
  Image.new('RGB', (8, 8)).save(images / 'same.jpg')
  Image.new('RGB', (8, 8)).save(images / 'same.png')
  result = run_step('predict', f'--model={tiny_model}', f'--images={images}',
                    f'--output={tmp_path / "p.tar.gz"}', check=False)
  assert_one_error_line(result, 'same.jpg', 'same.png', 'labels/same.png')
  assert not (tmp_path / 'p.tar.gz').exists()


def test_16_bit_and_other_png_modes_are_converted_not_clipped(tmp_path):
  from deeplab.images import read_image
  gray16 = np.full((4, 6), 32896, np.uint16)  # 128.0 in 8 bits
  Image.fromarray(gray16).save(tmp_path / 'g16.png')
  assert Image.open(tmp_path / 'g16.png').mode.startswith('I')
  assert read_image(str(tmp_path / 'g16.png')).tolist() == np.full((4, 6, 3), 128).tolist()
  Image.new('LA', (3, 2), (77, 10)).save(tmp_path / 'la.png')
  Image.new('P', (3, 2), 0).save(tmp_path / 'p.png')
  assert read_image(str(tmp_path / 'la.png')).tolist() == np.full((2, 3, 3), 77).tolist()
  assert read_image(str(tmp_path / 'p.png')).shape == (2, 3, 3)


def test_a_large_photo_is_predicted_at_a_bounded_size_with_labels_at_full_size():
  from deeplab.images import predict_bounded

  class RecordingModel:
    def __init__(self):
      self.seen = []

    def predict(self, image):
      self.seen.append(image.shape)
      return (np.arange(image.shape[1], dtype=np.int32)[None, :] * 4 // image.shape[1]
              ).repeat(image.shape[0], 0)

  model = RecordingModel()
  labels = predict_bounded(model, np.zeros((300, 400, 3), np.uint8), max_pixels=30000)
  assert labels.shape == (300, 400) and labels.dtype == np.int32
  assert model.seen == [(150, 200, 3)]  # 30,000 pixels, the aspect kept
  assert labels[0, :100].tolist() == [0] * 100 and labels[0, -100:].tolist() == [3] * 100
  predict_bounded(model, np.zeros((10, 10, 3), np.uint8), max_pixels=30000)
  assert model.seen[-1] == (10, 10, 3)


@pytest.mark.heavy
def test_exporting_one_checkpoint_twice_gives_the_same_bytes(tmp_path, tiny_checkpoint):
  for name in ('a', 'b'):
    run_step('export', f'--checkpoint={tiny_checkpoint}', f'--output={tmp_path / name}.tar.gz')
  assert _sha256(tmp_path / 'a.tar.gz') == _sha256(tmp_path / 'b.tar.gz')


def test_non_finite_metrics_are_printed_as_strings_with_a_warning(capsys, caplog):
  runtime.emit_metrics(loss=float('nan'), rate=np.float32('inf'), ok=1.5)
  assert json.loads(capsys.readouterr().out) == {'loss': 'nan', 'rate': 'inf', 'ok': 1.5}
  assert 'metric loss is nan' in caplog.text
