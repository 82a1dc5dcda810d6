"""A full disk (or quota, or read-only file system) while a step writes: one line
`error: no space left on device writing <path>` naming what was being written (never a temp name
the user cannot find), exit 1, no traceback, nothing left beside the output or in the temp folder.

On a real small file system (a 16 KiB tmpfs, mounted where the test may: root, as here and in CI)
and, always, by making a write inside the step fail with the errno the system would give."""
import errno
import os
import subprocess
import tarfile

import numpy as np
import pytest
from PIL import Image

from deeplab.errors import UserError
from steps import files
from tests.conftest import TINY_TRAIN_FLAGS, assert_one_error_line, run_step


@pytest.fixture(scope='module')
def noisy_images(tmp_path_factory):
  """Images whose overlays do not compress: their predictions fill more than 16 KiB."""
  folder = tmp_path_factory.mktemp('images')
  rng = np.random.default_rng(0)
  for index in range(8):
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f'{index}.png')
  return folder


@pytest.fixture(scope='module')
def raw_folder(tmp_path_factory):
  from deeplab.datasets import synthetic
  return synthetic.write_dataset('folder', str(tmp_path_factory.mktemp('raw') / 'raw'), seed=1,
                                 num_train=8, num_val=3, image_size=(96, 128))


def _step_flags(step, out, inputs):
  """The flags that run `step` into `out` on the tiny inputs."""
  return {
      'build_data': ['--dataset=folder', f'--raw_data={inputs["raw"]}', '--num_shards=1',
                     '--num_workers=1'],
      'train': [f'--tfrecords={inputs["tfrecords"]}', '--training_number_of_steps=1',
                f'--train_logdir={inputs["work"]}', *TINY_TRAIN_FLAGS],
      'evaluate': [f'--tfrecords={inputs["tfrecords"]}', f'--checkpoint={inputs["checkpoint"]}'],
      'export': [f'--checkpoint={inputs["checkpoint"]}'],
      'predict': [f'--model={inputs["model"]}', f'--images={inputs["images"]}'],
  }[step] + [f'--output={out}']


OUTPUT_NAMES = {'build_data': 'tfrecords.tar.gz', 'train': 'checkpoint.tar.gz',
                'evaluate': 'metrics.json', 'export': 'model.tar.gz',
                'predict': 'predictions.tar.gz'}
STEPS = tuple(OUTPUT_NAMES)


@pytest.fixture
def inputs(tmp_path, raw_folder, tiny_tfrecords, tiny_checkpoint, tiny_model, noisy_images):
  return {'raw': raw_folder, 'tfrecords': tiny_tfrecords, 'checkpoint': tiny_checkpoint,
          'model': tiny_model, 'images': noisy_images, 'work': tmp_path / 'work'}


def _nothing_left(output_folder, step_tmpdir=None):
  """Nothing in the output's folder; no scratch or extraction folder of ours in the temp folder
  (TensorFlow's autograph leaves its own generated files there until the process ends)."""
  assert not os.path.exists(output_folder) or os.listdir(output_folder) == [], \
      os.listdir(output_folder)
  if step_tmpdir is not None:
    ours = [name for name in os.listdir(step_tmpdir) if name.startswith('deeplab-')]
    assert ours == [], ours


# ----------------------------------------------------------------------------- a real full disk

@pytest.fixture
def small_disk(tmp_path):
  """A 16 KiB tmpfs, smaller than any artifact of the tiny inputs; unmounted afterwards."""
  mount_point = tmp_path / 'small_disk'
  mount_point.mkdir()
  try:
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=16k', 'tmpfs', str(mount_point)],
                             capture_output=True, text=True)
  except FileNotFoundError:
    pytest.skip('no mount command here: the simulated full disk below covers the same paths')
  if mounted.returncode != 0:
    pytest.skip(f'mounting a tmpfs is not permitted here ({mounted.stderr.strip()}): the simulated '
                'full disk below covers the same paths')
  try:
    yield mount_point
  finally:
    subprocess.run(['umount', str(mount_point)], check=True)


