"""Numbers read from model.json and dataset.json are checked as strictly as flags: the schemas'
bounds and choices (with upper bounds on every value that sizes memory), a model.json against the
weights it describes, and training labels against the class count. Each refusal is one `error:`
line naming the file and the value, exit 1, no traceback, no output."""
import json
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from deeplab import config
from deeplab.config import (BuildConfig, EvalConfig, ExportConfig, ModelConfig, TrainConfig,
                            MAX_CLASSES, MAX_IMAGE_SIDE)
from deeplab.errors import UserError
from tests.conftest import run_step, synthetic_tfrecords
from tests.deeplab.test_containment import _outcome, assert_refused


# ----------------------------------------------------------------------------- the bounds

# schema, field values beyond a bound, what the message says; the same schema with the bound itself
# is accepted.
BEYOND = [
    (ModelConfig, dict(num_classes=MAX_CLASSES + 1), 'num_classes'),
    (ModelConfig, dict(depth_multiplier=config.MAX_DEPTH_MULTIPLIER + 0.5), 'depth_multiplier'),
    (ModelConfig, dict(min_resize_value=MAX_IMAGE_SIDE + 1), 'min_resize_value'),
    (ModelConfig, dict(max_resize_value=MAX_IMAGE_SIDE + 1), 'max_resize_value'),
    (ModelConfig, dict(atrous_rates=(6, config.MAX_ATROUS_RATE + 1)), 'atrous_rates'),
    (ModelConfig, dict(model_variant='resnet_v1_50', multi_grid=(1, 2, config.MAX_MULTI_GRID + 1)),
     'multi_grid'),
    (ModelConfig, dict(aspp_convs_filters=config.MAX_HEAD_FILTERS + 1), 'aspp_convs_filters'),
    (ModelConfig, dict(decoder_filters=config.MAX_HEAD_FILTERS + 1), 'decoder_filters'),
    (ModelConfig, dict(image_pooling_crop_size=(MAX_IMAGE_SIDE + 1, 513)),
     'image_pooling_crop_size'),
    (TrainConfig, dict(train_crop_size=(513, MAX_IMAGE_SIDE + 1)), 'train_crop_size'),
    (TrainConfig, dict(max_scale_factor=config.MAX_SCALE + 1), 'max_scale_factor'),
    (EvalConfig, dict(eval_crop_size=(MAX_IMAGE_SIDE + 1, 513)), 'eval_crop_size'),
    (EvalConfig, dict(eval_scales=(1.0, config.MAX_SCALE + 1)), 'eval_scales'),
    (ExportConfig, dict(tflite_input_size=(1000000, 1000000)), 'tflite_input_size'),
    (ExportConfig, dict(export_crop_size=(513, MAX_IMAGE_SIDE + 1)), 'export_crop_size'),
    (ExportConfig, dict(inference_scales=(config.MAX_SCALE + 1,)), 'inference_scales'),
    (BuildConfig, dict(num_classes=MAX_CLASSES + 1), 'num_classes'),
]


@pytest.mark.parametrize('schema, values, name', BEYOND, ids=[b[2] for b in BEYOND])
def test_a_value_that_sizes_memory_has_an_upper_bound(schema, values, name):
  with pytest.raises(UserError, match=f'--{name}=.*must be <='):
    schema(**values)


def test_the_bounds_themselves_are_accepted():
  ModelConfig(num_classes=MAX_CLASSES, depth_multiplier=config.MAX_DEPTH_MULTIPLIER,
              min_resize_value=MAX_IMAGE_SIDE, max_resize_value=MAX_IMAGE_SIDE,
              atrous_rates=(config.MAX_ATROUS_RATE,), aspp_convs_filters=config.MAX_HEAD_FILTERS)
  TrainConfig(train_crop_size=(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), max_scale_factor=config.MAX_SCALE)
  ExportConfig(tflite_input_size=(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))


