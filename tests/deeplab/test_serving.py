"""Shipping a model: SavedModel and TFLite exports against the frozen graph, the format-detecting
loader, the HTTP endpoint (a real server on 127.0.0.1 in a subprocess) and the KServe manifest
(pipelines/kubeflow/inference_service.py). Bounds on images, bodies and slow clients:
tests/test_serving_limits.py."""
import base64
import concurrent.futures
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from deeplab import checkpoint, inference, serving
from deeplab.export import agreement, freeze, frozen_graph, tflite
from deeplab.export import saved_model as saved_model_writer
from deeplab.compat import tf
from deeplab.config import ServeConfig
from deeplab.errors import UserError
from tests.conftest import REPO, run_step

SERVER_START_SECONDS = 120
REQUEST_SECONDS = 60


def _extract(archive, folder):
  folder.mkdir()
  with tarfile.open(archive) as tar:
    tar.extractall(folder, filter='data')
  return folder


@pytest.fixture(scope='module')
def tiny_export(tiny_tfrecords, tiny_checkpoint, tmp_path_factory):
  """The export step's model folder of the tiny checkpoint (frozen graph, saved_model/1/ and a
  float model.tflite of any input size, the defaults); int8/model.tflite beside it, written by the
  library and calibrated on the tiny dataset's images. Returns (model folder, int8 TFLite path,
  the images)."""
  root = tmp_path_factory.mktemp('tiny_export')
  run_step('export', f'--checkpoint={tiny_checkpoint}', f'--output={root / "model.tar.gz"}')
  model_dir = _extract(root / 'model.tar.gz', root / 'model')
  checkpoint_dir = _extract(tiny_checkpoint, root / 'checkpoint')
  card = checkpoint.ModelCard.read(str(checkpoint_dir))
  prefix = checkpoint.resolve_checkpoint_path(str(checkpoint_dir))
  images = [np.asarray(Image.open(path).convert('RGB'))
            for path in sorted((tiny_tfrecords.parent / 'raw' / 'images').glob('*.jpg'))]
  (root / 'int8').mkdir()
  int8_path = root / 'int8' / inference.TFLITE_FILE
  tflite.write_tflite(card.model, prefix, str(int8_path), None, 'int8', images)
  return model_dir, int8_path, images


@pytest.fixture(scope='module')
def frozen_model(tiny_export):
  model = inference.FrozenGraphPredictor(str(tiny_export[0] / inference.FROZEN_GRAPH))
  yield model
  model.close()


@pytest.fixture(scope='module')
def served_model(tiny_export):
  """The model serve and predict run from the export by default (--model_format=auto)."""
  model = inference.load_model(str(tiny_export[0]))
  yield model
  model.close()


def _read_graph_def(path):
  graph_def = tf.compat.v1.GraphDef()
  graph_def.ParseFromString(path.read_bytes())
  return graph_def


# (height, width) of the images the exports are compared on: the dataset's own (72x88), crops
# and noise, odd and even, wide and tall.
TEST_SIZES = ((72, 88), (72, 88), (65, 65), (49, 70), (33, 70), (90, 41))