@pytest.mark.process
@pytest.mark.parametrize('step', STEPS)
def test_an_output_on_a_full_disk_is_one_line_and_leaves_nothing(step, small_disk, step_tmpdir,
                                                                 inputs):
  out = small_disk / OUTPUT_NAMES[step]
  result = run_step(step, *_step_flags(step, out, inputs), check=False)
  line = assert_one_error_line(result)
  if step == 'evaluate':  # its first output to fill the disk: the TensorBoard events
    assert line == f'error: no space left on device writing {small_disk / "tensorboard"}'
  else:
    assert line == f'error: no space left on device writing {out}'
  _nothing_left(small_disk, step_tmpdir)


@pytest.mark.process
def test_evaluate_on_a_full_disk_as_reported(tmp_path, small_disk, tiny_tfrecords, tiny_checkpoint):
  """The case of the report, as a process: it printed a traceback, `error: unexpected OSError:
  [Errno 28]`, and left tensorboard/events.* beside the output."""
  result = run_step('evaluate', f'--tfrecords={tiny_tfrecords}', f'--checkpoint={tiny_checkpoint}',
                    f'--output={small_disk / "metrics.json"}', check=False, isolated=True,
                    env={'TMPDIR': str(tmp_path)})
  assert_one_error_line(result, 'error: no space left on device writing '
                        f'{small_disk / "tensorboard"}')
  _nothing_left(small_disk)


# ----------------------------------------------------------------------------- a simulated one

def _failing(code, path=None):
  def fail(*args, **kwargs):
    raise OSError(code, os.strerror(code), *([path] if path else []))
  return fail


def _temp_folder_line(folder, what):
  return (f'error: no space left on device writing {folder} (the temp folder, assembling {what}; '
          'free space there or set TMPDIR to a larger folder)')


def test_build_data_short_of_temp_space_names_the_temp_folder(tmp_path, step_tmpdir, inputs,
                                                              monkeypatch):
  from deeplab.datasets import tfrecord
  monkeypatch.setattr(tfrecord.RecordWriter, 'write', _failing(errno.ENOSPC))
  out = tmp_path / 'out' / 'tfrecords.tar.gz'
  result = run_step('build_data', *_step_flags('build_data', out, inputs), check=False)
  assert assert_one_error_line(result) == _temp_folder_line(step_tmpdir, 'the TFRecords')
  _nothing_left(out.parent, step_tmpdir)


@pytest.mark.parametrize('code, reason', [(errno.EDQUOT, 'disk quota exceeded'),
                                          (errno.EROFS, 'read-only file system')])
def test_a_quota_or_a_read_only_file_system_is_named_like_a_full_disk(tmp_path, step_tmpdir, inputs,
                                                                      monkeypatch, code, reason):
  monkeypatch.setattr(os, 'fsync', _failing(code))  # the artifact's last write before its rename
  out = tmp_path / 'out' / 'tfrecords.tar.gz'
  result = run_step('build_data', *_step_flags('build_data', out, inputs), check=False)
  assert assert_one_error_line(result) == f'error: {reason} writing {out}'
  _nothing_left(out.parent, step_tmpdir)


@pytest.mark.heavy
def test_train_short_of_space_in_its_work_folder_names_the_file(tmp_path, step_tmpdir, inputs,
                                                                monkeypatch):
  """TensorFlow's saver reports ENOSPC as its own error, the path in the message (with a temp
  suffix, dropped)."""
  from deeplab.compat import tf

  def full(saver, session, save_path, **kwargs):
    raise tf.errors.ResourceExhaustedError(
        None, None, f'Graph execution error:\n{save_path}-1.data-00000-of-00001.tempstate8437; '
        'No space left on device\n\t [[{{node save/SaveV2}}]]')

  monkeypatch.setattr(tf.compat.v1.train.Saver, 'save', full)
  out = tmp_path / 'out' / 'checkpoint.tar.gz'
  result = run_step('train', *_step_flags('train', out, inputs), check=False)
  line = assert_one_error_line(result)
  assert line.startswith(f'error: no space left on device writing {inputs["work"]}{os.sep}')
  assert line.endswith('model.ckpt-1.data-00000-of-00001'), line
  _nothing_left(out.parent, step_tmpdir)