def test_the_tflite_writer_refuses_a_size_beyond_the_bound_before_the_converter_runs(tmp_path):
  """1000000x1000000 crashed the converter with SIGSEGV; the writer checks whatever it is given."""
  from deeplab.export import tflite
  with pytest.raises(UserError, match=f'1000000x1000000: expected sides of 1..{MAX_IMAGE_SIDE}'):
    tflite.write_tflite(ModelConfig(num_classes=4), str(tmp_path / 'no_checkpoint'),
                        str(tmp_path / 'model.tflite'), (1000000, 1000000))
  assert not (tmp_path / 'model.tflite').exists()


def test_the_tflite_size_flag_is_bounded(tmp_path, tiny_checkpoint, capsys):
  status, _, err = _outcome(run_step('export', f'--checkpoint={tiny_checkpoint}',
                                  f'--output={tmp_path / "m.tar.gz"}',
                                  '--tflite_input_size=1000000,1000000', check=False))
  assert status == 2 and 'Traceback' not in err  # a flag error: argparse's status
  assert f'--tflite_input_size: must be <= {MAX_IMAGE_SIDE}, got 1000000' in err
  assert not (tmp_path / 'm.tar.gz').exists()


# ----------------------------------------------------------------------------- model.json

@pytest.fixture(scope='module')
def checkpoint_template(tiny_checkpoint, tmp_path_factory):
  folder = tmp_path_factory.mktemp('bounds_checkpoint')
  with tarfile.open(tiny_checkpoint) as tar:
    tar.extractall(folder, filter='data')
  return folder


@pytest.fixture(scope='module')
def model_template(tiny_checkpoint, tmp_path_factory):
  """An exported model (frozen graph) of the tiny checkpoint, extracted."""
  folder = tmp_path_factory.mktemp('bounds_model')
  run_step('export', f'--checkpoint={tiny_checkpoint}', f'--output={folder / "model.tar.gz"}',
           '--export_formats=frozen_graph')
  with tarfile.open(folder / 'model.tar.gz') as tar:
    tar.extractall(folder / 'model', filter='data')
  return folder / 'model'


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  folder = tmp_path_factory.mktemp('bounds_images')
  Image.fromarray(np.full((20, 24, 3), 120, np.uint8)).save(folder / 'a.png')
  return folder


def _edited_card(template, folder, edits):
  """A copy of the artifact folder `template` whose model.json has `edits` ({(section, key):
  value}; section None for the top level)."""
  shutil.copytree(template, folder)
  card = json.loads((folder / 'model.json').read_text())
  for (section, key), value in edits.items():
    (card[section] if section else card)[key] = value
  (folder / 'model.json').write_text(json.dumps(card))
  return folder


# The cases seen, each with the steps that read the card (evaluate and export read a checkpoint's,
# predict an exported model's) and what the error line says.
CARD_CASES = {
    'min_resize_value=1000000': ({('model', 'min_resize_value'): 1000000},
                                 ('evaluate', 'export', 'predict'),
                                 '"model": min_resize_value=1000000: must be <= 8192'),
    'model num_classes=1e9': ({('model', 'num_classes'): 1000000000},
                              ('evaluate', 'export'), '"model": num_classes=1000000000: must be <= 256'),
    'dataset num_classes=1e9': ({('dataset', 'num_classes'): 1000000000},
                                ('export', 'predict'),
                                '"dataset": num_classes=1000000000: must be <= 256'),
    'depth_multiplier=1000': ({('model', 'depth_multiplier'): 1000}, ('evaluate', 'export'),
                              '"model": depth_multiplier=1000.0: must be <= 4.0'),
    'training crop 1000000': ({('training', 'train_crop_size'): [1000000, 1000000]}, ('export',),
                              '"training": train_crop_size=1000000,1000000: must be <= 8192'),
    'num_classes as text': ({('dataset', 'num_classes'): '4'}, ('predict',),
                            '"dataset": num_classes=\'4\': expected an integer'),
    'class counts differ': ({('dataset', 'num_classes'): 3, ('dataset', 'class_names'): ['a'] * 3,
                             ('dataset', 'colormap'): [[0, 0, 0]] * 3}, ('export', 'predict'),
                            '"model" has num_classes=4 but "dataset" has num_classes=3'),
}