def _test_images(images, sizes=TEST_SIZES):
  """uint8 images of `sizes`: crops of the dataset's images where one is large enough (a
  different image each time), else uniform noise."""
  rng = np.random.default_rng(0)
  result = []
  for index, (height, width) in enumerate(sizes):
    image = images[index % len(images)]
    if image.shape[0] >= height and image.shape[1] >= width:
      result.append(image[:height, :width])
    else:
      result.append(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
  return result


def _frozen_probabilities(model_dir, image):
  """The probabilities of the frozen graph file as exported (FrozenGraphPredictor would run its atrous
  convolutions dilated: the same sums, rounded differently in the last bit)."""
  graph_def = tf.compat.v1.GraphDef()
  graph_def.ParseFromString((model_dir / inference.FROZEN_GRAPH).read_bytes())
  with tf.Graph().as_default() as graph:
    tf.compat.v1.import_graph_def(graph_def, name='')
    with tf.compat.v1.Session(graph=graph) as session:
      return session.run(inference.PROBABILITIES_TENSOR + ':0',
                         {inference.INPUT_TENSOR + ':0': image[None]})[0]


def _png_bytes(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


# ----------------------------------------------------------------------------------- the exports


@pytest.mark.heavy
def test_tiny_exports_agree_with_the_frozen_graph(tiny_export, served_model):
  model_dir, int8_path, images = tiny_export
  # The TFLite model of any input size is preferred when a folder holds all three.
  assert served_model.format == inference.TFLITE_FORMAT and served_model.input_size is None
  frozen = inference.load_model(str(model_dir), inference.FROZEN_GRAPH_FORMAT)
  float_tflite = inference.load_model(str(model_dir), inference.TFLITE_FORMAT)
  models = {'frozen': frozen, 'saved_model': inference.load_model(str(model_dir), 'saved_model'),
            'tflite': float_tflite, 'int8': inference.load_model(str(int8_path))}
  test_images = _test_images(images)
  for image in test_images:
    assert float_tflite.predict(image).shape == image.shape[:2]  # at the image's own size
  agreements = agreement.compare_formats(models, test_images, num_classes=4, reference='frozen')
  int8_against_float = agreement.compare_formats(
      {'tflite': float_tflite, 'int8': models['int8']}, test_images, 4, reference='tflite')
  print('agreement with the frozen graph:', agreements)
  print('int8 TFLite against float TFLite:', int8_against_float)
  assert agreements['saved_model']['pixel_agreement'] == 1.0
  assert agreements['tflite']['pixel_agreement'] >= 0.999
  assert agreements['tflite']['num_pixels'] == sum(h * w for h, w in TEST_SIZES)
  assert int8_against_float['int8']['miou'] >= 0.5
  for model in models.values():
    model.close()


def test_saved_model_signatures_compute_what_the_frozen_graph_does(tiny_export):
  model_dir, _, images = tiny_export
  image = images[0]
  expected = _frozen_probabilities(model_dir, image)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    meta_graph = tf.compat.v1.saved_model.loader.load(
        session, ['serve'], str(model_dir / inference.SAVED_MODEL_DIR))
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


@pytest.mark.process
def test_tensorflow_2s_own_loader_runs_both_signatures(tiny_export, frozen_model, tmp_path):
  """Outside graph mode, as a TF2 consumer loads it (TF Serving's C++ loader reads the same protos)."""
  model_dir, _, images = tiny_export
  code = (
      'import sys, numpy as np, tensorflow as tf\n'
      'model = tf.saved_model.load(sys.argv[1])\n'
      'image = np.load(sys.argv[2])\n'
      'by_array = model.signatures["serving_default"](images=tf.constant(image[None]))\n'
      'by_bytes = model.signatures["encoded_image"](image_bytes=tf.constant([open(sys.argv[3], "rb").read()]))\n'
      'np.save(sys.argv[4], np.stack([by_array["semantic_predictions"][0], by_bytes["semantic_predictions"][0]]))\n')
  np.save(tmp_path / 'image.npy', images[2])
  (tmp_path / 'image.png').write_bytes(_png_bytes(images[2]))
  subprocess.run([sys.executable, '-c', code, str(model_dir / inference.SAVED_MODEL_DIR),
                  str(tmp_path / 'image.npy'), str(tmp_path / 'image.png'),
                  str(tmp_path / 'labels.npy')], check=True, timeout=300,
                 capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  by_array, by_bytes = np.load(tmp_path / 'labels.npy')
  np.testing.assert_array_equal(by_array, frozen_model.predict(images[2]))
  np.testing.assert_array_equal(by_bytes, by_array)


def test_tflite_logits_follow_the_frozen_probabilities_at_any_size(tiny_export):
  from ai_edge_litert.interpreter import Interpreter
  model_dir, _, images = tiny_export
  interpreter = Interpreter(model_path=str(model_dir / inference.TFLITE_FILE))
  (image_input,) = interpreter.get_input_details()
  labels_output, logits_output = interpreter.get_output_details()
  assert image_input['dtype'] == np.uint8 and list(image_input['shape_signature']) == [1, -1, -1, 3]
  assert labels_output['dtype'] == np.int32 and logits_output['dtype'] == np.float32
  for image in _test_images(images, [(65, 65), (49, 70)]):
    height, width = image.shape[:2]
    interpreter.resize_tensor_input(image_input['index'], [1, height, width, 3])
    interpreter.allocate_tensors()
    interpreter.set_tensor(image_input['index'], image[None])
    interpreter.invoke()
    assert list(interpreter.get_tensor(labels_output['index']).shape) == [1, height, width]
    logits = interpreter.get_tensor(logits_output['index'])[0]
    assert logits.shape == (height, width, 4)
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
  saved_model_writer.write_saved_model(_read_graph_def(model_dir / inference.FROZEN_GRAPH), str(tmp_path / 'sm'))
  assert (tmp_path / 'sm' / 'saved_model.pb').read_bytes() == \
      (model_dir / inference.SAVED_MODEL_DIR / 'saved_model.pb').read_bytes()
  checkpoint_dir = _extract(tiny_checkpoint, tmp_path / 'checkpoint')
  tflite.write_tflite(checkpoint.ModelCard.read(str(checkpoint_dir)).model,
                      checkpoint.resolve_checkpoint_path(str(checkpoint_dir)),
                      str(tmp_path / 'again.tflite'))
  assert (tmp_path / 'again.tflite').read_bytes() == (model_dir / inference.TFLITE_FILE).read_bytes()


def test_int8_needs_representative_images_and_a_known_quantisation(tiny_export, tiny_checkpoint,
                                                                   tmp_path):
  checkpoint_dir = _extract(tiny_checkpoint, tmp_path / 'checkpoint')
  config = checkpoint.ModelCard.read(str(checkpoint_dir)).model
  prefix = checkpoint.resolve_checkpoint_path(str(checkpoint_dir))
  with pytest.raises(UserError, match='needs representative images'):
    tflite.write_tflite(config, prefix, str(tmp_path / 'm.tflite'), (33, 33), 'int8', [])
  with pytest.raises(UserError, match="quantize='float16'"):
    tflite.write_tflite(config, prefix, str(tmp_path / 'm.tflite'), (33, 33), 'float16')


def test_the_loader_recognises_formats_by_content(tiny_export, tmp_path):
  model_dir, int8_path, _ = tiny_export
  renamed = tmp_path / 'renamed'
  renamed.mkdir()
  shutil.copy(model_dir / inference.TFLITE_FILE, renamed / 'weights.bin')
  shutil.copy(model_dir / inference.FROZEN_GRAPH, renamed / 'graph.pb')
  (renamed / 'notes.pb').write_text('# not a graph\n')
  found = inference.find_models(str(renamed))
  assert found == {'frozen_graph': [str(renamed / 'graph.pb')], 'saved_model': [],
                   'tflite': [str(renamed / 'weights.bin')]}
  assert inference.find_model(str(renamed), 'tflite') == ('tflite', str(renamed / 'weights.bin'))
  assert inference.find_model(str(model_dir / 'saved_model')) == \
      ('saved_model', str(model_dir / inference.SAVED_MODEL_DIR))
  shutil.copy(int8_path, renamed / 'int8.tflite')
  with pytest.raises(UserError, match='2 tflite models'):
    inference.find_model(str(renamed), 'tflite')
  with pytest.raises(UserError, match='no frozen graph, SavedModel or TFLite model'):
    inference.find_model(str(tmp_path / 'renamed' / 'notes.pb'))
  with pytest.raises(UserError, match="model format 'onnx'"):
    inference.find_model(str(model_dir), 'onnx')
  (tmp_path / 'broken').mkdir()
  (tmp_path / 'broken' / 'graph.pb').write_bytes(b'\x0a\x05abc')  # a node field cut short
  with pytest.raises(UserError, match='not a GraphDef'):
    inference.load_model(str(tmp_path / 'broken'))


@pytest.mark.heavy
def test_google_deeplabv3_exports_reproduce_the_golden_mask_and_agree(tmp_path):
  """Google's trained DeepLabv3 MobileNetV2 weights (from the TFLite fixture, as a checkpoint),
  exported as SavedModel, as TFLite of any input size (float and int8) and of the fixture's
  257 x 257: the published golden mask on every pixel, and the frozen graph's labels on the demo
  photos at their own sizes (the fixed-size model resizes them to 257 x 257 and back)."""
  from deeplab.config import ExportConfig
  from tests.reference_model import reference_checkpoint_and_photos
  config, prefix, photos, reference = reference_checkpoint_and_photos(tmp_path)
  graph_def = freeze.freeze(config, prefix, ExportConfig())
  frozen_graph.write_frozen_graph(graph_def, str(tmp_path / inference.FROZEN_GRAPH))
  saved_model_writer.write_saved_model(graph_def, str(tmp_path / inference.SAVED_MODEL_DIR))
  tflite.write_tflite(config, prefix, str(tmp_path / 'float.tflite'))
  tflite.write_tflite(config, prefix, str(tmp_path / 'int8.tflite'), None, 'int8', photos)
  tflite.write_tflite(config, prefix, str(tmp_path / 'fixed.tflite'), (257, 257))
  models = {'frozen': inference.load_model(str(tmp_path), 'frozen_graph'),
            'saved_model': inference.load_model(str(tmp_path), 'saved_model'),
            'tflite': inference.load_model(str(tmp_path / 'float.tflite')),
            'int8': inference.load_model(str(tmp_path / 'int8.tflite')),
            'fixed': inference.load_model(str(tmp_path / 'fixed.tflite'))}
  assert models['fixed'].input_size == (257, 257) and models['tflite'].input_size is None
  horse = np.asarray(Image.open(reference.parent / 'segmentation_input_rotation0.jpg').convert('RGB'))
  golden = np.asarray(Image.open(reference.parent / 'segmentation_golden_rotation0.png')) // 10
  for name in ('frozen', 'saved_model', 'tflite', 'fixed'):
    assert (models[name].predict(horse) == golden).mean() == 1.0, name
  for photo in photos:
    np.testing.assert_array_equal(models['tflite'].predict(photo), models['frozen'].predict(photo))
  agreements = agreement.compare_formats(models, [horse] + photos, num_classes=21, reference='frozen')
  int8_against_float = agreement.compare_formats(
      {'tflite': models['tflite'], 'int8': models['int8']}, [horse] + photos, 21, 'tflite')['int8']
  print('Google DeepLabv3, agreement with the frozen graph:', agreements)
  print('Google DeepLabv3, int8 TFLite against float:', int8_against_float)
  assert agreements['saved_model']['pixel_agreement'] == 1.0
  assert agreements['tflite']['pixel_agreement'] == 1.0
  assert int8_against_float['miou'] >= 0.8
  for model in models.values():
    model.close()


# ----------------------------------------------------------------------------------- the server


class Server:
  """A server process on 127.0.0.1 and a free port (its command binds port 0 and logs gunicorn's
  'Listening at' line); `request` speaks HTTP to it."""

  def __init__(self, command, log_path, env=None):
    environment = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
    self.log_path = log_path
    self._log = open(log_path, 'w')
    self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                    env=environment, cwd=str(REPO))
    self.port, self.gunicorn_pid = self._wait_for_listening()
    self._wait_until_healthy()

  @classmethod
  def of_serve(cls, model_dir, log_path, env=None, **settings):
    """The serve step on 127.0.0.1, a free port, with `settings` as its flags."""
    flags = [f'--{name}={value}' for name, value in settings.items()]
    return cls([sys.executable, '-m', 'steps.serve', f'--model={model_dir}', '--host=127.0.0.1',
                '--port=0', *flags], log_path, env)

  def _wait_for_listening(self):
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline and self.process.poll() is None:
      found = re.search(r'Listening at: http://127\.0\.0\.1:(\d+) \((\d+)\)', self.log_path.read_text())
      if found:
        return int(found.group(1)), int(found.group(2))
      time.sleep(0.2)
    raise AssertionError(f'the server did not start:\n{self.log_path.read_text()[-3000:]}')

  def _wait_until_healthy(self):
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
      try:
        if self.request('GET', '/healthz')[0] == 200:
          return
      except OSError:
        time.sleep(0.2)
    raise AssertionError(f'the server never became healthy:\n{self.log_path.read_text()[-3000:]}')

  def request(self, method, path, body=None, headers=None):
    """(status, headers dict with lower-case names, body bytes)."""
    connection = http.client.HTTPConnection('127.0.0.1', self.port, timeout=REQUEST_SECONDS)
    try:
      connection.request(method, path, body=body, headers=headers or {})
      response = connection.getresponse()
      return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
      connection.close()

  def stop(self):
    """SIGTERM, as Valohai and Kubernetes stop a server; returns the exit status."""
    self.process.terminate()
    try:
      return self.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait(timeout=10)
      raise AssertionError(f'the server ignored SIGTERM:\n{self.log_path.read_text()[-3000:]}')
    finally:
      self._log.close()


def _multipart(field, filename, data, content_type):
  boundary = 'deeplab-test-boundary'
  body = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"'
          f'\r\nContent-Type: {content_type}\r\n\r\n').encode() + data + f'\r\n--{boundary}--\r\n'.encode()
  return body, {'Content-Type': f'multipart/form-data; boundary={boundary}'}


def _jpeg_bytes(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def _decoded(data):
  return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def _png_array(data):
  return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope='module')
def server(tiny_export, tmp_path_factory):
  model_dir, _, _ = tiny_export
  log_path = tmp_path_factory.mktemp('server') / 'server.log'
  running = Server.of_serve(model_dir, log_path, url_prefix='org/project/deployment/v1/seg',
                            url_prefix_header='X-VH-Prefix', max_body_bytes=300_000,
                            max_image_pixels=120 * 120)
  try:
    yield running
  finally:
    status = running.stop()
  assert status == 0, running.log_path.read_text()[-3000:]
  # serve() stopped its gunicorn child before returning.
  with pytest.raises(ProcessLookupError):
    os.kill(running.gunicorn_pid, 0)


def _assert_json_error(response, status):
  code, headers, body = response
  assert code == status, body
  assert headers['content-type'] == 'application/json'
  message = json.loads(body)
  assert message['status'] == status and message['error']
  return message['error']


def test_a_jpeg_gives_classes_and_the_label_map_of_the_served_model(server, tiny_export, served_model):
  image = tiny_export[2][0]
  jpeg = _jpeg_bytes(image)
  status, headers, body = server.request('POST', '/predict?include=labels', jpeg,
                                         {'Content-Type': 'image/jpeg'})
  assert status == 200 and headers['content-type'] == 'application/json'
  result = json.loads(body)
  expected = served_model.predict(_decoded(jpeg))
  assert (result['width'], result['height']) == (image.shape[1], image.shape[0])
  np.testing.assert_array_equal(_png_array(base64.b64decode(result['labels_png'])), expected)
  counts = np.bincount(expected.ravel(), minlength=4)
  assert result['classes'] == [
      {'id': int(i), 'name': ['background', 'red_striped', 'green_spotted', 'blue_checkered'][i],
       'pixels': int(counts[i]), 'share': pytest.approx(counts[i] / expected.size)}
      for i in np.flatnonzero(counts)]


def test_a_png_as_a_multipart_file_gives_a_label_map_or_an_overlay(server, tiny_export, served_model):
  image = tiny_export[2][1]
  expected = served_model.predict(image)
  body, headers = _multipart('image', 'photo.png', _png_bytes(image), 'image/png')
  status, response_headers, labels = server.request('POST', '/predict?format=labels', body, headers)
  assert status == 200 and response_headers['content-type'] == 'image/png'
  np.testing.assert_array_equal(_png_array(labels), expected)
  # The overlay in --overlay_format (JPEG by default), or in PNG when the client takes only PNG.
  status, response_headers, overlay = server.request('POST', '/predict?format=overlay', body, headers)
  assert status == 200 and response_headers['content-type'] == 'image/jpeg'
  with Image.open(io.BytesIO(overlay)) as jpeg:
    assert jpeg.format == 'JPEG' and np.asarray(jpeg).shape == image.shape
  status, response_headers, overlay = server.request(
      'POST', '/predict?format=overlay', body, dict(headers, Accept='image/png'))
  assert status == 200 and response_headers['content-type'] == 'image/png'
  assert _png_array(overlay).shape == image.shape
  # Accept alone chooses the label map.
  status, response_headers, labels = server.request('POST', '/predict', _png_bytes(image),
                                                    {'Accept': 'image/png'})
  assert status == 200 and response_headers['content-type'] == 'image/png'
  np.testing.assert_array_equal(_png_array(labels), expected)


def test_health_model_and_the_url_prefixes(server):
  status, _, body = server.request('GET', '/healthz')
  assert status == 200 and json.loads(body) == {'status': 'ok'}
  status, _, body = server.request('GET', '/model')
  description = json.loads(body)
  assert description['served_format'] == 'tflite'
  assert description['dataset']['class_names'][1] == 'red_striped'
  assert description['dataset']['colormap'][1] == [128, 0, 0]
  assert description['model']['model_variant'] == 'mobilenet_v2'
  # --url_prefix, and a prefix from the --url_prefix_header (as Valohai sends an alias's).
  assert server.request('GET', '/org/project/deployment/v1/seg/healthz')[0] == 200
  assert server.request('GET', '/org/project/deployment/production/seg/model',
                        headers={'X-VH-Prefix': 'org/project/deployment/production/seg'})[0] == 200
  assert server.request('GET', '/org/project/deployment/v2/seg/healthz')[0] == 404


def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server, tiny_export):
  image = tiny_export[2][0]
  cases = [
      (('POST', '/predict', b'{"not": "an image"}', {'Content-Type': 'application/json'}), 415,
       'not a JPEG or PNG'),
      (('POST', '/predict', b'', {}), 400, 'no image'),
      (('POST', '/predict', _jpeg_bytes(image)[:300], {}), 400, 'could not be decoded'),
      (('POST', '/predict', os.urandom(400_000), {}), 413, ''),
      (('POST', '/predict', _png_bytes(np.zeros((121, 120, 3), np.uint8)), {}), 413,
       '120x121 = 14520 pixels; at most 14400'),
      (('GET', '/predict', None, {}), 405, ''),
      (('DELETE', '/model', None, {}), 405, ''),
      (('GET', '/nowhere', None, {}), 404, ''),
      (('POST', '/predict?format=jpeg', _png_bytes(image), {}), 400, "format='jpeg'"),
      (('POST', '/predict?include=everything', _png_bytes(image), {}), 400, "include='everything'"),
      (('POST', '/predict?format=overlay', _png_bytes(image), {'Accept': 'application/json'}), 406,
       'PNG'),
  ]
  for request, status, fragment in cases:
    response = server.request(*request)
    assert fragment in _assert_json_error(response, status), request[:2]
    if status == 405:
      assert 'allow' in response[1]
    assert server.request('GET', '/healthz')[0] == 200
  assert server.process.poll() is None


