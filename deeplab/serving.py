"""The online endpoint: a WSGI app (Flask) that segments posted images with an exported model, the
gunicorn server that runs it, and the KServe InferenceService of a SavedModel export.

    POST /predict   a JPEG/PNG image as the raw body or a multipart file field
                    -> JSON {"width", "height", "classes": [{"id", "name", "pixels", "share"}]},
                       with "labels_png" (base64 PNG label map) when ?include=labels;
                    -> the label map PNG with ?format=labels, or when the Accept header prefers
                       image/png; the overlay with ?format=overlay, as --overlay_format says (JPEG
                       by default) unless the Accept header takes only the other format
    GET  /healthz   {"status": "ok"}
    GET  /model     model.json (classes, colormap, model options) and the format served

Errors are JSON {"error": message, "status": code}. Behind Valohai the app is served under a path
prefix, given by the X-VH-Prefix header and the VH_DEFAULT_PREFIX variable: it is stripped before
routing. One model per process, shared by the request threads; inference holds a lock (see
`create_app`).
"""
from __future__ import annotations

import base64
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
VH_PREFIX_ENV = 'VH_DEFAULT_PREFIX'
IMAGE_FORMATS = ('JPEG', 'PNG')
PICTURE_KINDS = ('labels', 'overlay')  # ?format=


def decode_image(data: bytes, max_pixels: int = ServeConfig.max_image_pixels):
  """RGB uint8 [H, W, 3] of a JPEG/PNG file's bytes (any mode: `images.to_rgb`).

  Raises werkzeug's HTTP errors: 400 for no or an undecodable image, 415 for a file that is not
  JPEG/PNG, 413 above `max_pixels` (0 = no bound; checked from the header, before decoding).
  """
  from PIL import Image, UnidentifiedImageError
  from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType
  from deeplab.images import to_rgb
  if not data:
    raise BadRequest('no image: send a JPEG or PNG file as the body or a multipart file field')
  try:
    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
      width, height = image.size
      if max_pixels and width * height > max_pixels:
        raise RequestEntityTooLarge(f'the image has {width}x{height} = {width * height} pixels; '
                                    f'at most {max_pixels} are served')
      return to_rgb(image)
  except UnidentifiedImageError:
    raise UnsupportedMediaType('the body is not a JPEG or PNG image') from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise BadRequest(f'the image could not be decoded ({e})') from None


def _png(array) -> bytes:
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


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


class _StripPrefix:
  """WSGI middleware: a request under a Valohai path prefix (header first, then the environment
  variable) is routed as if the prefix were not there; the prefix moves to SCRIPT_NAME."""

  def __init__(self, app, default_prefix: Optional[str]):
    self.app = app
    self.default_prefix = default_prefix

  def __call__(self, environ, start_response):
    path = environ.get('PATH_INFO', '')
    for prefix in (environ.get('HTTP_X_VH_PREFIX'), self.default_prefix):
      prefix = '/' + (prefix or '').strip('/')
      if prefix != '/' and (path == prefix or path.startswith(prefix + '/')):
        environ['SCRIPT_NAME'] = environ.get('SCRIPT_NAME', '') + prefix
        environ['PATH_INFO'] = path[len(prefix):] or '/'
        break
    return self.app(environ, start_response)


def create_app(model_dir: str, prefix: Optional[str] = None, **settings):
  """The WSGI app serving the model in `model_dir` (an export folder with model.json).

  `settings` are ServeConfig fields (deeplab/config.py; the server's own, host, port and threads,
  are not the app's): the format to serve, body and image bounds, the inference pixel bound (a
  larger image is scaled down for inference and its labels back up, as predict does), the overlay
  opacity. `prefix` defaults to $VH_DEFAULT_PREFIX. One model is loaded and shared by all request
  threads; inference holds a lock, so one image is in the network at a time: TensorFlow already
  spreads one image over every core, parallel images would only multiply the peak memory, and a
  TFLite interpreter is not thread-safe. Decoding and encoding run outside the lock.
  """
  config = ServeConfig(**settings)
  from flask import Flask, Response, jsonify, request
  from werkzeug.exceptions import BadRequest, HTTPException, NotAcceptable

  from deeplab import checkpoint, inference, visualize
  from deeplab.images import predict_bounded
  card = checkpoint.ModelCard.read(model_dir)
  dataset = card.dataset
  class_names = dataset.class_names or [str(i) for i in range(dataset.num_classes)]
  found_format, model_path = inference.find_model(
      model_dir, None if config.model_format == 'auto' else config.model_format)
  model = inference.load_model(model_path, found_format)
  model_lock = threading.Lock()
  description = dict(card.to_json(), served_format=found_format,
                     served_file=os.path.relpath(model_path, model_dir))
  log.info('serving %s (%s)', model_path, found_format)

  app = Flask(__name__)
  app.config['MAX_CONTENT_LENGTH'] = config.max_body_bytes

  @app.errorhandler(HTTPException)
  def http_error(error):
    response = error.get_response()  # keeps headers such as Allow on a 405
    response.set_data(json.dumps({'error': error.description, 'status': error.code}))
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
    image = decode_image(data, config.max_image_pixels)
    with model_lock:
      labels = predict_bounded(model, image, config.max_inference_pixels)
    if picture == 'overlay':
      buffer = io.BytesIO()
      visualize.write_overlay(
          visualize.overlay(image, labels, dataset.colormap, config.overlay_alpha), buffer,
          overlay_format)
      return Response(buffer.getvalue(), mimetype=visualize.OVERLAY_MEDIA_TYPES[overlay_format])
    label_map = labels.astype(np.uint8 if len(class_names) <= 256 else np.uint16)
    if picture == 'labels':
      return Response(_png(label_map), mimetype='image/png')
    result = {'width': int(image.shape[1]), 'height': int(image.shape[0]),
              'classes': _class_shares(labels, class_names)}
    if include == 'labels':
      result['labels_png'] = base64.b64encode(_png(label_map)).decode('ascii')
    return jsonify(result)

  app.wsgi_app = _StripPrefix(app.wsgi_app, os.environ.get(VH_PREFIX_ENV) if prefix is None
                              else prefix)
  return app


