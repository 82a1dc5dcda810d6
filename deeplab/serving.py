"""The online endpoint: a WSGI app (Flask) that segments posted images with an exported model, and
the server that runs it (gunicorn's asyncio worker, with the request bodies buffered in front).

    POST /predict   a JPEG/PNG image as the raw body or a multipart file field
                    -> JSON {"width", "height", "classes": [{"id", "name", "pixels", "share"}]},
                       with "labels_png" (base64 PNG label map) when ?include=labels;
                    -> the label map PNG with ?format=labels, or when the Accept header prefers
                       image/png; the overlay with ?format=overlay, as --overlay_format says (JPEG
                       by default) unless the Accept header takes only the other format
    GET  /healthz   {"status": "ok"}
    GET  /model     model.json (classes, colormap, model options) and the format served

Errors are JSON {"error": message, "status": code}. Behind a proxy that mounts the app under a
path, --url_prefix names that path and --url_prefix_header a request header that names it per
request: either is stripped before routing. One model per process, shared by the request threads;
inference holds a lock, and the images being decoded, inferred and encoded at once hold at most
--max_image_pixels pixels together (see `create_app`).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from typing import Optional

import numpy as np

from deeplab.config import ServeConfig
from deeplab.errors import UserError

log = logging.getLogger(__name__)

MODEL_DIR_ENV = 'DEEPLAB_MODEL_DIR'  # the model folder of the module-level `application`
PICTURE_KINDS = ('labels', 'overlay')  # ?format=
# What a 503 asks the client to wait before trying again: about one large image's work.
RETRY_AFTER_SECONDS = 10
# Threads of their own for requests without a body (/healthz, /model), beside --threads for POSTs.
GET_THREADS = 2
# On SIGTERM the server stops accepting and gives the requests in progress this long to finish
# (queued ones included: --max_queue_seconds, then one large image).
GRACEFUL_SECONDS = 90
# An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _error_json(status: int, message: str) -> bytes:
  """The body of every error answer, from the app and from the server in front of it."""
  return json.dumps({'error': message, 'status': status}).encode()


@contextlib.contextmanager
def decode_image(data: bytes, max_pixels: int = ServeConfig.max_image_pixels, budget=None,
                 wait_seconds: Optional[float] = None):
  """Yields RGB uint8 [H, W, 3] of a JPEG/PNG file's bytes (any mode: `images.to_rgb`), its pixels
  held from `budget` (an images.PixelBudget, or None) until the with block ends.

  The size is judged from the header, before decoding (`images.plan_decode`): a JPEG above
  `max_pixels` (0 = no bound) is decoded at 1/2, 1/4 or 1/8 of each side when that fits.
  Raises werkzeug's HTTP errors: 400 for no or an undecodable image, 415 for a file that is not
  JPEG/PNG, 413 above `max_pixels` or Pillow's decompression-bomb bound, 503 (with Retry-After)
  when the budget has not had room for the image within `wait_seconds`.
  """
  from PIL import UnidentifiedImageError
  from werkzeug.exceptions import (BadRequest, RequestEntityTooLarge, ServiceUnavailable,
                                   UnsupportedMediaType)
  from deeplab import images
  if not data:
    raise BadRequest('no image: send a JPEG or PNG file as the body or a multipart file field')
  with contextlib.ExitStack() as stack:
    try:
      image = stack.enter_context(images.opened(io.BytesIO(data)))
      pixels = images.plan_decode(image, max_pixels)
      if budget is not None:
        stack.enter_context(budget.hold(pixels, wait_seconds))
      array = images.to_rgb(image)
      image.close()  # frees PIL's copy of the pixels now, not when the request ends
    except images.TooManyPixels as e:
      raise RequestEntityTooLarge(f'{e}: not served') from None
    except images.BudgetTimeout:
      raise ServiceUnavailable(
          f'busy: other images hold the pixels this one needs ({pixels}) for longer than '
          f'{wait_seconds} s; try again later', retry_after=RETRY_AFTER_SECONDS) from None
    except UnidentifiedImageError:
      raise UnsupportedMediaType('the body is not a JPEG or PNG image') from None
    except (OSError, SyntaxError, ValueError) as e:
      raise BadRequest(f'the image could not be decoded ({e})') from None
    yield array


def _overlay_format(accept, configured: str) -> Optional[str]:
  """The format (visualize.OVERLAY_MEDIA_TYPES) to send an overlay in: `configured` (the
  --overlay_format) unless the Accept header (werkzeug's MIMEAccept) takes only the other one;
  None when it takes neither."""
  from deeplab import visualize
  if not accept.provided:
    return configured
  by_preference = sorted(visualize.OVERLAY_MEDIA_TYPES.items(),
                         key=lambda item: item[0] != configured)  # configured first
  chosen = accept.best_match([media for _, media in by_preference])  # a tie goes to the first
  return next((name for name, media in by_preference if media == chosen), None)


def _class_shares(labels, class_names):
  """[{"id", "name", "pixels", "share"}] of the classes present in labels [H, W], by id."""
  counts = np.bincount(labels.ravel(), minlength=len(class_names))
  return [{'id': int(i), 'name': class_names[i] if i < len(class_names) else str(i),
           'pixels': int(counts[i]), 'share': float(counts[i] / labels.size)}
          for i in np.flatnonzero(counts)]


def _prefix_header_key(header: str) -> Optional[str]:
  """The WSGI environ key of the --url_prefix_header (None for none); a UserError if the name is
  not an HTTP header name."""
  if not header:
    return None
  if not _HEADER_NAME.fullmatch(header):
    raise UserError(f'--url_prefix_header={header!r}: expected an HTTP header name, such as '
                    'X-Forwarded-Prefix')
  return 'HTTP_' + header.upper().replace('-', '_')


class _StripPrefix:
  """WSGI middleware: a request under a path prefix (the header's, then the configured one) is
  routed as if the prefix were not there; the prefix moves to SCRIPT_NAME."""

  def __init__(self, app, prefix: str, header_key: Optional[str]):
    self.app = app
    self.prefix = prefix
    self.header_key = header_key

  def __call__(self, environ, start_response):
    path = environ.get('PATH_INFO', '')
    for prefix in (environ.get(self.header_key) if self.header_key else None, self.prefix):
      prefix = '/' + (prefix or '').strip('/')
      if prefix != '/' and (path == prefix or path.startswith(prefix + '/')):
        environ['SCRIPT_NAME'] = environ.get('SCRIPT_NAME', '') + prefix
        environ['PATH_INFO'] = path[len(prefix):] or '/'
        break
    return self.app(environ, start_response)


def create_app(model_dir: str, **settings):
  """The WSGI app serving the model in `model_dir` (an export folder with model.json).

  `settings` are ServeConfig fields (deeplab/config.py; the server's own, host, port, threads and
  body timing, are not the app's): the format to serve, body and image bounds, the inference pixel
  bound (a larger image is scaled down for inference and its labels back up, as predict does),
  the overlay opacity, the URL prefix. One model is loaded and shared by all request threads;
  inference holds a lock, so one image is in the network at a time: TensorFlow already spreads one
  image over every core, parallel images would only multiply the peak memory, and a TFLite
  interpreter is not thread-safe. Decoding and encoding run outside the lock, within the pixel
  budget: a request takes its image's pixels (counted from the header) before decoding and gives
  them back once its answer is encoded, so the images in progress never hold more than
  --max_image_pixels together; a request that waits longer than --max_queue_seconds for room gets
  503 with Retry-After. The app's budget is `app.extensions['pixel_budget']`.
  """
  config = ServeConfig(**settings)
  prefix_header_key = _prefix_header_key(config.url_prefix_header)
  from flask import Flask, Response, jsonify, request
  from werkzeug.exceptions import BadRequest, HTTPException, NotAcceptable

  from deeplab import checkpoint, inference, visualize
  from deeplab.images import PixelBudget, predict_bounded
  card = checkpoint.ModelCard.read(model_dir)
  dataset = card.dataset
  class_names = dataset.class_names or [str(i) for i in range(dataset.num_classes)]
  found_format, model_path = inference.find_model(
      model_dir, None if config.model_format == 'auto' else config.model_format)
  model = inference.load_model(model_path, found_format)
  model_lock = threading.Lock()
  budget = PixelBudget(config.max_image_pixels)
  description = dict(card.to_json(), served_format=found_format,
                     served_file=os.path.relpath(model_path, model_dir))
  log.info('serving %s (%s)', model_path, found_format)

  app = Flask(__name__)
  app.config['MAX_CONTENT_LENGTH'] = config.max_body_bytes
  app.extensions['pixel_budget'] = budget

  @app.errorhandler(HTTPException)
  def http_error(error):
    response = error.get_response()  # keeps headers such as Allow on a 405, Retry-After on a 503
    response.set_data(_error_json(error.code, error.description))
    response.content_type = 'application/json'
    return response

  @app.errorhandler(Exception)
  def unexpected_error(error):
    log.exception('request failed')
    return jsonify(error=f'internal error: {type(error).__name__}', status=500), 500

  @app.get('/healthz')
  def healthz():
    return jsonify(status='ok')

  @app.get('/model')
  def describe():
    return jsonify(description)

  def answer(image, picture, include, overlay_format):
    """The response to /predict for the decoded image (its arrays live only in this call)."""
    with model_lock:
      labels = predict_bounded(model, image, config.max_inference_pixels)
    if picture == 'overlay':
      buffer = io.BytesIO()
      visualize.write_overlay(
          visualize.overlay(image, labels, dataset.colormap, config.overlay_alpha), buffer,
          overlay_format)
      return Response(buffer.getvalue(), mimetype=visualize.OVERLAY_MEDIA_TYPES[overlay_format])
    if picture == 'labels':
      return Response(visualize.label_png(labels), mimetype='image/png')
    result = {'width': int(image.shape[1]), 'height': int(image.shape[0]),
              'classes': _class_shares(labels, class_names)}
    if include == 'labels':
      result['labels_png'] = base64.b64encode(visualize.label_png(labels)).decode('ascii')
    return jsonify(result)

  @app.post('/predict')
  def predict():
    picture = request.args.get('format')
    if picture is not None and picture not in PICTURE_KINDS:
      raise BadRequest(f'format={picture!r}: expected one of {", ".join(PICTURE_KINDS)}')
    include = request.args.get('include')
    if include not in (None, 'labels'):
      raise BadRequest(f'include={include!r}: expected labels')
    if picture is None and request.accept_mimetypes.best_match(
        ['application/json', 'image/png']) == 'image/png':
      picture = 'labels'
    overlay_format = None
    if picture == 'overlay':
      overlay_format = _overlay_format(request.accept_mimetypes, config.overlay_format)
      if overlay_format is None:
        raise NotAcceptable('format=overlay is a JPEG or PNG, which the Accept header refuses')
    elif picture and request.accept_mimetypes.provided and not request.accept_mimetypes['image/png']:
      raise NotAcceptable(f'format={picture} is a PNG, which the Accept header refuses')
    if request.mimetype == 'multipart/form-data':
      files = request.files.getlist('image') or list(request.files.values())
      if len(files) != 1:
        raise BadRequest(f'{len(files)} files in the form; send one image (field "image")')
      data = files[0].read()
    else:
      data = request.get_data(cache=False)
    with decode_image(data, config.max_image_pixels, budget, config.max_queue_seconds) as image:
      return answer(image, picture, include, overlay_format)

  app.wsgi_app = _StripPrefix(app.wsgi_app, config.url_prefix, prefix_header_key)
  return app


class BufferingFront:
  """The ASGI app the server runs: it receives each request's body whole on the event loop before
  the WSGI app (`create_app`) sees the request in a thread, through a2wsgi's WSGI-to-ASGI adapter.

  Why: a WSGI app reads the body from its own thread, so with a threaded server each client that
  sends its body slowly holds a thread, and a handful of them starve every other request
  (/healthz included). Here a slow client holds a socket and a few bytes of the event loop's
  memory instead. Bounds: a body larger than --max_body_bytes is refused (413) as soon as its
  Content-Length or its bytes say so; one not whole within --max_body_seconds gets 408; the bodies
  buffered at once hold at most --threads x --max_body_bytes bytes (beyond: 503 with
  Retry-After). POSTs run in --threads threads, other requests (/healthz, /model) in GET_THREADS
  of their own, so that images queued for the pixel budget never delay a health check.
  """

  def __init__(self, wsgi_app, config: ServeConfig):
    from a2wsgi import WSGIMiddleware
    self.posts = WSGIMiddleware(wsgi_app, workers=config.threads)
    self.others = WSGIMiddleware(wsgi_app, workers=GET_THREADS)
    self.max_body_bytes = config.max_body_bytes
    self.max_body_seconds = config.max_body_seconds
    self.max_buffered_bytes = config.threads * config.max_body_bytes
    self.buffered_bytes = 0  # touched on the event loop's thread only

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':  # lifespan, websocket: the adapter's own answers
      return await self.others(scope, receive, send)
    headers = [(name, value) for name, value in scope['headers']
               if name not in (b'content-length', b'transfer-encoding')]
    declared = dict(scope['headers']).get(b'content-length', b'0')
    if declared.isdigit() and int(declared) > self.max_body_bytes:
      return await self._refuse(send, 413, f'the body has {int(declared)} bytes; at most '
                                f'{self.max_body_bytes} are accepted')
    received = [0]  # bytes of this request counted in buffered_bytes, given back at the end
    try:
      try:
        body = await asyncio.wait_for(self._receive_body(receive, received), self.max_body_seconds)
      except asyncio.TimeoutError:
        return await self._refuse(send, 408, f'the body did not arrive whole within '
                                  f'{self.max_body_seconds:g} s')
      except _Refused as refused:
        return await self._refuse(send, *refused.args)
      if body is None:  # the client went away: the answer is for the access log
        return await self._refuse(send, 400, 'the connection closed before the body was whole')
      # The adapter and the app see one whole body with its true length (chunked ones included).
      scope = dict(scope, headers=headers + [(b'content-length', str(len(body)).encode())])
      delivered = False

      async def replay():
        nonlocal delivered
        if delivered:
          return await receive()  # http.disconnect, when the client goes away
        delivered = True
        return {'type': 'http.request', 'body': body, 'more_body': False}

      application = self.posts if scope['method'] == 'POST' else self.others
      return await application(scope, replay, send)
    finally:
      self.buffered_bytes -= received[0]

  async def _receive_body(self, receive, received) -> Optional[bytes]:
    """The whole body, or None when the client disconnects; raises _Refused past the bounds."""
    chunks = []
    while True:
      message = await receive()
      if message['type'] == 'http.disconnect':
        return None
      chunk = message.get('body', b'')
      received[0] += len(chunk)
      self.buffered_bytes += len(chunk)
      if received[0] > self.max_body_bytes:
        raise _Refused(413, f'the body has more than {self.max_body_bytes} bytes, which is the '
                       'most accepted')
      if self.buffered_bytes > self.max_buffered_bytes:
        raise _Refused(503, 'busy: too many request bodies are being received; try again later')
      chunks.append(chunk)
      if not message.get('more_body'):
        return b''.join(chunks)

  @staticmethod
  async def _refuse(send, status: int, message: str):
    body = _error_json(status, message)
    headers = [(b'content-type', b'application/json'), (b'content-length', str(len(body)).encode()),
               (b'connection', b'close')]  # the unread rest of the body ends the connection
    if status == 503:
      headers.append((b'retry-after', str(RETRY_AFTER_SECONDS).encode()))
    await send({'type': 'http.response.start', 'status': status, 'headers': headers})
    await send({'type': 'http.response.body', 'body': body})


class _Refused(Exception):
  """(status, message) of a request the front answers itself."""


def create_front(model_dir: str, **settings) -> BufferingFront:
  """The ASGI app of `serve`: `create_app`'s app behind a BufferingFront. `settings` as create_app,
  plus the front's own (threads, max_body_seconds)."""
  return BufferingFront(create_app(model_dir, **settings), ServeConfig(**settings))


# ServeConfig fields that configure gunicorn rather than the app.
_SERVER_SETTINGS = ('host', 'port')


def serve(model_dir: str, config: ServeConfig = ServeConfig()) -> None:
  """Serves `create_front(model_dir, ...)` with gunicorn on `config.host`:`config.port` until
  SIGTERM or SIGINT, then returns once the server has stopped. Call it from the main thread.

  The server: gunicorn (one worker of its `asgi` class, an asyncio event loop) runs the front,
  which buffers bodies on the loop and hands whole requests to the Flask app's threads (see
  BufferingFront for why). SIGTERM is graceful: the worker stops accepting, lets the requests in
  progress finish (GRACEFUL_SECONDS at most) and exits; SIGINT stops it at once.

  gunicorn runs as a child process (`python -m gunicorn`) and logs 'Listening at:
  http://HOST:PORT' once bound; port 0 binds a free port. It is a child, not this process, because
  its workers are forks: a forked worker that exits would unwind this process's stack too, running
  the caller's clean-up (such as removing an unpacked model folder) under the feet of the next
  worker; and TensorFlow does not survive a fork, so the model is loaded in the worker. gunicorn
  reads the app as the call `deeplab.serving:create_front(...)` with literal arguments: the
  settings travel as such. This process checks model.json and the settings only and does not
  import TensorFlow (half a gigabyte that would sit idle); a model the worker cannot load stops
  gunicorn (status 3, the reason in its log) and raises a UserError here.
  """
  from deeplab import checkpoint
  model_dir = os.path.abspath(model_dir)
  checkpoint.ModelCard.read(model_dir)  # a folder that is not an exported model fails here
  _prefix_header_key(config.url_prefix_header)
  settings = {k: v for k, v in config.to_json().items() if k not in _SERVER_SETTINGS}
  arguments = [repr(model_dir)] + [f'{k}={v!r}' for k, v in settings.items()]
  host, port = config.host, config.port
  command = [sys.executable, '-m', 'gunicorn', '--bind', f'[{host}]:{port}' if ':' in host
             else f'{host}:{port}', '--workers', '1', '--worker-class', 'asgi',
             '--graceful-timeout', str(GRACEFUL_SECONDS),
             # A worker whose event loop stops answering for this long is replaced.
             '--timeout', '300',
             # gunicorn's control socket has one default path per user: two servers would share it.
             '--no-control-socket',
             '--access-logfile', '-', f'deeplab.serving:create_front({", ".join(arguments)})']
  package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [package_root] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
  # glibc gives each thread that allocates a heap of its own and keeps what is freed there, so
  # request threads taking turns at large images each kept some (bench/serve_memory.py, 8 POSTs at
  # once of a 49 MP PNG against one: 27% above it with a heap per thread, 1-13% with two).
  environment.setdefault('MALLOC_ARENA_MAX', '2')
  server = subprocess.Popen(command, env=environment)

  def stop_server(signum, frame):
    server.send_signal(signum)

  previous_handlers = {signum: signal.signal(signum, stop_server)
                       for signum in (signal.SIGTERM, signal.SIGINT)}
  try:
    status = server.wait()
  finally:
    for signum, handler in previous_handlers.items():
      signal.signal(signum, handler)
    if server.poll() is None:  # an exception in this process: do not leave the server behind
      server.terminate()
      server.wait()
  if status != 0:
    raise UserError(f'the server (gunicorn) exited with status {status}; its log above says why')


def __getattr__(name):
  """`application`: the app of the model in $DEEPLAB_MODEL_DIR, for WSGI servers that import
  `deeplab.serving:application` (they read bodies in their own way: see BufferingFront); made on
  first access, so importing this module loads nothing."""
  if name != 'application':
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  model_dir = os.environ.get(MODEL_DIR_ENV)
  if not model_dir:
    raise UserError(f'${MODEL_DIR_ENV} is not set; set it to the model folder the export step '
                    'wrote (model.tar.gz unpacked)')
  globals()['application'] = create_app(model_dir)
  return globals()['application']