def test_concurrent_clients_get_the_served_models_labels(server, tiny_export, served_model):
  rng = np.random.default_rng(1)
  images = [tiny_export[2][i] for i in range(3)] + \
      [rng.integers(0, 256, (40 + 7 * i, 56 - 5 * i, 3), dtype=np.uint8) for i in range(3)]
  pngs = [_png_bytes(image) for image in images]
  expected = [served_model.predict(image) for image in images]

  def client(number):
    for request in range(20):
      which = (number + request) % len(images)
      status, _, body = server.request('POST', '/predict?format=labels', pngs[which],
                                       {'Content-Type': 'image/png'})
      assert status == 200, body
      np.testing.assert_array_equal(_png_array(body), expected[which])
    return number

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    futures = [pool.submit(client, number) for number in range(8)]
    done = [future.result(timeout=300) for future in futures]
  assert sorted(done) == list(range(8))


@pytest.mark.process
def test_gunicorn_serves_the_module_level_application_of_the_environment(tiny_export, tmp_path):
  """The `module:callable` form WSGI hosts such as Valohai's run: $DEEPLAB_MODEL_DIR names the model."""
  command = [sys.executable, '-m', 'gunicorn', '--bind', '127.0.0.1:0', '--no-control-socket',
             'deeplab.serving:application']
  running = Server(command, tmp_path / 'gunicorn.log', env={'DEEPLAB_MODEL_DIR': str(tiny_export[0])})
  try:
    status, _, body = running.request('POST', '/predict', _png_bytes(tiny_export[2][0]))
    assert status == 200 and json.loads(body)['classes'][0]['name'] == 'background'
  finally:
    assert running.stop() == 0


