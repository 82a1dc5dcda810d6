"""Memory and availability bounds of predict and serve: image sizes judged from the header before
decoding (JPEGs decoded reduced, the rest refused), the pixel budget shared by request threads,
request bodies received whole on the server's event loop (slow clients hold a socket, never a
thread), and a graceful SIGTERM. Servers run on 127.0.0.1 only."""
import asyncio
import io
import json
import pathlib
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from deeplab import images, serving
from deeplab.config import ServeConfig
from steps import runtime
from tests.conftest import run_step
from tests.deeplab.test_serving import Server, _png_bytes, _jpeg_bytes

# Generous bounds for liveness (never timing assertions): an answer that takes longer is lost.
ANSWER_SECONDS = 20
TRICKLING_CLIENTS = 10


def _png_header_only(width, height, bit_depth=1, colour_type=0):
  """A PNG whose header claims width x height and whose pixel data is a few bytes: anything that
  tried to decode it would fail, so a clean size refusal proves the header alone was judged."""
  def chunk(kind, body):
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
  header = struct.pack('>IIBBBBB', width, height, bit_depth, colour_type, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0' * 64))
          + chunk(b'IEND', b''))


def _photo(height, width, seed=0):
  """A smooth RGB uint8 image (JPEG-friendly)."""
  small = np.random.default_rng(seed).integers(0, 256, (height // 20 + 1, width // 20 + 1, 3),
                                                dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


# --------------------------------------------------------------------- sizes from the header


def test_a_png_above_the_bound_is_refused_from_its_header():
  # The case: a 1-bit 13000 x 13000 PNG is under Pillow's own bomb bound.
  with images.opened(io.BytesIO(_png_header_only(13000, 13000))) as image:
    with pytest.raises(images.TooManyPixels, match='13000x13000 = 169000000 pixels; at most 50000000'):
      images.plan_decode(image, 50_000_000)
  # Above Pillow's bound (2 x Image.MAX_IMAGE_PIXELS), refused as too large too, not as corrupt.
  with pytest.raises(images.TooManyPixels):
    with images.opened(io.BytesIO(_png_header_only(20000, 20000))):
      pass


def test_a_large_jpeg_is_decoded_reduced_by_the_smallest_reduction_that_fits():
  photo = _photo(800, 1000)
  jpeg = _jpeg_bytes(photo)
  for max_pixels, shape in ((0, (800, 1000)), (800_000, (800, 1000)), (300_000, (400, 500)),
                            (20_000, (100, 125))):
    with images.opened(io.BytesIO(jpeg)) as image:
      assert images.plan_decode(image, max_pixels) == shape[0] * shape[1]
      decoded = images.to_rgb(image)
    assert decoded.shape == shape + (3,), max_pixels
    # The same picture, smaller: close to the full decode scaled down.
    reference = np.asarray(Image.fromarray(photo).resize(shape[::-1], Image.BOX), np.float32)
    assert np.abs(decoded - reference).mean() < 12, max_pixels
  with images.opened(io.BytesIO(jpeg)) as image:
    with pytest.raises(images.TooManyPixels, match='even at 1/8'):
      images.plan_decode(image, 10_000)  # 125 x 100 at 1/8 is still more


def test_the_pixel_budget_holds_across_threads_in_arrival_order():
  budget = images.PixelBudget(100)
  peak, lock = [0], threading.Lock()
  rng = np.random.default_rng(0)
  sizes = [int(s) for s in rng.integers(1, 101, 64)]

  def work(pixels):
    with budget.hold(pixels):
      with lock:
        peak[0] = max(peak[0], budget.in_use)
      time.sleep(0.001)

  threads = [threading.Thread(target=work, args=(pixels,)) for pixels in sizes]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(ANSWER_SECONDS)
  assert budget.in_use == 0 and 0 < peak[0] <= 100
  # One image larger than the whole budget goes alone; with the budget taken, a wait times out.
  with budget.hold(500):
    with pytest.raises(images.BudgetTimeout):
      budget.acquire(1, timeout=0.05)
  # A large request first in line is not overtaken by a small one that would fit.
  budget.acquire(60)
  order = []
  large = threading.Thread(target=lambda: (budget.acquire(80), order.append('large')))
  large.start()
  while not budget._waiting:
    time.sleep(0.01)
  small = threading.Thread(target=lambda: (budget.acquire(10), order.append('small')))
  small.start()
  time.sleep(0.2)
  assert order == []  # the small one waits behind the large one
  budget.release(60)
  large.join(ANSWER_SECONDS)
  budget.release(80)
  small.join(ANSWER_SECONDS)
  assert order == ['large', 'small']


# ---------------------------------------------------------------------------------- predict


@pytest.fixture(scope='module')
def model_archive(tiny_checkpoint, tmp_path_factory):
  """model.tar.gz (frozen graph only) of the tiny checkpoint."""
  path = tmp_path_factory.mktemp('limits_model') / 'model.tar.gz'
  run_step('export', f'--checkpoint={tiny_checkpoint}', f'--output={path}',
           '--export_formats=frozen_graph')
  return path


@pytest.fixture(scope='module')
def model_dir(model_archive, tmp_path_factory):
  import tarfile
  folder = tmp_path_factory.mktemp('limits_model_dir')
  with tarfile.open(model_archive) as tar:
    tar.extractall(folder, filter='data')
  return folder


def _predict_in_process(monkeypatch, capsys, *flags):
  """steps.predict's main under run_step, as `python -m steps.predict FLAGS`: (status, stderr)."""
  from steps import predict
  monkeypatch.setattr(sys, 'argv', ['predict', *flags])
  handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
  try:
    with pytest.raises(SystemExit) as exited:
      runtime.run_step(predict.main)
      sys.exit(0)
  finally:
    for signum, handler in handlers.items():  # run_step's are for a step's own process
      signal.signal(signum, handler)
  return exited.value.code, capsys.readouterr().err


def test_predict_refuses_an_image_too_large_by_name_before_any_inference(
    model_archive, tmp_path, monkeypatch, capsys):
  folder = tmp_path / 'images'
  folder.mkdir()
  Image.fromarray(_photo(60, 80)).save(folder / 'a_small.png')
  (folder / 'b_huge.png').write_bytes(_png_header_only(13000, 13000))
  output = tmp_path / 'out' / 'predictions.tar.gz'
  output.parent.mkdir()
  scratch = set(pathlib.Path(tempfile.gettempdir()).glob('deeplab-*'))
  status, stderr = _predict_in_process(monkeypatch, capsys, f'--model={model_archive}',
                                       f'--images={folder}', f'--output={output}')
  errors = [line for line in stderr.splitlines() if line.startswith('error:')]
  assert status == 1 and len(errors) == 1, stderr
  assert 'b_huge.png' in errors[0] and '13000x13000' in errors[0], errors
  assert '--max_image_pixels' in errors[0]
  assert 'Traceback' not in stderr
  assert list(output.parent.iterdir()) == []  # no archive, no partial file
  assert set(pathlib.Path(tempfile.gettempdir()).glob('deeplab-*')) == scratch  # nor scratch


def test_predict_decodes_a_large_jpeg_reduced_and_small_images_whole(
    model_archive, tmp_path, monkeypatch, capsys):
  folder = tmp_path / 'images'
  folder.mkdir()
  (folder / 'large.jpg').write_bytes(_jpeg_bytes(_photo(400, 600)))
  Image.fromarray(_photo(50, 70, seed=1)).save(folder / 'small.png')
  output = tmp_path / 'predictions.tar.gz'
  status, stderr = _predict_in_process(
      monkeypatch, capsys, f'--model={model_archive}', f'--images={folder}', f'--output={output}',
      '--max_image_pixels=100000')
  assert status == 0, stderr
  import tarfile
  with tarfile.open(output) as tar:
    sizes = {member.name: Image.open(tar.extractfile(member)).size for member in tar.getmembers()
             if member.isfile() and member.name.startswith('labels/')}
  assert sizes == {'labels/large.png': (300, 200), 'labels/small.png': (70, 50)}


# ------------------------------------------------------------------------ serve, in process


@pytest.fixture(scope='module')
def app(model_dir):
  return serving.create_app(str(model_dir), max_image_pixels=200 * 200, max_queue_seconds=0.2)


def test_serve_answers_413_for_too_many_pixels_and_for_a_decompression_bomb(app):
  client = app.test_client()
  for body, fragment in ((_png_header_only(13000, 13000), '13000x13000'),
                         (_png_header_only(20000, 20000), 'decompression bomb')):
    response = client.post('/predict', data=body)
    assert response.status_code == 413, response.data
    assert fragment in response.get_json()['error']
  # A JPEG above the bound is served at the reduced size it was decoded at.
  response = client.post('/predict', data=_jpeg_bytes(_photo(300, 400)))
  assert response.status_code == 200, response.data
  assert (response.get_json()['width'], response.get_json()['height']) == (200, 150)


def test_serve_answers_503_with_retry_after_when_the_pixel_budget_stays_full(app):
  client = app.test_client()
  budget = app.extensions['pixel_budget']
  png = _png_bytes(_photo(60, 80))
  with budget.hold(budget.capacity):  # other requests' images, in progress
    response = client.post('/predict', data=png)
  assert response.status_code == 503, response.data
  assert response.headers['Retry-After'] == str(serving.RETRY_AFTER_SECONDS)
  assert 'busy' in response.get_json()['error']
  assert budget.in_use == 0
  assert client.post('/predict', data=png).status_code == 200  # room again


def _asgi_call(front, scope, messages):
  """Runs the ASGI `front` on one request whose body arrives as `messages`; returns (status,
  headers dict, body bytes) of what it sent."""
  sent = []

  async def receive():
    return messages.pop(0) if messages else {'type': 'http.disconnect'}

  async def send(message):
    sent.append(message)

  asyncio.run(front(scope, receive, send))
  start = next(m for m in sent if m['type'] == 'http.response.start')
  body = b''.join(m.get('body', b'') for m in sent if m['type'] == 'http.response.body')
  return start['status'], {k.decode(): v.decode() for k, v in start['headers']}, body


def test_the_front_hands_over_whole_bodies_and_bounds_what_it_buffers():
  seen = []

  def wsgi_app(environ, start_response):
    seen.append((environ.get('CONTENT_LENGTH'), environ['wsgi.input'].read()))
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'ok']

  front = serving.BufferingFront(wsgi_app, ServeConfig(threads=1, max_body_bytes=10))
  scope = {'type': 'http', 'method': 'POST', 'path': '/predict', 'root_path': '', 'query_string': b'',
           'http_version': '1.1', 'scheme': 'http', 'server': ('127.0.0.1', 80),
           'client': ('127.0.0.1', 5000)}
  chunked = dict(scope, headers=[(b'transfer-encoding', b'chunked')])
  parts = [{'type': 'http.request', 'body': b'abc', 'more_body': True},
           {'type': 'http.request', 'body': b'defg', 'more_body': False}]
  assert _asgi_call(front, chunked, parts)[0] == 200
  assert seen == [('7', b'abcdefg')]  # one body with its true length, chunked or not
  # Declared too large: refused before a byte of the body is read.
  status, headers, body = _asgi_call(front, dict(scope, headers=[(b'content-length', b'11')]), [])
  assert status == 413 and json.loads(body)['status'] == 413
  # Past the bytes buffered at once (threads x max_body_bytes): 503 and the bytes given back.
  front.buffered_bytes = 8  # other requests' bodies being received
  status, headers, body = _asgi_call(front, chunked, [
      {'type': 'http.request', 'body': b'abc', 'more_body': True}])
  assert status == 503 and headers['retry-after'] == str(serving.RETRY_AFTER_SECONDS)
  assert front.buffered_bytes == 8
  assert len(seen) == 1


# ------------------------------------------------------------------- serve, over a socket


def _send_headers(port, length, path='/predict'):
  connection = socket.create_connection(('127.0.0.1', port), timeout=ANSWER_SECONDS)
  connection.sendall(f'POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n'
                     f'Content-Length: {length}\r\n\r\n'.encode())
  return connection


def _read_response(connection):
  """(status, body) of the HTTP/1.1 response on `connection` (Content-Length framed)."""
  data = b''
  while b'\r\n\r\n' not in data:
    chunk = connection.recv(65536)
    assert chunk, data
    data += chunk
  head, body = data.split(b'\r\n\r\n', 1)
  lines = head.decode('latin-1').split('\r\n')
  length = int(next(l.split(':', 1)[1] for l in lines if l.lower().startswith('content-length:')))
  while len(body) < length:
    chunk = connection.recv(65536)
    assert chunk, body
    body += chunk
  return int(lines[0].split()[1]), body


def _nothing_received_yet(connection) -> bool:
  connection.setblocking(False)
  try:
    connection.recv(1)
    return False
  except BlockingIOError:
    return True
  finally:
    connection.setblocking(True)


@pytest.fixture(scope='module')
def limited_server(model_dir, tmp_path_factory):
  running = Server.of_serve(model_dir, tmp_path_factory.mktemp('limits') / 'server.log',
                            threads=2, max_body_seconds=8)
  try:
    yield running
  finally:
    assert running.stop() == 0, running.log_path.read_text()[-3000:]


def test_trickling_clients_starve_neither_health_checks_nor_predictions(limited_server):
  """More slow clients than threads (2): each sends its headers, then a byte every half second."""
  tricklers = [_send_headers(limited_server.port, 1000) for _ in range(TRICKLING_CLIENTS)]
  stop = threading.Event()

  def trickle():
    while not stop.wait(0.5):
      for connection in tricklers:
        connection.sendall(b'\0')

  thread = threading.Thread(target=trickle)
  thread.start()
  try:
    time.sleep(1)  # every trickler is connected and sending
    status, _, body = limited_server.request('GET', '/healthz')
    assert status == 200 and json.loads(body) == {'status': 'ok'}
    status, _, body = limited_server.request('POST', '/predict', _png_bytes(_photo(40, 50)),
                                             {'Content-Type': 'image/png'})
    assert status == 200 and json.loads(body)['width'] == 50
    # Both answered while every trickler was still sending (none has had an answer).
    assert all(_nothing_received_yet(connection) for connection in tricklers)
  finally:
    stop.set()
    thread.join()
    for connection in tricklers:
      connection.close()


def test_a_body_that_does_not_arrive_in_time_gets_408_and_a_huge_one_413(limited_server):
  slow = _send_headers(limited_server.port, 1000)
  slow.sendall(b'\x89PNG')
  status, body = _read_response(slow)  # after --max_body_seconds (8)
  slow.close()
  assert status == 408 and 'within 8 s' in json.loads(body)['error']
  huge = _send_headers(limited_server.port, 10**12)
  status, body = _read_response(huge)  # at once, from the Content-Length alone
  huge.close()
  assert status == 413 and json.loads(body)['status'] == 413


@pytest.mark.process
def test_sigterm_lets_a_request_in_progress_finish(model_dir, tmp_path):
  running = Server.of_serve(model_dir, tmp_path / 'server.log')
  png = _png_bytes(_photo(60, 80))
  connection = _send_headers(running.port, len(png))
  connection.sendall(png[:len(png) // 2])
  time.sleep(1)  # the server has accepted the connection and is receiving the body
  running.process.terminate()
  deadline = time.monotonic() + ANSWER_SECONDS
  while 'Handling signal: term' not in running.log_path.read_text():
    assert time.monotonic() < deadline, running.log_path.read_text()[-3000:]
    time.sleep(0.1)
  connection.sendall(png[len(png) // 2:])
  status, body = _read_response(connection)
  connection.close()
  assert status == 200 and json.loads(body)['width'] == 80
  assert running.process.wait(timeout=120) == 0, running.log_path.read_text()[-3000:]
  running._log.close()


def test_a_tall_overlay_is_blended_band_by_band_as_one_image_would_be():
  from deeplab import visualize
  from deeplab.colormaps import colorize
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, (visualize._OVERLAY_BAND_ROWS * 2 + 3, 41, 3), dtype=np.uint8)
  labels = rng.integers(-1, 300, image.shape[:2]).astype(np.int32)
  colormap = rng.integers(0, 256, (21, 3)).tolist()
  pixelwise = 0.7 * image.astype(np.float32) + 0.3 * colorize(labels, colormap)
  np.testing.assert_array_equal(visualize.overlay(image, labels, colormap, 0.3),
                                np.clip(np.round(pixelwise), 0, 255).astype(np.uint8))