# ServeConfig fields that configure gunicorn rather than the app.
_SERVER_SETTINGS = ('host', 'port', 'threads')


def serve(model_dir: str, config: ServeConfig = ServeConfig()) -> None:
  """Serves `create_app(model_dir, ...)` with gunicorn on `config.host`:`config.port` until SIGTERM
  or SIGINT, then returns once the server has stopped. Call it from the main thread.

  gunicorn runs as a child process (`python -m gunicorn`, one worker with `config.threads` request
  threads) and logs 'Listening at: http://HOST:PORT' once bound; port 0 binds a free port. It is a
  child, not this process, because its workers are forks: a forked worker that exits would unwind
  this process's stack too, running the caller's clean-up (such as removing an unpacked model
  folder) under the feet of the next worker; and TensorFlow does not survive a fork, so the model
  is loaded in the worker. gunicorn reads the app as the call `deeplab.serving:create_app(...)`
  with literal arguments: the settings travel as such. This process checks model.json only and
  does not import TensorFlow (half a gigabyte that would sit idle); a model the worker cannot load
  stops gunicorn (status 3, the reason in its log) and raises a UserError here.
  """
  from deeplab import checkpoint
  model_dir = os.path.abspath(model_dir)
  checkpoint.ModelCard.read(model_dir)  # a folder that is not an exported model fails here
  settings = {k: v for k, v in config.to_json().items() if k not in _SERVER_SETTINGS}
  arguments = [repr(model_dir)] + [f'{k}={v!r}' for k, v in settings.items()]
  host, port = config.host, config.port
  command = [sys.executable, '-m', 'gunicorn', '--bind', f'[{host}]:{port}' if ':' in host
             else f'{host}:{port}', '--workers', '1', '--worker-class', 'gthread',
             '--threads', str(config.threads),
             # A worker that stops answering for this long is replaced: one very large image on a
             # slow CPU can take tens of seconds.
             '--timeout', '300',
             # gunicorn's control socket has one default path per user: two servers would share it.
             '--no-control-socket',
             '--access-logfile', '-', f'deeplab.serving:create_app({", ".join(arguments)})']
  package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [package_root] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
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
  `deeplab.serving:application`; made on first access, so importing this module loads nothing."""
  if name != 'application':
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  model_dir = os.environ.get(MODEL_DIR_ENV)
  if not model_dir:
    raise UserError(f'${MODEL_DIR_ENV} is not set; set it to the model folder the export step '
                    'wrote (model.tar.gz unpacked)')
  globals()['application'] = create_app(model_dir)
  return globals()['application']


# KServe's webhook takes InferenceService names of this form; Kubernetes bounds them at 63 (DNS label).
_INFERENCE_SERVICE_NAME = re.compile(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?')


def kserve_inference_service(name: str, storage_uri: str, namespace: Optional[str] = None,
                             runtime_version: Optional[str] = None,
                             min_replicas: Optional[int] = None,
                             resources: Optional[dict] = None) -> dict:
  """A KServe v1beta1 InferenceService (as a dict, ready for yaml.safe_dump or the Kubernetes API)
  serving the SavedModel at `storage_uri` with KServe's tensorflow runtime (TF Serving).

  `storage_uri` names the SavedModel's base folder, the `saved_model/` of an export, which holds
  the numbered version folder TF Serving expects. `resources` is a Kubernetes
  ResourceRequirements dict ({'requests': {...}, 'limits': {...}}).
  """
  if not _INFERENCE_SERVICE_NAME.fullmatch(name):
    raise UserError(f'InferenceService name {name!r}: expected lower-case letters, digits and '
                    "'-', starting with a letter, ending with a letter or digit, at most 63 long")
  if not storage_uri:
    raise UserError('storage_uri: expected the URI of the SavedModel folder (gs://, s3://, pvc://...)')
  model = {'modelFormat': {'name': 'tensorflow'}, 'storageUri': storage_uri}
  if runtime_version:
    model['runtimeVersion'] = runtime_version
  if resources:
    model['resources'] = resources
  predictor = {'model': model}
  if min_replicas is not None:
    predictor['minReplicas'] = int(min_replicas)
  metadata = {'name': name}
  if namespace:
    metadata['namespace'] = namespace
  return {'apiVersion': 'serving.kserve.io/v1beta1', 'kind': 'InferenceService',
          'metadata': metadata, 'spec': {'predictor': predictor}}