def test_create_app_serves_the_format_asked_for(tiny_export, frozen_model):
  model_dir, _, images = tiny_export
  app = serving.create_app(str(model_dir), model_format='saved_model')
  client = app.test_client()
  assert client.get('/model').get_json()['served_file'] == inference.SAVED_MODEL_DIR
  response = client.post('/predict?format=labels', data=_png_bytes(images[2]))
  np.testing.assert_array_equal(_png_array(response.data), frozen_model.predict(images[2]))


@pytest.mark.process
def test_serve_stops_with_one_error_when_the_worker_cannot_load_the_model(tiny_export, tmp_path):
  shutil.copy(tiny_export[0] / 'model.json', tmp_path / 'model.json')
  with pytest.raises(UserError, match='exited with status 3'):
    serving.serve(str(tmp_path), ServeConfig(port=0))
  with pytest.raises(UserError, match='no model.json'):
    serving.serve(str(tmp_path / 'nowhere'), ServeConfig(port=0))


def test_the_module_level_application_needs_its_environment_variable(monkeypatch):
  monkeypatch.delenv(serving.MODEL_DIR_ENV, raising=False)
  with pytest.raises(UserError, match=r'\$DEEPLAB_MODEL_DIR is not set'):
    serving.application


def test_sixteen_bit_pngs_are_scaled_not_clipped():
  samples = np.array([[0, 257, 65535]], np.uint16)
  buffer = io.BytesIO()
  Image.fromarray(samples).save(buffer, format='PNG')
  with serving.decode_image(buffer.getvalue()) as image:
    np.testing.assert_array_equal(image[..., 0], [[0, 1, 255]])


