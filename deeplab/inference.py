"""Loading an exported model to predict with: what predict and serve import, and nothing of the exporter.

The formats an export holds, one `ModelFormat` each in `FORMATS` (the only table of them): its file
or folder name inside model.tar.gz, how a file is recognised by content (`detect`), the class that
loads it to predict (`loader`), and the module of deeplab/export/ that writes it (`writer`). Adding
a format is its writer module, its loader class and one line of `FORMATS`; the settings schema
(deeplab/config.py MODEL_FORMATS) and model.tar.gz detection follow from the table.

Every loader has `predict(image uint8 [H, W, 3]) -> labels int32 [H, W]`, `format` and `close()`.

The exported files' contract (the model zoo's, for the frozen graph):

    ImageTensor:0            uint8 [1, H, W, 3], any H and W
    SemanticPredictions:0    int32 [1, H, W]     class ids
    SemanticProbabilities:0  float32 [1, H, W, num_classes]

The SavedModel (TensorFlow Serving) is the frozen graph behind two signatures: `serving_default`
(images uint8 [1, H, W, 3]) and `encoded_image` (image_bytes string [1], one JPEG/PNG file); both
give semantic_predictions int32 [1, H, W] and semantic_probabilities float32 [1, H, W, C]. The
TFLite model takes any input size (input [1, -1, -1, 3]: the interpreter's input is resized to
the image's), or a fixed one: uint8 RGB [1, H, W, 3] in, labels int32 [1, H, W] then
semantic_logits [1, H, W, num_classes] out, or semantic_probabilities when the export averages
scales or flips or pads to a crop size or the model has a resize range (float32, or int8 with
full-integer quantisation).

This module imports neither TensorFlow nor numpy until a model is loaded (the settings schema reads
`FORMATS` for --help, which imports neither).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import threading
from typing import Callable, Optional, Tuple

from deeplab.errors import UserError

INPUT_TENSOR = 'ImageTensor'
PREDICTIONS_TENSOR = 'SemanticPredictions'
PROBABILITIES_TENSOR = 'SemanticProbabilities'
FROZEN_GRAPH = 'frozen_inference_graph.pb'

# TensorFlow Serving serves the numbered versions under a model's base path: `saved_model/` is the
# base path (what a model server is pointed at), `1` the one version an export holds.
SAVED_MODEL_DIR = os.path.join('saved_model', '1')
SAVED_MODEL_PB = 'saved_model.pb'
SERVING_SIGNATURE = 'serving_default'  # the signature TF Serving answers when none is named
ENCODED_IMAGE_SIGNATURE = 'encoded_image'
IMAGES_INPUT = 'images'
IMAGE_BYTES_INPUT = 'image_bytes'
PREDICTIONS_OUTPUT = 'semantic_predictions'
PROBABILITIES_OUTPUT = 'semantic_probabilities'
LOGITS_OUTPUT = 'semantic_logits'  # TFLite only

TFLITE_FILE = 'model.tflite'
FROZEN_GRAPH_FORMAT, SAVED_MODEL_FORMAT, TFLITE_FORMAT = 'frozen_graph', 'saved_model', 'tflite'


def resize_image(image, size):
  """uint8 [h, w, 3] -> [H, W, 3] (bilinear), size = (H, W)."""
  import numpy as np
  from PIL import Image
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_labels(labels, size):
  """int32 [h, w] -> [H, W] (nearest), size = (H, W)."""
  import numpy as np
  from PIL import Image
  return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))


class _SessionPredictor:
  """A graph in its own session: `predict(image uint8 [H, W, 3])` -> labels int32 [H, W].

  Session.run may be called from several threads at once; callers that bound memory serialise.
  """

  def __init__(self, graph, session, input_name: str, labels_name: str):
    self.graph = graph
    self.session = session
    self._input = graph.get_tensor_by_name(input_name)
    self._labels = graph.get_tensor_by_name(labels_name)

  def predict(self, image):
    """Labels int32 [H, W] of one image; the [H, W, C] probabilities are not fetched (they are
    H x W x C floats: hundreds of MB for a large photo)."""
    return self.session.run(self._labels, {self._input: image[None]})[0]

  def close(self):
    self.session.close()


class FrozenGraphPredictor(_SessionPredictor):
  """A loaded frozen graph: `predict(image uint8 [H, W, 3])` -> labels int32 [H, W]; run as
  `dilated_for_this_runtime` makes it."""
  format = FROZEN_GRAPH_FORMAT

  def __init__(self, path: str):
    from google.protobuf.message import DecodeError

    from deeplab.compat import tf
    from deeplab.export.rewrites import dilated_for_this_runtime
    graph_def = tf.compat.v1.GraphDef()
    try:
      with open(path, 'rb') as f:
        graph_def.ParseFromString(f.read())
    except DecodeError:
      raise UserError(f'{path}: not a GraphDef; expected the frozen graph of the export step') from None
    if not any(node.name == INPUT_TENSOR for node in graph_def.node):
      raise UserError(f'{path}: a graph without {INPUT_TENSOR}; expected the frozen graph of the '
                      'export step')
    graph = tf.Graph()
    with graph.as_default():
      tf.compat.v1.import_graph_def(dilated_for_this_runtime(graph_def), name='')
    super().__init__(graph, tf.compat.v1.Session(graph=graph), INPUT_TENSOR + ':0',
                     PREDICTIONS_TENSOR + ':0')


class SavedModelPredictor(_SessionPredictor):
  """A loaded SavedModel (its serving_default signature): `predict(image uint8 [H, W, 3])` ->
  labels int32 [H, W]."""
  format = SAVED_MODEL_FORMAT

  def __init__(self, export_dir: str):
    from deeplab.compat import tf
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
      meta_graph = tf.compat.v1.saved_model.loader.load(
          session, [tf.compat.v1.saved_model.tag_constants.SERVING], export_dir)
      signature = meta_graph.signature_def.get(SERVING_SIGNATURE)
      if (signature is None or IMAGES_INPUT not in signature.inputs
          or PREDICTIONS_OUTPUT not in signature.outputs):
        raise UserError(f'{export_dir}: the SavedModel has no {SERVING_SIGNATURE} signature from '
                        f'{IMAGES_INPUT} to {PREDICTIONS_OUTPUT}; expected one write_saved_model '
                        'wrote')
      super().__init__(graph, session, signature.inputs[IMAGES_INPUT].name,
                       signature.outputs[PREDICTIONS_OUTPUT].name)
    except BaseException:
      session.close()
      raise


class TFLitePredictor:
  """A loaded TFLite model: `predict(image uint8 [H, W, 3])` -> labels int32 [H, W].

  A model of any input size (what deeplab/export/tflite.py writes unless given a size) runs on
  the image as it is: the interpreter's input is resized whenever an image's size differs from
  the one before (a few milliseconds, against tens for the inference), so one set of buffers is
  kept, sized for the last image. A model of a fixed size gets the image resized to it (bilinear)
  and the labels back (nearest); `input_size` is that size, or None.

  Runs on LiteRT (`ai_edge_litert`, the maintained interpreter: tf.lite.Interpreter is
  deprecated), XNNPACK on every core this process may use (the interpreter's default is one).
  predict may be called from several threads: an interpreter is not thread-safe, so predict holds
  a lock. One image already keeps every core busy, and an interpreter per thread would hold its
  own copy of the packed weights and of the buffers for nothing.
  """
  format = TFLITE_FORMAT

  def __init__(self, path: str):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    try:
      self._interpreter = Interpreter(model_path=path, num_threads=_usable_cores())
    except ValueError as e:
      raise UserError(f'{path}: not a TFLite model LiteRT can load ({e}); expected the '
                      'model.tflite of the export step') from None
    image_input = self._interpreter.get_input_details()[0]
    labels_output = self._interpreter.get_output_details()[0]
    if image_input['dtype'] != np.uint8 or len(image_input['shape']) != 4 or \
        len(labels_output['shape']) != 3:
      raise UserError(f'{path}: input {image_input["dtype"].__name__} '
                      f'{list(image_input["shape_signature"])}, first output '
                      f'{list(labels_output["shape_signature"])}; expected uint8 [1, H, W, 3] in '
                      'and labels [1, H, W] first out, as deeplab/export/tflite.py writes')
    signature = image_input['shape_signature'][1:3]
    self.input_size = None if min(signature) < 1 else tuple(int(v) for v in signature)
    self._input_index = image_input['index']
    self._labels_index = labels_output['index']
    self._allocated_size = None  # the image size the interpreter's buffers are planned for
    self._lock = threading.Lock()

  def predict(self, image):
    import numpy as np
    size = tuple(image.shape[:2])
    fitted_size = self.input_size or size
    fitted = image if size == fitted_size else resize_image(image, fitted_size)
    with self._lock:
      if self._allocated_size != fitted_size:
        if self.input_size is None:
          self._interpreter.resize_tensor_input(self._input_index, [1, *fitted_size, 3])
        self._interpreter.allocate_tensors()
        self._allocated_size = fitted_size
      self._interpreter.set_tensor(self._input_index, fitted[None])
      self._interpreter.invoke()
      labels = self._interpreter.get_tensor(self._labels_index)[0].astype(np.int32, copy=False)
    return labels if size == fitted_size else resize_labels(labels, size)

  def close(self):
    self._interpreter = None


def _usable_cores() -> int:
  """The CPUs this process may run on (its affinity, as a container's cpuset limits it)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def _head(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read(8)


def _frozen_graph_file(path: str) -> Optional[str]:
  """A GraphDef has no magic number: a .pb file whose first byte is the tag of GraphDef's `node`
  field (1, length-delimited) is taken for one, and its parse confirms it when loaded."""
  if path.endswith('.pb') and os.path.basename(path) != SAVED_MODEL_PB and _head(path)[:1] == b'\x0a':
    return path
  return None


def _saved_model_folder(path: str) -> Optional[str]:
  return os.path.dirname(path) if os.path.basename(path) == SAVED_MODEL_PB else None


def _tflite_file(path: str) -> Optional[str]:
  """TFLite files are FlatBuffers with the identifier `TFL3` at offset 4."""
  return path if _head(path)[4:8] == b'TFL3' else None


def _tflite_takes_any_size(path: str) -> bool:
  """Whether the TFLite model's first input has a free height and width, read from the file's
  tensor table without an interpreter; False for a file that cannot be read so (its loader then
  says what is wrong, if it is the model chosen)."""
  import mmap
  import struct
  from ai_edge_litert import schema_py_generated as schema
  with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
    try:
      graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
      tensor = graph.Tensors(graph.Inputs(0))
      signature = [] if tensor.ShapeSignatureIsNone() else tensor.ShapeSignatureAsNumpy().tolist()
    except (struct.error, IndexError, ValueError, TypeError, AttributeError):
      return False
  return len(signature) == 4 and min(signature[1:3]) < 0


def _any(path: str) -> bool:
  return True


@dataclasses.dataclass(frozen=True)
class ModelFormat:
  """One export format: where it lies in model.tar.gz, how to recognise and load it, who writes it."""
  name: str
  filename: str  # the file or folder inside the export
  detect: Callable[[str], Optional[str]]  # a file's path -> the model's path (it or its folder), or None
  loader: type  # loader(model path) -> an object with predict(image) -> labels, format, close()
  writer: str  # the module of deeplab/export/ whose write(job, path) writes it
  # Whether `--model_format=auto` takes a model (its path) in this format's turn; a model it
  # refuses is taken only when no other format is present.
  preferred: Callable[[str], bool] = _any

  def write(self, job, path: str) -> None:
    importlib.import_module(f'deeplab.export.{self.writer}').write(job, path)


# In order of preference: what `--model_format=auto` loads first. TFLite runs the network about
# twice as fast as TensorFlow here (docs/benchmarks.md), but a model of a fixed input size would
# resize every image to that size: it comes last.
FORMATS = {format.name: format for format in (
    ModelFormat(TFLITE_FORMAT, TFLITE_FILE, _tflite_file, TFLitePredictor, 'tflite',
                _tflite_takes_any_size),
    ModelFormat(FROZEN_GRAPH_FORMAT, FROZEN_GRAPH, _frozen_graph_file, FrozenGraphPredictor,
                'frozen_graph'),
    ModelFormat(SAVED_MODEL_FORMAT, SAVED_MODEL_DIR, _saved_model_folder, SavedModelPredictor,
                'saved_model'),
)}


def _detect(path: str) -> Optional[Tuple[str, str]]:
  """(format, model path) of a file recognised by content, or None."""
  for format in FORMATS.values():
    found = format.detect(path)
    if found:
      return format.name, found
  return None


def find_models(path: str) -> dict:
  """{format: [paths]} of the models in `path` (a file, or a folder searched two levels down),
  recognised by content: SavedModel folders by their saved_model.pb, TFLite and frozen graph
  files by their first bytes."""
  found = {name: [] for name in FORMATS}
  if os.path.isfile(path):
    detected = _detect(path)
    if detected:
      found[detected[0]].append(detected[1])
    return found
  root_depth = path.rstrip(os.sep).count(os.sep)
  for folder, subfolders, files in os.walk(path):
    subfolders[:] = sorted(d for d in subfolders if not d.startswith('.') and d != 'variables')
    if folder.count(os.sep) - root_depth >= 2:
      subfolders[:] = []
    for name in sorted(files):
      file_path = os.path.join(folder, name)
      detected = not name.startswith('.') and os.path.isfile(file_path) and _detect(file_path)
      if detected:
        found[detected[0]].append(detected[1])
  return found


def find_model(path: str, model_format: Optional[str] = None) -> Tuple[str, str]:
  """(format, path) of the one model to load from `path`: of `model_format` if given, else of the
  first format in FORMATS that `path` holds and whose `preferred` test takes its model (else of
  the first format `path` holds). Two models of that format are an error."""
  if model_format is not None and model_format not in FORMATS:
    raise UserError(f'model format {model_format!r}: expected one of {", ".join(FORMATS)}')
  if not os.path.exists(path):
    raise UserError(f'{path}: no such file or folder')
  found = find_models(path)
  order = [model_format] if model_format else sorted(
      FORMATS, key=lambda name: bool(found[name]) and not FORMATS[name].preferred(found[name][0]))
  for name in order:
    if len(found[name]) > 1:
      raise UserError(f'{path}: {len(found[name])} {name} models ({", ".join(found[name])}); '
                      'name the file to load')
    if found[name]:
      return name, found[name][0]
  wanted = model_format or 'frozen graph, SavedModel or TFLite'
  raise UserError(f'{path}: no {wanted} model found; expected the output of the export step')


def load_model(path: str, model_format: Optional[str] = None):
  """The model in `path` (see find_model) as an object with `predict(image uint8 [H, W, 3])` ->
  labels int32 [H, W], `format` and `close()`."""
  found_format, model_path = find_model(path, model_format)
  return FORMATS[found_format].loader(model_path)
