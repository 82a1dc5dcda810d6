"""Shipping a model: SavedModel and TFLite exports against the frozen graph, and the
format-detecting loader."""
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from deeplab import checkpoint, export
from deeplab.compat import tf
from deeplab.errors import UserError
from tests.conftest import require_fixtures, run_step


def _extract(archive, folder):
  folder.mkdir()
  with tarfile.open(archive) as tar:
    tar.extractall(folder, filter='data')
  return folder


@pytest.fixture(scope='module')
def tiny_export(tiny_tfrecords, tiny_checkpoint, tmp_path_factory):
  """The export step's model folder of the tiny checkpoint, plus saved_model/1/ and model.tflite
  (float, the default size) written by the library; int8/model.tflite beside it, calibrated on
  the tiny dataset's images. Returns (model folder, int8 TFLite path, the dataset's images)."""
  root = tmp_path_factory.mktemp('tiny_export')
  run_step('export', f'--checkpoint={tiny_checkpoint}', f'--output={root / "model.tar.gz"}')
  model_dir = _extract(root / 'model.tar.gz', root / 'model')
  checkpoint_dir = _extract(tiny_checkpoint, root / 'checkpoint')
  info = checkpoint.read_model_json(str(checkpoint_dir))
  prefix = checkpoint.resolve_checkpoint_path(str(checkpoint_dir))
  images = [np.asarray(Image.open(path).convert('RGB'))
            for path in sorted((tiny_tfrecords.parent / 'raw' / 'images').glob('*.jpg'))]
  graph_def = _read_graph_def(model_dir / export.FROZEN_GRAPH)
  export.write_saved_model(graph_def, str(model_dir / export.SAVED_MODEL_DIR))
  size = export.default_tflite_size(json.loads((model_dir / 'model.json').read_text()))
  export.write_tflite(info['model'], prefix, str(model_dir / export.TFLITE_FILE), size)
  (root / 'int8').mkdir()
  int8_path = root / 'int8' / export.TFLITE_FILE
  export.write_tflite(info['model'], prefix, str(int8_path), size, 'int8', images)
  return model_dir, int8_path, images


def _read_graph_def(path):
  graph_def = tf.compat.v1.GraphDef()
  graph_def.ParseFromString(path.read_bytes())
  return graph_def


def _test_images(images, size, count=6):
  """`count` uint8 images of `size`: crops of the dataset's images, then uniform noise."""
  rng = np.random.default_rng(0)
  height, width = size
  crops = [image[:height, :width] for image in images if image.shape[0] >= height
           and image.shape[1] >= width][:count - 2]
  noise = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count - len(crops))]
  return crops + noise


def _frozen_probabilities(model_dir, image):
  frozen = export.FrozenModel(str(model_dir / export.FROZEN_GRAPH))
  try:
    return frozen.session.run(export.PROBABILITIES_TENSOR + ':0',
                              {export.INPUT_TENSOR + ':0': image[None]})[0]
  finally:
    frozen.close()