# ------------------------------------------------------------------------------------ KServe

# The InferenceService fields the manifest may use, by path: names from KServe's v1beta1 CRD
# (InferenceServiceSpec, PredictorSpec, ModelSpec, ModelFormat) and Kubernetes' ObjectMeta.
KSERVE_FIELDS = {
    (): {'apiVersion', 'kind', 'metadata', 'spec'},
    ('metadata',): {'name', 'namespace', 'labels', 'annotations'},
    ('spec',): {'predictor', 'transformer', 'explainer'},
    ('spec', 'predictor'): {'model', 'minReplicas', 'maxReplicas', 'scaleTarget', 'scaleMetric',
                            'serviceAccountName', 'timeout', 'containerConcurrency'},
    ('spec', 'predictor', 'model'): {'modelFormat', 'storageUri', 'runtime', 'runtimeVersion',
                                     'protocolVersion', 'resources', 'env', 'args'},
    ('spec', 'predictor', 'model', 'modelFormat'): {'name', 'version'},
    ('spec', 'predictor', 'model', 'resources'): {'requests', 'limits'},
}


def _unknown_fields(value, path=()):
  if not isinstance(value, dict) or path not in KSERVE_FIELDS:
    return []
  unknown = [path + (key,) for key in value if key not in KSERVE_FIELDS[path]]
  return unknown + [field for key, item in value.items() for field in _unknown_fields(item, path + (key,))]


