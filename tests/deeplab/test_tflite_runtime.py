"""The TFLite runtime predict and serve run by default: a model of any input size on one
interpreter whose input follows each image's size, safe to call from several threads, and taken
by --model_format=auto only when it takes any size (deeplab/inference.py TFLitePredictor,
find_model; deeplab/export/tflite.py)."""
import concurrent.futures
import dataclasses
import shutil

import numpy as np
import pytest

from deeplab import checkpoint, inference
from deeplab.config import ExportConfig
from deeplab.datasets.manifest import DatasetInfo
from deeplab.errors import UserError
from deeplab.export import agreement, freeze, frozen_graph, tflite
from tests.conftest import assert_one_error_line, run_step
from tests.deeplab.export.test_rewrites import TINY, _images, _tiny_checkpoint

# Every test here builds, freezes, trains or converts whole networks (`make test`, not test-fast).
pytestmark = pytest.mark.heavy

FIXED_SIZE = (33, 41)
# Sizes in the order predict sees them: the interpreter's input is resized at each change, and
# back to a size it had before.
SIZES = [(65, 65), (40, 71), (65, 65), (97, 130), (40, 71)]


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  """{name: path}: the frozen graph of a random TINY checkpoint whose labels follow the image, its
  TFLite of any input size, and of FIXED_SIZE."""
  folder = tmp_path_factory.mktemp('tflite_runtime')
  prefix = _tiny_checkpoint(folder, TINY, far_from_identity=False)
  paths = {'frozen_graph': folder / inference.FROZEN_GRAPH, 'any_size': folder / 'any.tflite',
           'fixed_size': folder / 'fixed.tflite'}
  frozen_graph.write_frozen_graph(freeze.freeze(TINY, prefix, ExportConfig()),
                                  str(paths['frozen_graph']))
  tflite.write_tflite(TINY, prefix, str(paths['any_size']))
  tflite.write_tflite(TINY, prefix, str(paths['fixed_size']), FIXED_SIZE)
  return paths


def test_one_interpreter_follows_each_images_size(models):
  model = inference.TFLitePredictor(str(models['any_size']))
  frozen = inference.FrozenGraphPredictor(str(models['frozen_graph']))
  assert model.input_size is None
  images = _images(SIZES)
  labels = [model.predict(image) for image in images]
  for image, found in zip(images, labels):
    assert found.shape == image.shape[:2] and found.dtype == np.int32
    fresh = inference.TFLitePredictor(str(models['any_size']))  # its first and only size
    np.testing.assert_array_equal(found, fresh.predict(image))
    fresh.close()
  assert all(len(np.unique(found)) > 1 for found in labels)  # a wrong pixel would show
  agreements = agreement.compare_formats({'frozen': frozen, 'tflite': model}, images, 4, 'frozen')
  assert agreements['tflite']['pixel_agreement'] >= 0.999, agreements
  model.close()
  frozen.close()


def test_a_fixed_size_model_resizes_the_image_and_the_labels_back(models):
  model = inference.TFLitePredictor(str(models['fixed_size']))
  assert model.input_size == FIXED_SIZE
  image = _images([(65, 65)])[0]
  labels = model.predict(image)
  assert labels.shape == (65, 65)
  at_size = model.predict(inference.resize_image(image, FIXED_SIZE))
  np.testing.assert_array_equal(labels, inference.resize_labels(at_size, (65, 65)))
  model.close()


def test_predict_from_many_threads_gives_the_labels_of_one_call_at_a_time(models):
  """serve's request threads share one predictor: an interpreter is not thread-safe, so predict
  holds a lock; without it, threads resizing and filling the one input race each other."""
  model = inference.TFLitePredictor(str(models['any_size']))
  images = _images([(65, 65), (40, 71), (97, 130)], seed=3)
  expected = [model.predict(image) for image in images]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    found = list(pool.map(lambda index: (index, model.predict(images[index % 3])), range(48)))
  for index, labels in found:
    np.testing.assert_array_equal(labels, expected[index % 3])
  model.close()


def _folder(tmp_path, name, *files):
  """A folder holding copies of `files` ((source, name inside) pairs)."""
  folder = tmp_path / name
  folder.mkdir()
  for source, target in files:
    shutil.copy(source, folder / target)
  return folder


