"""Paths named inside an input stay inside it: list-file ids, listed files and split lists of every
dataset layout, dataset.json's shard names, a checkpoint's `checkpoint` index and model.json's
checkpoint name. Each way out (an absolute name, `..`, a symbolic link leading out) is one
`error:` line naming the file, the line where there is one and the entry, exit 1, no traceback, no
artifact, nothing left in the temp folder and nothing of the outside file read into an output.

Archives cannot carry links (their extraction refuses them), so the links here are in folder
inputs. Steps run in this process (conftest.run_step) except one, run as users run it."""
import json
import os
import shutil
import tarfile
import types

import numpy as np
import pytest
from PIL import Image

from deeplab import containment
from deeplab.datasets import synthetic
from deeplab.errors import UserError
from tests.conftest import assert_one_error_line, run_step, synthetic_tfrecords


def _outcome(result):
  """(exit status, stdout, stderr) of a step run by conftest.run_step."""
  return result.returncode, result.stdout, result.stderr


def assert_refused(status, err, *fragments):
  """Exit 1 with exactly one `error:` line holding every fragment, and no traceback."""
  return assert_one_error_line(types.SimpleNamespace(returncode=status, stderr=err), *fragments)


@pytest.fixture
def outside(tmp_path):
  """A folder outside every input, holding a valid image and label a hostile entry points at."""
  folder = tmp_path / 'outside'
  folder.mkdir()
  Image.fromarray(np.full((16, 16, 3), 201, np.uint8)).save(folder / 'secret.jpg')
  Image.fromarray(np.full((16, 16, 3), 202, np.uint8)).save(folder / 'secret.png')
  Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / 'secret_label.png')
  (folder / 'secret.txt').write_text('secret\n')
  return folder


# ----------------------------------------------------------------------------- dataset layouts

def _voc(raw):
  return raw / 'VOCdevkit' / 'VOC2012'


def _first_line(path):
  return path.read_text().split()[0]


def _replace_line_2(path, text):
  lines = path.read_text().splitlines()
  path.write_text('\n'.join([lines[0], text] + lines[2:]) + '\n')


def _link(path, target):
  path.unlink()
  path.symlink_to(target)


def _voc_list(raw):
  return _voc(raw) / 'ImageSets' / 'Segmentation' / 'train.txt'


def _cityscapes_train_image(raw):
  return sorted((raw / 'leftImg8bit' / 'train' / 'aachen').iterdir())[0]