def _card_steps():
  return [(case, step) for case, (_, steps, _) in CARD_CASES.items() for step in steps]


@pytest.mark.parametrize('case, step', _card_steps(), ids=[' '.join(c) for c in _card_steps()])
def test_a_model_json_value_beyond_its_bounds_is_one_line(case, step, tmp_path, checkpoint_template,
                                                          model_template, images, tiny_tfrecords,
                                                          capsys):
  edits, _, message = CARD_CASES[case]
  out = tmp_path / 'out' / 'output'
  if step == 'predict':
    model = _edited_card(model_template, tmp_path / 'model', edits)
    argv = [f'--model={model}', f'--images={images}']
    card = model / 'model.json'
  else:
    checkpoint = _edited_card(checkpoint_template, tmp_path / 'checkpoint', edits)
    argv = [f'--checkpoint={checkpoint}'] + ([f'--tfrecords={tiny_tfrecords}'] if step == 'evaluate'
                                             else ['--export_formats=tflite'])
    card = checkpoint / 'model.json'
  status, _, err = _outcome(run_step(step, *argv, f'--output={out}', check=False))
  assert_refused(status, err, f'{card}: {message}')
  assert not (tmp_path / 'out').exists()


# Within the bounds, but not what the weights are: found before a variable is restored.
LIES = {
    'depth_multiplier': ({('model', 'depth_multiplier'): 0.5},
                         'MobilenetV2/Conv/weights is [3, 3, 3, 8] in the checkpoint but [3, 3, 3, 16] '
                         'in the model (check model_variant, depth_multiplier'),
    'num_classes': ({('model', 'num_classes'): 5, ('dataset', 'num_classes'): 5,
                     ('dataset', 'class_names'): ['a'] * 5, ('dataset', 'colormap'): [[0, 0, 0]] * 5},
                    'logits/semantic/weights is [1, 1, 256, 4] in the checkpoint but [1, 1, 256, 5] in '
                    'the model (check num_classes)'),
}


@pytest.mark.parametrize('lie', list(LIES))
def test_a_model_json_that_does_not_describe_its_weights_is_refused(lie, tmp_path,
                                                                    checkpoint_template, capsys):
  edits, message = LIES[lie]
  checkpoint = _edited_card(checkpoint_template, tmp_path / 'checkpoint', edits)
  out = tmp_path / 'out' / 'model.tar.gz'
  status, _, err = _outcome(run_step('export', f'--checkpoint={checkpoint}', f'--output={out}',
                                  '--export_formats=frozen_graph', check=False))
  assert_refused(status, err, 'the checkpoint does not hold the model its model.json', message)
  assert not (tmp_path / 'out').exists()


def test_evaluate_refuses_a_model_json_that_does_not_describe_its_weights(
    tmp_path, checkpoint_template, tiny_tfrecords, capsys):
  checkpoint = _edited_card(checkpoint_template, tmp_path / 'checkpoint', LIES['depth_multiplier'][0])
  out = tmp_path / 'out' / 'metrics.json'
  status, _, err = _outcome(run_step('evaluate', f'--checkpoint={checkpoint}',
                                  f'--tfrecords={tiny_tfrecords}', f'--output={out}', check=False))
  assert_refused(status, err, LIES['depth_multiplier'][1])
  assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------- dataset.json

@pytest.fixture(scope='module')
def one_example_tfrecords(tmp_path_factory):
  """Extracted TFRecords of a folder dataset (4 classes) whose train split is one example, and
  how many of that example's label pixels hold class 3."""
  folder = tmp_path_factory.mktemp('one_example')
  tfrecords = synthetic_tfrecords(folder, 1, 1, (40, 40), extract=True)
  class_3 = int((np.asarray(Image.open(folder / 'raw' / 'masks' / 'train_00000.png')) == 3).sum())
  assert class_3 > 0  # the synthetic example holds every class
  return tfrecords, class_3