def test_auto_takes_tflite_first_only_when_it_takes_any_size(models, tmp_path):
  frozen = (models['frozen_graph'], inference.FROZEN_GRAPH)
  both = _folder(tmp_path, 'any_size', frozen, (models['any_size'], inference.TFLITE_FILE))
  assert inference.find_model(str(both)) == ('tflite', str(both / inference.TFLITE_FILE))
  # A fixed-size model would resize every image to its size: the frozen graph is taken instead...
  fixed = _folder(tmp_path, 'fixed', frozen, (models['fixed_size'], inference.TFLITE_FILE))
  assert inference.find_model(str(fixed)) == ('frozen_graph', str(fixed / inference.FROZEN_GRAPH))
  # ... unless it is all there is, or asked for.
  assert inference.find_model(str(fixed), 'tflite')[0] == 'tflite'
  alone = _folder(tmp_path, 'alone', (models['fixed_size'], inference.TFLITE_FILE))
  assert inference.find_model(str(alone))[0] == 'tflite'


def _broken_tflite(path):
  """The TFLite identifier, then bytes that are no FlatBuffer a model can be read from."""
  path.write_bytes(b'\x1c\x00\x00\x00TFL3' + bytes(range(256)) * 4)


def test_a_broken_tflite_is_passed_over_by_auto_and_refused_when_it_is_chosen(models, tmp_path):
  broken = _folder(tmp_path, 'broken', (models['frozen_graph'], inference.FROZEN_GRAPH))
  _broken_tflite(broken / inference.TFLITE_FILE)
  assert inference.find_model(str(broken))[0] == 'frozen_graph'
  with pytest.raises(UserError, match='not a TFLite model LiteRT can load'):
    inference.load_model(str(broken), 'tflite')


def test_predict_with_a_broken_tflite_model_says_so_in_one_line(tmp_path):
  model = tmp_path / 'model'
  model.mkdir()
  _broken_tflite(model / inference.TFLITE_FILE)
  dataset = DatasetInfo(name='tiny', num_classes=4, ignore_label=255,
                        class_names=['a', 'b', 'c', 'd'], colormap=[[0, 0, 0]] * 4)
  checkpoint.ModelCard(TINY, dataset).write(str(model))
  images = tmp_path / 'images'
  images.mkdir()
  from PIL import Image
  Image.fromarray(_images([(40, 71)])[0]).save(images / 'photo.png')
  output = tmp_path / 'out' / 'predictions.tar.gz'
  result = run_step('predict', f'--model={model}', f'--images={images}', f'--output={output}',
                    check=False)
  assert_one_error_line(result, 'model.tflite', 'not a TFLite model LiteRT can load')
  assert not output.parent.exists() or not any(output.parent.iterdir())


@pytest.mark.parametrize('config, options', [
    (TINY, ExportConfig(inference_scales=(0.75, 1.0), add_flipped_images=True,
                        export_crop_size=(65, 65))),
    (dataclasses.replace(TINY, min_resize_value=50, max_resize_value=100), ExportConfig()),
], ids=['scales_flips_crop', 'resize_range'])
def test_the_tflite_model_computes_what_the_frozen_graph_does(tmp_path, config, options):
  """With scales, flips and a crop size the frozen graph averages probabilities, and with a
  resize range it resizes probabilities back to the image: so does the TFLite model predict and
  serve run in its place (the argmax of resized logits would differ)."""
  prefix = _tiny_checkpoint(tmp_path, config, far_from_identity=False)
  frozen_graph.write_frozen_graph(freeze.freeze(config, prefix, options),
                                  str(tmp_path / inference.FROZEN_GRAPH))
  tflite.write_tflite(config, prefix, str(tmp_path / 'model.tflite'), options=options)
  frozen = inference.FrozenGraphPredictor(str(tmp_path / inference.FROZEN_GRAPH))
  model = inference.TFLitePredictor(str(tmp_path / 'model.tflite'))
  from ai_edge_litert.interpreter import Interpreter
  outputs = Interpreter(model_path=str(tmp_path / 'model.tflite')).get_output_details()
  assert [output['name'] for output in outputs] == [inference.PREDICTIONS_OUTPUT,
                                                     inference.PROBABILITIES_OUTPUT]
  images = _images([(40, 71), (97, 130), (200, 90)])
  agreements = agreement.compare_formats({'frozen': frozen, 'tflite': model}, images, 4, 'frozen')
  assert agreements['tflite']['pixel_agreement'] >= 0.999, agreements
  frozen.close()
  model.close()