# layout, how, (hostile edit of the raw folder `raw`, outside folder `out`) -> fragments of the
# error line. ADE20K and Cityscapes have no list files (their examples are the files found), so
# their only way out is a link.
LAYOUT_CASES = {
    ('pascal_voc_seg', 'absolute'): (
        lambda raw, out: _replace_line_2(_voc_list(raw), str(out / 'secret')),
        lambda raw, out: [f'{_voc_list(raw)}, line 2', repr(str(out / 'secret')),
                          'is an absolute path']),
    ('pascal_voc_seg', 'dotdot'): (
        lambda raw, out: _replace_line_2(_voc_list(raw), '../../../../outside/secret'),
        lambda raw, out: [f'{_voc_list(raw)}, line 2', "'../../../../outside/secret'",
                          "has a '..' component"]),
    ('pascal_voc_seg', 'linked image'): (
        lambda raw, out: _link(_voc(raw) / 'JPEGImages' / f'{_first_line(_voc_list(raw))}.jpg',
                               out / 'secret.jpg'),
        lambda raw, out: [f'{_voc_list(raw)}, line 1', 'leads outside', str(out / 'secret.jpg')]),
    ('pascal_voc_seg', 'linked list'): (
        lambda raw, out: _link(_voc_list(raw), out / 'secret.txt'),
        lambda raw, out: ["'ImageSets/Segmentation/train.txt' leads outside",
                          str(out / 'secret.txt')]),
    ('folder', 'absolute'): (
        lambda raw, out: _replace_line_2(raw / 'splits' / 'train.txt', str(out / 'secret')),
        lambda raw, out: [f'{raw / "splits" / "train.txt"}, line 2', 'is an absolute path']),
    ('folder', 'dotdot'): (
        lambda raw, out: _replace_line_2(raw / 'splits' / 'train.txt', '../outside/secret'),
        lambda raw, out: [f'{raw / "splits" / "train.txt"}, line 2', "'../outside/secret'",
                          "has a '..' component"]),
    ('folder', 'linked label'): (
        lambda raw, out: _link(raw / 'masks' / 'train_00000.png', out / 'secret_label.png'),
        lambda raw, out: [f'{raw / "splits" / "train.txt"}, line 1', "'masks/train_00000.png'",
                          'leads outside', str(out / 'secret_label.png')]),
    ('folder', 'linked class names'): (
        lambda raw, out: _link(raw / 'class_names.txt', out / 'secret.txt'),
        lambda raw, out: ["'class_names.txt' leads outside", str(out / 'secret.txt')]),
    ('ade20k', 'linked image'): (
        lambda raw, out: _link(raw / 'ADEChallengeData2016' / 'images' / 'training' /
                               'ADE_train_00000001.jpg', out / 'secret.jpg'),
        lambda raw, out: ["'images/training/ADE_train_00000001.jpg' leads outside",
                          str(out / 'secret.jpg')]),
    ('ade20k', 'linked folder'): (
        lambda raw, out: (shutil.rmtree(raw / 'ADEChallengeData2016' / 'annotations' / 'training'),
                          (raw / 'ADEChallengeData2016' / 'annotations' / 'training').symlink_to(
                              _ade20k_annotations_outside(out))),
        lambda raw, out: ["'annotations/training/ADE_train_00000001.png' leads outside"]),
    ('cityscapes', 'linked image'): (
        lambda raw, out: _link(_cityscapes_train_image(raw), out / 'secret.png'),
        lambda raw, out: ["'leftImg8bit/train/aachen/aachen_000000_000000_leftImg8bit.png' leads "
                          'outside', str(out / 'secret.png')]),
    ('cityscapes', 'linked label'): (
        lambda raw, out: _link(raw / 'gtFine' / 'train' / 'aachen' /
                               'aachen_000000_000000_gtFine_labelTrainIds.png',
                               out / 'secret_label.png'),
        lambda raw, out: ["'gtFine/train/aachen/aachen_000000_000000_gtFine_labelTrainIds.png' "
                          'leads outside', str(out / 'secret_label.png')]),
}


def _ade20k_annotations_outside(out):
  """A folder outside with the annotations an ADE20K training split expects (valid labels)."""
  folder = out / 'annotations'
  folder.mkdir()
  for index in (1, 2):
    Image.fromarray(np.ones((16, 16), np.uint8)).save(folder / f'ADE_train_{index:08d}.png')
  return folder


def _raw(tmp_path, layout):
  return synthetic.write_dataset(layout, str(tmp_path / 'raw'), num_train=2, num_val=1,
                                 image_size=(16, 16))


@pytest.mark.parametrize('layout, how', list(LAYOUT_CASES), ids=[' '.join(c) for c in LAYOUT_CASES])
def test_a_dataset_entry_that_leads_out_of_the_dataset_is_refused(layout, how, tmp_path, outside,
                                                                   step_tmpdir, capsys):
  raw = _raw(tmp_path, layout)
  edit, fragments = LAYOUT_CASES[layout, how]
  edit(tmp_path / 'raw', outside)
  out = tmp_path / 'out' / 'tfrecords.tar.gz'
  status, _, err = _outcome(run_step('build_data', f'--dataset={layout}', f'--raw_data={raw}',
                                  f'--output={out}', '--num_workers=1', '--splits=train', check=False))
  assert_refused(status, err, *fragments(tmp_path / 'raw', outside))
  assert not (tmp_path / 'out').exists() and os.listdir(step_tmpdir) == []


def test_skip_invalid_does_not_skip_an_entry_that_leads_out(tmp_path, outside, capsys):
  """--skip_invalid leaves out broken examples; an entry leading out is not one, it is refused."""
  raw = _raw(tmp_path, 'pascal_voc_seg')
  _replace_line_2(_voc_list(tmp_path / 'raw'), '../../../../outside/secret')
  status, _, err = _outcome(run_step('build_data', '--dataset=pascal_voc_seg',
                                  f'--raw_data={raw}', f'--output={tmp_path / "o.tar.gz"}',
                                  '--num_workers=1', '--skip_invalid', check=False))
  assert_refused(status, err, "has a '..' component")