def test_evaluate_short_of_space_names_the_report_file_and_moves_nothing_in(tmp_path, step_tmpdir,
                                                                            inputs, monkeypatch):
  """Every output of evaluate is written aside: a failure in the last of them (the report) leaves
  none, the TensorBoard events (written first) included."""
  from deeplab import report
  written = []

  def fill_up(path, data):
    written.append(path)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

  monkeypatch.setattr(report, '_write', fill_up)
  out_dir = tmp_path / 'out'
  result = run_step('evaluate', *_step_flags('evaluate', out_dir / 'metrics.json', inputs), check=False)
  (first,) = written
  assert assert_one_error_line(result) == (f'error: no space left on device writing '
                                           f'{out_dir / "report" / os.path.basename(first)}')
  _nothing_left(out_dir, step_tmpdir)


@pytest.mark.heavy
def test_export_short_of_temp_space_in_tensorflow_names_the_temp_folder(tmp_path, step_tmpdir,
                                                                        inputs, monkeypatch):
  from deeplab.compat import tf
  from deeplab.export import frozen_graph

  def full(graph_def, path):
    raise tf.errors.ResourceExhaustedError(None, None, f'{path}; No space left on device')

  monkeypatch.setattr(frozen_graph, 'write_frozen_graph', full)
  out = tmp_path / 'out' / 'model.tar.gz'
  result = run_step('export', *_step_flags('export', out, inputs), check=False)
  assert assert_one_error_line(result) == _temp_folder_line(step_tmpdir, 'the model')
  _nothing_left(out.parent, step_tmpdir)


def test_predict_short_of_temp_space_in_a_worker_thread_names_the_temp_folder(tmp_path, step_tmpdir,
                                                                              inputs, monkeypatch):
  from deeplab import visualize
  monkeypatch.setattr(visualize, 'write_overlay', _failing(errno.ENOSPC))
  out = tmp_path / 'out' / 'predictions.tar.gz'
  result = run_step('predict', *_step_flags('predict', out, inputs), check=False)
  assert assert_one_error_line(result) == _temp_folder_line(step_tmpdir, 'the predictions')
  _nothing_left(out.parent, step_tmpdir)


def test_a_full_disk_while_extracting_is_not_called_an_unreadable_archive(tmp_path, step_tmpdir,
                                                                          raw_folder, monkeypatch):
  archive = tmp_path / 'raw.tar'
  with tarfile.open(archive, 'w') as tar:
    tar.add(raw_folder, arcname='raw')
  monkeypatch.setattr(tarfile.TarFile, 'extractall', _failing(errno.ENOSPC))
  out = tmp_path / 'out' / 'tfrecords.tar.gz'
  result = run_step('build_data', '--dataset=folder', f'--raw_data={archive}',
                               f'--output={out}', check=False)
  assert assert_one_error_line(result) == (
      f'error: no space left on device writing {step_tmpdir} (the temp folder, extracting '
      f'{archive}; free space there or set TMPDIR to a larger folder)')
  _nothing_left(out.parent, step_tmpdir)


# ----------------------------------------------------------------------------- the mechanism

def test_writing_names_a_file_at_its_place_in_the_output_and_lets_other_errors_through(tmp_path):
  staging, target = tmp_path / '.report.partial', tmp_path / 'report'
  with pytest.raises(UserError, match=f'^no space left on device writing {target / "a" / "b.png"}$'):
    with files.writing(str(target), str(staging)):
      raise OSError(errno.ENOSPC, 'No space left on device', str(staging / 'a' / 'b.png'))
  with pytest.raises(UserError, match=f'^no space left on device writing {target}$'):
    with files.writing(str(target), str(staging)):
      raise OSError(errno.ENOSPC, 'No space left on device')  # a write() names no file
  for other in (OSError(errno.ENOENT, 'No such file or directory', 'x'),
                OSError(errno.EACCES, 'Permission denied', 'x'), ValueError('not a write')):
    with pytest.raises(type(other)) as raised:
      with files.writing(str(target)):
        raise other
    assert raised.value is other