def _edited_manifest(template, folder, **values):
  shutil.copytree(template, folder)
  manifest = json.loads((folder / 'dataset.json').read_text())
  manifest.update(values)
  (folder / 'dataset.json').write_text(json.dumps(manifest))
  return folder


MANIFEST_CASES = {
    'num_classes=1e9': (dict(num_classes=1000000000), 'num_classes=1000000000: must be <= 256'),
    'num_classes float': (dict(num_classes=4.0), 'num_classes=4.0: expected an integer'),
    'ignore_label=300': (dict(ignore_label=300), 'ignore_label=300: must be <= 255'),
    'names short': (dict(class_names=['a']), 'class_names: expected 4 names (num_classes)'),
    'colour out of range': (dict(colormap=[[0, 0, 0]] * 3 + [[0, 0, 300]]),
                            'colormap: expected 4 colours (num_classes) of three values 0..255'),
}


@pytest.mark.parametrize('case', list(MANIFEST_CASES))
def test_a_dataset_json_value_beyond_its_bounds_is_one_line(case, tmp_path, one_example_tfrecords,
                                                            capsys):
  values, message = MANIFEST_CASES[case]
  tfrecords = _edited_manifest(one_example_tfrecords[0], tmp_path / 'tfrecords', **values)
  out = tmp_path / 'out' / 'checkpoint.tar.gz'
  status, stdout, err = _outcome(run_step('train', f'--tfrecords={tfrecords}',
                                       f'--output={out}', f'--train_logdir={tmp_path / "logdir"}', check=False))
  assert_refused(status, err, f'{tfrecords / "dataset.json"}: {message}')
  assert stdout == '' and not (tmp_path / 'out').exists() and not (tmp_path / 'logdir').exists()


# ----------------------------------------------------------------------------- labels in training

def test_out_of_range_pixels_counts_what_is_neither_a_class_nor_ignored():
  from deeplab import input as model_input
  from deeplab.compat import tf
  label = np.array([[0, 1, 2, 3], [3, 255, 254, 2]], np.uint8)[:, :, None]
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    counts = [session.run(model_input.out_of_range_pixels(tf.constant(label), classes, 255))
              for classes in (4, 3, 2)]
  assert counts == [1, 3, 5]  # 254; 3, 3, 254; 2, 3, 3, 254, 2


@pytest.mark.heavy
def test_training_reports_labels_outside_the_classes(tmp_path, one_example_tfrecords, capsys,
                                                     caplog):
  """dataset.json claims 3 classes over labels holding class 3: train warns once and counts the
  pixels in every metric line (here exactly: each batch is the one example twice)."""
  template, class_3 = one_example_tfrecords
  manifest = json.loads((template / 'dataset.json').read_text())
  tfrecords = _edited_manifest(template, tmp_path / 'tfrecords', num_classes=3,
                               class_names=manifest['class_names'][:3],
                               colormap=manifest['colormap'][:3])
  out = tmp_path / 'checkpoint.tar.gz'
  status, stdout, err = _outcome(run_step('train', f'--tfrecords={tfrecords}', f'--output={out}',
      f'--train_logdir={tmp_path / "logdir"}', '--training_number_of_steps=3', '--log_steps=1',
      '--depth_multiplier=0.25', '--train_crop_size=33,33', '--train_batch_size=2',
      '--min_scale_factor=1', '--max_scale_factor=1', check=False))
  assert status == 0, err
  lines = [json.loads(line) for line in stdout.splitlines() if '"step"' in line]
  assert [m['out_of_range_label_pixels'] for m in lines] == [2 * class_3, 4 * class_3, 6 * class_3]
  warnings = [r.getMessage() for r in caplog.records if 'label pixels so far' in r.getMessage()]
  assert len(warnings) == 1 and 'neither a class (0..2, dataset.json has num_classes=3)' in warnings[0]
  assert out.exists()