def test_links_that_stay_inside_and_a_linked_root_are_accepted(tmp_path, capsys):
  """Containment is about where a file really is: a link to another file of the dataset, and a
  dataset folder reached through a link, are fine."""
  raw = _raw(tmp_path, 'pascal_voc_seg')
  voc = _voc(tmp_path / 'raw')
  first = _first_line(_voc_list(tmp_path / 'raw'))
  second = _voc_list(tmp_path / 'raw').read_text().split()[1]
  _link(voc / 'JPEGImages' / f'{second}.jpg', voc / 'JPEGImages' / f'{first}.jpg')
  (tmp_path / 'elsewhere').symlink_to(raw)
  out = tmp_path / 'tfrecords.tar.gz'
  status, _, err = _outcome(run_step('build_data', '--dataset=pascal_voc_seg',
                                  f'--raw_data={tmp_path / "elsewhere"}', f'--output={out}',
                                  '--num_workers=1', '--splits=train', check=False))
  assert status == 0, err
  with tarfile.open(out) as tar:
    manifest = json.load(tar.extractfile('dataset.json'))
  assert manifest['splits']['train']['num_examples'] == 2


@pytest.mark.process
def test_a_list_line_leading_out_fails_build_data_as_users_run_it(tmp_path, outside):
  """The case first seen: a VOC list line `../..` made build_data exit 0 with the outside JPEG in
  the shard. Run as a user runs it (a subprocess), with an archive input."""
  raw = _raw(tmp_path, 'pascal_voc_seg')
  _replace_line_2(_voc_list(tmp_path / 'raw'), '../../../../../outside/secret')
  archive = tmp_path / 'raw.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(raw, arcname='.')
  out = tmp_path / 'out' / 'tfrecords.tar.gz'
  result = run_step('build_data', '--dataset=pascal_voc_seg', f'--raw_data={archive}',
                    f'--output={out}', '--num_workers=1', check=False, isolated=True)
  line = assert_refused(result.returncode, result.stderr,
                        'ImageSets/Segmentation/train.txt, line 2', "has a '..' component")
  assert str(archive) in line and '/deeplab-input-' not in line  # the user's file, not a temp one
  assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------- dataset.json

@pytest.fixture(scope='module')
def tfrecords_folder(tmp_path_factory):
  """The extracted tfrecords.tar.gz of a tiny folder dataset (a folder input can hold links)."""
  return synthetic_tfrecords(tmp_path_factory.mktemp('containment_tfrecords'), 2, 1, (24, 24),
                             extract=True)


@pytest.mark.parametrize('how', ['absolute', 'dotdot', 'linked'])
def test_a_shard_name_that_leads_out_of_the_tfrecords_is_refused(how, tmp_path, tfrecords_folder,
                                                                 outside, step_tmpdir, capsys):
  tfrecords = tmp_path / 'tfrecords'
  shutil.copytree(tfrecords_folder, tfrecords)
  data = json.loads((tfrecords / 'dataset.json').read_text())
  shard = data['splits']['train']['shards'][0]  # moved outside, and named there in each way
  moved = outside / shard['file']
  shutil.move(tfrecords / shard['file'], moved)
  name = {'absolute': str(moved), 'dotdot': f'../outside/{moved.name}', 'linked': shard['file']}[how]
  if how == 'linked':
    (tfrecords / shard['file']).symlink_to(moved)
  shard['file'] = name
  (tfrecords / 'dataset.json').write_text(json.dumps(data))
  out = tmp_path / 'out' / 'checkpoint.tar.gz'
  status, stdout, err = _outcome(run_step('train', f'--tfrecords={tfrecords}', f'--output={out}',
      f'--train_logdir={tmp_path / "logdir"}', '--training_number_of_steps=1', check=False))
  problem = {'absolute': 'is an absolute path', 'dotdot': "has a '..' component",
             'linked': 'leads outside'}[how]
  assert_refused(status, err, str(tfrecords / 'dataset.json'), repr(name), problem)
  assert not (tmp_path / 'out').exists() and not (tmp_path / 'logdir').exists()
  assert stdout == '' and os.listdir(step_tmpdir) == []  # not a step trained


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture
def checkpoint_folder(tmp_path, tiny_checkpoint):
  """The extracted checkpoint.tar.gz of a few training steps (a folder input can hold links)."""
  folder = tmp_path / 'checkpoint'
  with tarfile.open(tiny_checkpoint) as tar:
    tar.extractall(folder, filter='data')
  return folder


def _prefix_name(folder):
  return json.loads((folder / 'model.json').read_text())['checkpoint']