def test_the_kserve_manifest_uses_only_inference_service_fields():
  import yaml
  from pipelines.kubeflow.inference_service import inference_service
  manifest = inference_service(
      'deeplab-voc', 'gs://bucket/runs/7/model/saved_model', namespace='models',
      runtime_version='2.21.0', min_replicas=0,
      resources={'requests': {'cpu': '1', 'memory': '2Gi'}, 'limits': {'memory': '4Gi'}})
  assert _unknown_fields(manifest) == []
  assert manifest['apiVersion'] == 'serving.kserve.io/v1beta1'
  assert manifest['kind'] == 'InferenceService'
  model = manifest['spec']['predictor']['model']
  assert model['modelFormat'] == {'name': 'tensorflow'}
  assert model['storageUri'] == 'gs://bucket/runs/7/model/saved_model'
  assert yaml.safe_load(yaml.safe_dump(manifest)) == manifest
  minimal = inference_service('m', 's3://b/saved_model')
  assert minimal['spec'] == {'predictor': {'model': {'modelFormat': {'name': 'tensorflow'},
                                                     'storageUri': 's3://b/saved_model'}}}
  for name in ('DeepLab', '1model', 'model-', 'a' * 64, 'my_model'):
    with pytest.raises(UserError, match='InferenceService name'):
      inference_service(name, 'gs://b/m')


@pytest.mark.parametrize('accept, configured, chosen', [
    (None, 'jpeg', 'jpeg'), (None, 'png', 'png'), ('*/*', 'png', 'png'), ('image/*', 'jpeg', 'jpeg'),
    ('image/png', 'jpeg', 'png'), ('image/jpeg', 'png', 'jpeg'),
    ('image/png;q=0.5, image/jpeg', 'png', 'jpeg'), ('application/json', 'jpeg', None)])
def test_the_overlay_format_follows_the_setting_unless_accept_takes_only_the_other(
    accept, configured, chosen):
  from werkzeug.datastructures import MIMEAccept
  from werkzeug.http import parse_accept_header
  header = parse_accept_header(accept, MIMEAccept)  # as a request parses it; None: no header
  assert serving._overlay_format(header, configured) == chosen