def _png_bytes(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


# ----------------------------------------------------------------------------------- the exports


def test_tiny_exports_agree_with_the_frozen_graph(tiny_export):
  model_dir, int8_path, images = tiny_export
  frozen = export.load_model(str(model_dir))
  assert frozen.format == export.FROZEN_GRAPH_FORMAT  # preferred when a folder holds all three
  float_tflite = export.load_model(str(model_dir), export.TFLITE_FORMAT)
  assert float_tflite.input_size == (65, 65)  # the training crop recorded in model.json
  models = {'frozen': frozen, 'saved_model': export.load_model(str(model_dir), 'saved_model'),
            'tflite': float_tflite, 'int8': export.load_model(str(int8_path))}
  test_images = _test_images(images, float_tflite.input_size)
  agreement = export.compare_formats(models, test_images, num_classes=4, reference='frozen')
  int8_against_float = export.compare_formats(
      {'tflite': float_tflite, 'int8': models['int8']}, test_images, 4, reference='tflite')
  print('agreement with the frozen graph:', agreement)
  print('int8 TFLite against float TFLite:', int8_against_float)
  assert agreement['saved_model']['pixel_agreement'] == 1.0
  assert agreement['tflite']['pixel_agreement'] >= 0.999
  assert agreement['tflite']['num_pixels'] == 6 * 65 * 65
  assert int8_against_float['int8']['miou'] >= 0.5
  for model in models.values():
    model.close()


def test_saved_model_signatures_compute_what_the_frozen_graph_does(tiny_export):
  model_dir, _, images = tiny_export
  image = images[0]
  expected = _frozen_probabilities(model_dir, image)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    meta_graph = tf.compat.v1.saved_model.loader.load(
        session, ['serve'], str(model_dir / export.SAVED_MODEL_DIR))
    signatures = meta_graph.signature_def
    assert set(signatures) == {'serving_default', 'encoded_image'}
    serving_default, encoded = signatures['serving_default'], signatures['encoded_image']
    assert serving_default.method_name == 'tensorflow/serving/predict'
    assert set(serving_default.outputs) == {'semantic_predictions', 'semantic_probabilities'}
    assert [d.size for d in serving_default.inputs['images'].tensor_shape.dim] == [1, -1, -1, 3]
    fetches = [serving_default.outputs[name].name
               for name in ('semantic_predictions', 'semantic_probabilities')]
    labels, probabilities = session.run(fetches, {serving_default.inputs['images'].name: image[None]})
    np.testing.assert_array_equal(probabilities[0], expected)
    np.testing.assert_array_equal(labels[0], expected.argmax(axis=2))
    from_png = session.run(encoded.outputs['semantic_predictions'].name,
                           {encoded.inputs['image_bytes'].name: [_png_bytes(image)]})
    np.testing.assert_array_equal(from_png, labels)


def test_tflite_logits_follow_the_frozen_probabilities(tiny_export):
  from ai_edge_litert.interpreter import Interpreter
  model_dir, _, images = tiny_export
  interpreter = Interpreter(model_path=str(model_dir / export.TFLITE_FILE))
  interpreter.allocate_tensors()
  (image_input,) = interpreter.get_input_details()
  labels_output, logits_output = interpreter.get_output_details()
  assert image_input['dtype'] == np.uint8 and list(image_input['shape']) == [1, 65, 65, 3]
  assert labels_output['dtype'] == np.int32 and list(labels_output['shape']) == [1, 65, 65]
  assert logits_output['dtype'] == np.float32 and list(logits_output['shape']) == [1, 65, 65, 4]
  image = _test_images(images, (65, 65))[0]
  interpreter.set_tensor(image_input['index'], image[None])
  interpreter.invoke()
  logits = interpreter.get_tensor(logits_output['index'])[0]
  softmax = np.exp(logits - logits.max(axis=2, keepdims=True))
  softmax /= softmax.sum(axis=2, keepdims=True)
  np.testing.assert_allclose(softmax, _frozen_probabilities(model_dir, image), atol=1e-4)


def test_int8_tflite_takes_raw_pixels_and_gives_integer_logits(tiny_export):
  from ai_edge_litert.interpreter import Interpreter
  _, int8_path, _ = tiny_export
  interpreter = Interpreter(model_path=str(int8_path))
  (image_input,) = interpreter.get_input_details()
  labels_output, logits_output = interpreter.get_output_details()
  # Scale 1, zero point 0: the uint8 input is the pixel values themselves.
  assert image_input['dtype'] == np.uint8 and image_input['quantization'] == (1.0, 0)
  assert labels_output['dtype'] == np.int32
  assert logits_output['dtype'] == np.int8


def test_exports_are_byte_for_byte_reproducible(tiny_export, tiny_checkpoint, tmp_path):
  model_dir, _, _ = tiny_export
  export.write_saved_model(_read_graph_def(model_dir / export.FROZEN_GRAPH), str(tmp_path / 'sm'))
  assert (tmp_path / 'sm' / 'saved_model.pb').read_bytes() == \
      (model_dir / export.SAVED_MODEL_DIR / 'saved_model.pb').read_bytes()
  checkpoint_dir = _extract(tiny_checkpoint, tmp_path / 'checkpoint')
  export.write_tflite(checkpoint.read_model_json(str(checkpoint_dir))['model'],
                      checkpoint.resolve_checkpoint_path(str(checkpoint_dir)),
                      str(tmp_path / 'again.tflite'), (65, 65))
  assert (tmp_path / 'again.tflite').read_bytes() == (model_dir / export.TFLITE_FILE).read_bytes()


def test_int8_needs_representative_images_and_a_known_quantisation(tiny_export, tiny_checkpoint,
                                                                   tmp_path):
  checkpoint_dir = _extract(tiny_checkpoint, tmp_path / 'checkpoint')
  config = checkpoint.read_model_json(str(checkpoint_dir))['model']
  prefix = checkpoint.resolve_checkpoint_path(str(checkpoint_dir))
  with pytest.raises(UserError, match='needs representative images'):
    export.write_tflite(config, prefix, str(tmp_path / 'm.tflite'), (33, 33), 'int8', [])
  with pytest.raises(UserError, match="quantize='float16'"):
    export.write_tflite(config, prefix, str(tmp_path / 'm.tflite'), (33, 33), 'float16')


def test_the_loader_recognises_formats_by_content(tiny_export, tmp_path):
  model_dir, int8_path, _ = tiny_export
  renamed = tmp_path / 'renamed'
  renamed.mkdir()
  shutil.copy(model_dir / export.TFLITE_FILE, renamed / 'weights.bin')
  shutil.copy(model_dir / export.FROZEN_GRAPH, renamed / 'graph.pb')
  (renamed / 'notes.pb').write_text('# not a graph\n')
  found = export.find_models(str(renamed))
  assert found == {'frozen_graph': [str(renamed / 'graph.pb')], 'saved_model': [],
                   'tflite': [str(renamed / 'weights.bin')]}
  assert export.find_model(str(renamed), 'tflite') == ('tflite', str(renamed / 'weights.bin'))
  assert export.find_model(str(model_dir / 'saved_model')) == \
      ('saved_model', str(model_dir / export.SAVED_MODEL_DIR))
  shutil.copy(int8_path, renamed / 'int8.tflite')
  with pytest.raises(UserError, match='2 tflite models'):
    export.find_model(str(renamed), 'tflite')
  with pytest.raises(UserError, match='no frozen graph, SavedModel or TFLite model'):
    export.find_model(str(tmp_path / 'renamed' / 'notes.pb'))
  with pytest.raises(UserError, match="model format 'onnx'"):
    export.find_model(str(model_dir), 'onnx')
  (tmp_path / 'broken').mkdir()
  (tmp_path / 'broken' / 'graph.pb').write_bytes(b'\x0a\x05abc')  # a node field cut short
  with pytest.raises(UserError, match='not a GraphDef'):
    export.load_model(str(tmp_path / 'broken'))


def test_google_deeplabv3_exports_reproduce_the_golden_mask_and_agree(tmp_path):
  """Google's trained DeepLabv3 MobileNetV2 weights (from the TFLite fixture, as a checkpoint),
  exported as SavedModel and as TFLite at the fixture's 257 x 257: the published golden mask on
  every pixel, and the frozen graph's labels on the demo photos (resized to 257 x 257)."""
  from deeplab.config import ModelConfig
  from tests.reference_model import TFLITE_CONFIG, write_reference_checkpoint
  reference = require_fixtures('reference_models', 'tflite_support', 'deeplabv3.tflite')
  photos = [np.asarray(Image.open(path).convert('RGB').resize((257, 257), Image.BILINEAR))
            for path in sorted(require_fixtures('photos').glob('image*.jpg'))]
  prefix = str(tmp_path / 'model.ckpt')
  write_reference_checkpoint(str(reference), prefix)
  config = ModelConfig(**TFLITE_CONFIG)
  graph_def = export.freeze(config, prefix)
  export.write_frozen_graph(graph_def, str(tmp_path / export.FROZEN_GRAPH))
  export.write_saved_model(graph_def, str(tmp_path / export.SAVED_MODEL_DIR))
  export.write_tflite(config, prefix, str(tmp_path / 'float.tflite'), (257, 257))
  export.write_tflite(config, prefix, str(tmp_path / 'int8.tflite'), (257, 257), 'int8', photos)
  models = {'frozen': export.load_model(str(tmp_path), 'frozen_graph'),
            'saved_model': export.load_model(str(tmp_path), 'saved_model'),
            'tflite': export.load_model(str(tmp_path / 'float.tflite')),
            'int8': export.load_model(str(tmp_path / 'int8.tflite'))}
  horse = np.asarray(Image.open(reference.parent / 'segmentation_input_rotation0.jpg').convert('RGB'))
  golden = np.asarray(Image.open(reference.parent / 'segmentation_golden_rotation0.png')) // 10
  for name in ('saved_model', 'tflite'):
    assert (models[name].predict(horse) == golden).mean() == 1.0, name
  agreement = export.compare_formats(models, [horse] + photos, num_classes=21, reference='frozen')
  int8_against_float = export.compare_formats(
      {'tflite': models['tflite'], 'int8': models['int8']}, [horse] + photos, 21, 'tflite')['int8']
  print('Google DeepLabv3, agreement with the frozen graph:', agreement)
  print('Google DeepLabv3, int8 TFLite against float:', int8_against_float)
  assert agreement['saved_model']['pixel_agreement'] == 1.0
  assert agreement['tflite']['pixel_agreement'] >= 0.999
  assert int8_against_float['miou'] >= 0.8
  for model in models.values():
    model.close()