def _index_naming(folder, name):
  (folder / 'checkpoint').write_text(f'model_checkpoint_path: "{name}"\n'
                                     f'all_model_checkpoint_paths: "{name}"\n')


def _link_out(folder, outside, pattern):
  """The files of `folder` matching `pattern` moved to `outside`, each replaced by a link to it."""
  for path in folder.glob(pattern):
    shutil.move(path, outside / path.name)
    path.symlink_to(outside / path.name)


def _moved_outside(folder, outside):
  """The checkpoint's files moved to `outside`; returns the prefix there."""
  name = _prefix_name(folder)
  for path in folder.glob(f'{name}.*'):
    shutil.move(path, outside / path.name)
  return outside / name


CHECKPOINT_CASES = {
    'index absolute': (lambda folder, out: _index_naming(folder, _moved_outside(folder, out)),
                       lambda folder, out: [f'{folder / "checkpoint"}, line 1',
                                            'is an absolute path']),
    'index dotdot': (lambda folder, out: _index_naming(
        folder, f'../outside/{_moved_outside(folder, out).name}'),
                     lambda folder, out: [f'{folder / "checkpoint"}, line 1',
                                          "has a '..' component"]),
    'linked data file': (lambda folder, out: _link_out(folder, out, f'{_prefix_name(folder)}.data-*'),
                         lambda folder, out: ['leads outside', '.data-00000-of-00001']),
    'linked index': (lambda folder, out: _link_out(folder, out, 'checkpoint'),
                     lambda folder, out: ["entry 'checkpoint' leads outside"]),
    'model.json absolute': (lambda folder, out: _card_naming(folder, str(out / 'model.ckpt-3')),
                            lambda folder, out: [f'{folder / "model.json"}', 'is an absolute path']),
    'model.json dotdot': (lambda folder, out: _card_naming(folder, '../outside/model.ckpt-3'),
                          lambda folder, out: [f'{folder / "model.json"}',
                                               "has a '..' component"]),
}


def _card_naming(folder, name):
  card = json.loads((folder / 'model.json').read_text())
  card['checkpoint'] = name
  (folder / 'model.json').write_text(json.dumps(card))


@pytest.mark.parametrize('how', list(CHECKPOINT_CASES))
def test_a_checkpoint_name_that_leads_out_of_the_checkpoint_is_refused(how, tmp_path,
                                                                       checkpoint_folder, outside,
                                                                       step_tmpdir, capsys):
  edit, fragments = CHECKPOINT_CASES[how]
  edit(checkpoint_folder, outside)
  out = tmp_path / 'out' / 'model.tar.gz'
  status, _, err = _outcome(run_step('export', f'--checkpoint={checkpoint_folder}',
                                  f'--output={out}', '--export_formats=frozen_graph', check=False))
  assert_refused(status, err, *fragments(checkpoint_folder, outside))
  assert not (tmp_path / 'out').exists() and os.listdir(step_tmpdir) == []


def test_an_index_naming_a_missing_checkpoint_is_named(tmp_path, checkpoint_folder, capsys):
  _index_naming(checkpoint_folder, 'model.ckpt-999')
  status, _, err = _outcome(run_step('export', f'--checkpoint={checkpoint_folder}',
                                  f'--output={tmp_path / "m.tar.gz"}', check=False))
  assert_refused(status, err, f'{checkpoint_folder / "checkpoint"}, line 1', "'model.ckpt-999'",
                 'no model.ckpt-999.index')


# ----------------------------------------------------------------------------- the helper

def test_resolve_accepts_what_stays_inside_and_names_what_does_not(tmp_path):
  root = tmp_path / 'root'
  (root / 'sub').mkdir(parents=True)
  (root / 'sub' / 'inner').symlink_to(root / 'sub')
  (root / 'out').symlink_to(tmp_path)
  assert containment.resolve(str(root), 'sub/a.png', 'list.txt', 3) == str(root / 'sub' / 'a.png')
  assert containment.resolve(str(root), 'sub/inner/a.png', 'list.txt') == str(
      root / 'sub' / 'inner' / 'a.png')
  for name, problem in (('/etc/passwd', 'is an absolute path'), ('sub/../../x', "'..' component"),
                        ('out/x', 'leads outside'), ('', 'is empty'), ('a\0b', 'NUL'),
                        (7, 'is not a text path'), (None, 'is missing')):
    with pytest.raises(UserError, match='list.txt, line 3: entry .*' + problem):
      containment.resolve(str(root), name, 'list.txt', 3)
