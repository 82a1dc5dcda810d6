"""The exporters: checkpoint -> frozen inference graph (like the model-zoo graphs), SavedModel and
TFLite; one loader for all three and a comparison of their labels.

The frozen graph:

    ImageTensor:0            uint8 [1, H, W, 3], any H and W
    SemanticPredictions:0    int32 [1, H, W]     class ids
    SemanticProbabilities:0  float32 [1, H, W, num_classes]

Inside the graph: resize to the model's range, predict (optionally multi-scale / flipped), resize
back. It is `model.predict_labels`, the function evaluate uses, with the variables frozen in.

The SavedModel (for TensorFlow Serving and KServe's tensorflow runtime) is the frozen graph behind
two signatures: `serving_default` (images uint8 [1, H, W, 3]) and `encoded_image` (image_bytes string
[1], one JPEG/PNG file); both give semantic_predictions int32 [1, H, W] and semantic_probabilities
float32 [1, H, W, num_classes].

The TFLite model has a fixed input size: uint8 RGB [1, H, W, 3] in, labels int32 [1, H, W] and
logits [1, H, W, num_classes] out (float32, or int8 with full-integer quantisation).
"""
from __future__ import annotations

import functools
import os
from typing import Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from deeplab import checkpoint, metrics, model
from deeplab.compat import tf
from deeplab.config import (MAX_IMAGE_SIDE, MODEL_FORMATS, TFLITE_QUANTIZATIONS, ExportConfig,
                            ModelConfig)
from deeplab.errors import UserError
from deeplab.preprocess import resize_to_range

INPUT_TENSOR = 'ImageTensor'
PREDICTIONS_TENSOR = 'SemanticPredictions'
PROBABILITIES_TENSOR = 'SemanticProbabilities'
FROZEN_GRAPH = 'frozen_inference_graph.pb'

# TensorFlow Serving serves the numbered versions under a model's base path: `saved_model/` is the
# base path (KServe's storageUri), `1` the one version an export holds.
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
DEFAULT_TFLITE_SIZE = (513, 513)  # the model zoo's evaluation crop

FROZEN_GRAPH_FORMAT, SAVED_MODEL_FORMAT, TFLITE_FORMAT = MODEL_FORMATS


def _frozen(build_outputs, checkpoint_prefix: str):
  """The GraphDef of the graph `build_outputs()` builds (it returns the output tensors), with the
  variables restored from `checkpoint_prefix` and turned into constants."""
  with tf.Graph().as_default() as graph:
    outputs = build_outputs()
    with tf.compat.v1.Session(graph=graph) as session:
      checkpoint.restore(session, tf.compat.v1.train.Saver(), checkpoint_prefix)
      return tf.compat.v1.graph_util.convert_variables_to_constants(
          session, graph.as_graph_def(), [tensor.op.name for tensor in outputs])


def freeze(config: ModelConfig, checkpoint_prefix: str, export_config: ExportConfig,
           lean: bool = True):
  """Returns the frozen GraphDef of the inference graph of `checkpoint_prefix`, made lean for
  inference (`lean_inference_graph`) unless lean=False (as built: to compare against)."""
  def build_outputs():
    images = tf.compat.v1.placeholder(tf.uint8, [1, None, None, 3], name=INPUT_TENSOR)
    predictions, probabilities = model.predict_labels(
        images, config, export_config.inference_scales, export_config.add_flipped_images,
        export_config.export_crop_size)
    return (tf.identity(predictions, name=PREDICTIONS_TENSOR),
            tf.identity(probabilities, name=PROBABILITIES_TENSOR))

  graph_def = _frozen(build_outputs, checkpoint_prefix)
  return lean_inference_graph(graph_def) if lean else graph_def


_BATCH_NORMS = ('FusedBatchNorm', 'FusedBatchNormV3')
_CONVOLUTIONS = ('Conv2D', 'DepthwiseConv2dNative')


def lean_inference_graph(graph_def, input_size: Optional[Sequence[int]] = None):
  """The frozen inference graph `graph_def` with the same labels, computed with fewer ops.

  - Batch norm folded into the convolution before it (weights scaled per output channel, the
    shift a BiasAdd), which TensorFlow's runtime then fuses with the bias and the activation. The
    factors are computed in float32 as the batch norm kernel computes them, so a batch norm that
    is the identity leaves the weights bit for bit.
  - SemanticPredictions from the logits rather than their softmax, when the argmax reads the
    softmax directly (one scale, unflipped, no resize back from the model's range): softmax is
    monotonic, so the argmax is the same. SemanticProbabilities is unchanged.
  - With `input_size` (height, width), ImageTensor gets that static shape, and Grappler folds
    the shape arithmetic of the resizes and atrous convolutions into constants when it runs the
    graph; such a graph only takes images of that size.

  The graph stays portable: its atrous convolutions are still the space-to-batch form every
  TensorFlow runs (see `dilated_for_this_runtime`).
  """
  graph_def = _copy(graph_def)
  nodes = {node.name: node for node in graph_def.node}
  consumers = {}
  for node in graph_def.node:
    for name in node.input:
      consumers.setdefault(name.lstrip('^'), []).append(node)
  for node in list(graph_def.node):
    if node.op in _BATCH_NORMS and not node.attr['is_training'].b:
      _fold_batch_norm(graph_def, node, nodes, consumers)
  predictions = nodes.get(PREDICTIONS_TENSOR)
  argmax = predictions is not None and nodes.get(_producer(predictions.input[0]))
  if argmax and argmax.op == 'ArgMax':
    softmax = nodes[_producer(argmax.input[0])]
    if softmax.op == 'Softmax':
      argmax.input[0] = softmax.input[0]
  if input_size is not None:
    image = nodes[INPUT_TENSOR]
    image.attr['shape'].shape.CopyFrom(
        tf.TensorShape([1, *map(int, input_size), 3]).as_proto())
  outputs = [name for name in (PREDICTIONS_TENSOR, PROBABILITIES_TENSOR) if name in nodes]
  return tf.compat.v1.graph_util.extract_sub_graph(graph_def, outputs)


def _copy(graph_def):
  copy = tf.compat.v1.GraphDef()
  copy.CopyFrom(graph_def)
  return copy


def _producer(input_name: str) -> str:
  """The node name of a GraphDef input ('name', 'name:1' or '^name')."""
  return input_name.lstrip('^').split(':')[0]


def _constant(name: str, nodes) -> Optional[np.ndarray]:
  """The value of the constant behind `name` (through Identity ops, as freezing leaves the
  variable reads), or None when it is not a constant."""
  node = nodes[_producer(name)]
  while node.op == 'Identity':
    node = nodes[_producer(node.input[0])]
  return tf.make_ndarray(node.attr['value'].tensor) if node.op == 'Const' else None


def _fold_batch_norm(graph_def, batch_norm, nodes, consumers) -> None:
  """Folds the inference batch norm `batch_norm` into the convolution that feeds it (directly, or
  through the BatchToSpaceND of an atrous convolution, which moves pixels, not channels): the
  convolution gets scaled weights and the batch norm node becomes a BiasAdd of the same name.
  Leaves the graph as it is when the pattern does not hold."""
  if any(':' in name and not name.endswith(':0')
         for consumer in consumers.get(batch_norm.name, ()) for name in consumer.input
         if _producer(name) == batch_norm.name):
    return  # the batch statistics outputs are read: not an inference-only batch norm
  source = nodes[_producer(batch_norm.input[0])]
  convolution = source
  if source.op == 'BatchToSpaceND':
    convolution = nodes[_producer(source.input[0])]
  if convolution.op not in _CONVOLUTIONS or convolution.attr['data_format'].s not in (b'', b'NHWC'):
    return
  chain = [convolution] + ([source] if source is not convolution else [])
  if any(len(consumers.get(node.name, ())) != 1 for node in chain):
    return  # another op reads the unnormalised output
  weights = _constant(convolution.input[1], nodes)
  scale, offset, mean, variance = (_constant(name, nodes) for name in batch_norm.input[1:5])
  if any(value is None for value in (weights, scale, offset, mean, variance)):
    return
  epsilon = np.float32(batch_norm.attr['epsilon'].f)
  factor = (scale * (np.float32(1) / np.sqrt(variance + epsilon))).astype(np.float32)
  shift = (offset - mean * factor).astype(np.float32)
  if convolution.op == 'DepthwiseConv2dNative':  # [kh, kw, in, multiplier]: out = in * m + k
    factor = factor.reshape(weights.shape[2:])
  name = batch_norm.name
  convolution.input[1] = _add_constant(graph_def, nodes, f'{name}/folded_weights', weights * factor)
  shift_name = _add_constant(graph_def, nodes, f'{name}/folded_shift', shift)
  device = batch_norm.device
  batch_norm.Clear()
  batch_norm.name, batch_norm.op, batch_norm.device = name, 'BiasAdd', device
  batch_norm.input.extend([source.name, shift_name])
  batch_norm.attr['T'].type = tf.float32.as_datatype_enum
  batch_norm.attr['data_format'].s = b'NHWC'


def dilated_for_this_runtime(graph_def):
  """`graph_def` with each atrous depthwise convolution (SpaceToBatchND -> depthwise ->
  BatchToSpaceND, as tf.nn.depthwise_conv2d builds a dilated one) as one depthwise convolution
  with that dilation, if this TensorFlow's kernels take dilations; else `graph_def` itself.

  The same sums over the same pixels, without the two copies of the feature map and the shape
  arithmetic of their paddings (about 20 ops each for any-size input), and the runtime fuses the
  bias and activation into the convolution: about a sixth of the latency of MobileNetV2 at
  output stride 8 (257x257). Done when a graph is loaded rather than in the exported file, because
  TensorFlow's own depthwise kernel, which runs where oneDNN does not (ARM,
  TF_ENABLE_ONEDNN_OPTS=0, TF Serving builds without it), refuses dilations.
  """
  if not _depthwise_takes_dilations():
    return graph_def
  graph_def = _copy(graph_def)
  nodes = {node.name: node for node in graph_def.node}
  for node in list(graph_def.node):
    if node.op == 'BatchToSpaceND':
      _dilate_in_place(graph_def, node, nodes)
  outputs = [name for name in (PREDICTIONS_TENSOR, PROBABILITIES_TENSOR) if name in nodes]
  return tf.compat.v1.graph_util.extract_sub_graph(graph_def, outputs)


@functools.lru_cache(maxsize=None)
def _depthwise_takes_dilations() -> bool:
  """Whether DepthwiseConv2dNative runs with dilations here, on the device a session places it
  on (a placeholder input: constant folding would run it elsewhere)."""
  with tf.Graph().as_default() as graph:
    images = tf.compat.v1.placeholder(tf.float32, [1, 5, 5, 1])
    dilated = tf.raw_ops.DepthwiseConv2dNative(
        input=images, filter=tf.ones([3, 3, 1, 1]), strides=[1, 1, 1, 1], padding='SAME',
        dilations=[1, 2, 2, 1])
    with tf.compat.v1.Session(graph=graph) as session:
      try:
        session.run(dilated, {images: np.ones([1, 5, 5, 1], np.float32)})
        return True
      except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
        return False


def _dilate_in_place(graph_def, batch_to_space, nodes) -> None:
  """Turns SpaceToBatchND -> DepthwiseConv2dNative (VALID, stride 1) -> `batch_to_space` into
  that DepthwiseConv2dNative with the block shape as its dilation, read where `batch_to_space`
  was. Leaves the graph as it is unless the pattern holds and the space-to-batch pads as SAME
  padding of the dilated kernel would (how the models build every atrous convolution)."""
  convolution = nodes[_producer(batch_to_space.input[0])]
  if (convolution.op != 'DepthwiseConv2dNative' or convolution.attr['padding'].s != b'VALID'
      or list(convolution.attr['strides'].list.i) != [1, 1, 1, 1]
      or any(rate != 1 for rate in convolution.attr['dilations'].list.i)
      or convolution.attr['data_format'].s not in (b'', b'NHWC')):
    return
  space_to_batch = nodes[_producer(convolution.input[0])]
  readers = [node for node in graph_def.node
             if any(_producer(name) == convolution.name for name in node.input)]
  if space_to_batch.op != 'SpaceToBatchND' or readers != [batch_to_space]:
    return  # another reader of the convolution's output would see it change
  rates = _constant(space_to_batch.input[1], nodes)
  crop_rates = _constant(batch_to_space.input[1], nodes)
  if rates is None or crop_rates is None or rates.tolist() != crop_rates.tolist():
    return
  weights = _constant(convolution.input[1], nodes)
  if weights is None or not _pads_same(space_to_batch, weights.shape[:2], rates, nodes):
    return
  convolution.input[0] = space_to_batch.input[0]
  convolution.attr['padding'].s = b'SAME'
  convolution.attr['dilations'].list.i[:] = [1, *(int(rate) for rate in rates), 1]
  for node in graph_def.node:
    for index, name in enumerate(node.input):
      if name in (batch_to_space.name, batch_to_space.name + ':0'):
        node.input[index] = convolution.name


def _pads_same(space_to_batch, kernel_size, rates, nodes) -> bool:
  """Whether `space_to_batch` pads as the dilated convolution with SAME padding would. tf.nn's
  atrous convolutions pad by constant base paddings ([[top, bottom], [left, right]]) plus what
  makes the size a multiple of the rate (cropped again after the batch-to-space); the base
  paddings are the one 2x2 constant the paddings are computed from."""
  pending, seen, found = [space_to_batch.input[2]], set(), []
  while pending:
    node = nodes[_producer(pending.pop())]
    if node.name in seen:
      continue
    seen.add(node.name)
    if node.op == 'Const':
      value = tf.make_ndarray(node.attr['value'].tensor)
      if value.shape == (2, 2):
        found.append(value.tolist())
    elif node.op != 'Shape':  # the input's size: where the extra padding comes from
      pending.extend(node.input)
  if len(found) != 1:
    return False
  totals = [(int(size) - 1) * int(rate) for size, rate in zip(kernel_size, rates)]
  return found[0] == [[total // 2, total - total // 2] for total in totals]


def _add_constant(graph_def, nodes, name: str, value: np.ndarray) -> str:
  node = graph_def.node.add()
  node.name, node.op = name, 'Const'
  node.attr['dtype'].type = tf.float32.as_datatype_enum
  node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(value.astype(np.float32)))
  nodes[name] = node
  return name


def write_frozen_graph(graph_def, path: str) -> None:
  # Deterministic: protobuf map fields (node attributes) are otherwise written in hash order, and
  # the same checkpoint must give the same model.tar.gz bytes.
  with open(path, 'wb') as f:
    f.write(graph_def.SerializeToString(deterministic=True))


def write_saved_model(graph_def, export_dir: str) -> None:
  """Writes the frozen graph `graph_def` as a SavedModel in `export_dir` (which must not exist).

  One graph serves both signatures: `images` is a placeholder whose default is the decoded
  `image_bytes`, so feeding `images` never runs the decoder and the weights are stored once. The
  decoder is TensorFlow's (no EXIF rotation). The weights are constants, so there is no variables/
  folder; the same graph gives the same saved_model.pb bytes.
  """
  with tf.Graph().as_default() as graph:
    image_bytes = tf.compat.v1.placeholder(tf.string, [1], name=IMAGE_BYTES_INPUT)
    decoded = tf.io.decode_image(image_bytes[0], channels=3, dtype=tf.uint8, expand_animations=False)
    images = tf.compat.v1.placeholder_with_default(decoded[tf.newaxis], [1, None, None, 3],
                                                   name=IMAGES_INPUT)
    predictions, probabilities = tf.compat.v1.import_graph_def(
        graph_def, input_map={INPUT_TENSOR + ':0': images},
        return_elements=[PREDICTIONS_TENSOR + ':0', PROBABILITIES_TENSOR + ':0'], name='')
    tensor_info = tf.compat.v1.saved_model.utils.build_tensor_info
    outputs = {PREDICTIONS_OUTPUT: tensor_info(predictions),
               PROBABILITIES_OUTPUT: tensor_info(probabilities)}

    def signature(name, tensor):
      return tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
          {name: tensor_info(tensor)}, outputs,
          tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME)

    builder = tf.compat.v1.saved_model.Builder(export_dir)
    with tf.compat.v1.Session(graph=graph) as session:
      builder.add_meta_graph_and_variables(
          session, [tf.compat.v1.saved_model.tag_constants.SERVING],
          signature_def_map={SERVING_SIGNATURE: signature(IMAGES_INPUT, images),
                             ENCODED_IMAGE_SIGNATURE: signature(IMAGE_BYTES_INPUT, image_bytes)},
          strip_default_attrs=True)
    builder.save()


def default_tflite_size(card: checkpoint.ModelCard) -> Tuple[int, int]:
  """(height, width) for a TFLite export: the training crop size recorded in model.json (the size
  the network was trained at), else DEFAULT_TFLITE_SIZE."""
  return tuple(card.training.train_crop_size) if card.training else DEFAULT_TFLITE_SIZE


def _fixed_size_logits(images, config: ModelConfig, size):
  """Logits float32 [1, H, W, num_classes] of images float32 [1, H, W, 3] in [0, 255].

  `model.predict_labels` at one scale, unflipped, with the logits kept instead of their softmax
  (the argmax is the same); the static size lets the converter fold the resizing arithmetic.
  Without a resize range the images go in as they are (no slice and reshape of the input for
  the interpreter to run on every call).
  """
  if not (config.min_resize_value or config.max_resize_value):
    return model.resize_bilinear(model.logits(model.preprocess(images), config), size)
  resized = resize_to_range(images[0], config.min_resize_value, config.max_resize_value)[tf.newaxis]
  scores = model.resize_bilinear(model.logits(model.preprocess(resized), config),
                                 tf.shape(resized)[1:3])
  return model.resize_bilinear(scores, size)


def _calibration_samples(images: Iterable, size):
  """float32 [1, H, W, 3] samples for the converter's calibration, each image resized to `size`.

  The first sample gets one black and one white pixel: the calibrated input range is then exactly
  0..255, so the quantised uint8 input has scale 1 and zero point 0 and takes raw pixel values.
  """
  count = 0
  for image in images:
    sample = _resize_image(np.asarray(image, np.uint8), size).astype(np.float32)
    if count == 0:
      sample[0, 0], sample[0, -1] = 0.0, 255.0
    count += 1
    yield [sample[np.newaxis]]
  if not count:
    raise UserError('int8 quantisation needs representative images; got none')


def write_tflite(config: ModelConfig, checkpoint_prefix: str, path: str,
                 input_size: Sequence[int] = DEFAULT_TFLITE_SIZE, quantize: str = 'none',
                 representative_images: Optional[Iterable] = None) -> None:
  """Writes the TFLite model of `checkpoint_prefix` for images of `input_size` (height, width).

  Input uint8 RGB [1, H, W, 3] (preprocessing inside, as in the frozen graph); outputs in this order:
  labels int32 [1, H, W], logits [1, H, W, num_classes]. Single scale and unflipped whatever the
  frozen graph was exported with. quantize='none' keeps float32 weights and logits; 'int8' quantises
  weights and activations to integers, calibrated on `representative_images` (uint8 [h, w, 3] each,
  any size: images like those the model will see, e.g. some of its training set), with int8 logits.
  """
  if quantize not in TFLITE_QUANTIZATIONS:
    raise UserError(f'quantize={quantize!r}: expected one of {TFLITE_QUANTIZATIONS}')
  height, width = (int(v) for v in input_size)
  # Checked here too, not only by the flag's bounds: beyond them the converter can die of SIGSEGV.
  if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
    raise UserError(f'TFLite input size {height}x{width}: expected sides of 1..{MAX_IMAGE_SIDE} '
                    'pixels (--tflite_input_size, else the training crop size in model.json)')
  int8 = quantize == 'int8'

  def build_outputs():
    # The int8 converter quantises a float input into uint8 itself; the float model casts in-graph.
    images = tf.compat.v1.placeholder(tf.float32 if int8 else tf.uint8, [1, height, width, 3],
                                      name=IMAGES_INPUT)
    logits = _fixed_size_logits(tf.cast(images, tf.float32), config, [height, width])
    return (tf.argmax(logits, axis=3, output_type=tf.int32, name=PREDICTIONS_OUTPUT),
            tf.identity(logits, name=LOGITS_OUTPUT))

  frozen = _frozen(build_outputs, checkpoint_prefix)
  # Converted from a graph of the frozen GraphDef alone: in the graph with variables, the
  # converter's optimiser looks for their initialisers and logs an error for each one.
  with tf.Graph().as_default() as graph:
    tf.compat.v1.import_graph_def(frozen, name='')
    converter = tf.compat.v1.lite.TFLiteConverter(
        frozen, [graph.get_tensor_by_name(IMAGES_INPUT + ':0')],
        [graph.get_tensor_by_name(name + ':0') for name in (PREDICTIONS_OUTPUT, LOGITS_OUTPUT)])
    if int8:
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.representative_dataset = lambda: _calibration_samples(
          representative_images or (), (height, width))
      converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
      converter.inference_input_type = tf.uint8
      converter.inference_output_type = tf.int8
    flatbuffer = converter.convert()
  with open(path, 'wb') as f:
    f.write(flatbuffer)


def _resize_image(image, size):
  """uint8 [h, w, 3] -> [H, W, 3] (bilinear), size = (H, W)."""
  from PIL import Image
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def _resize_labels(labels, size):
  """int32 [h, w] -> [H, W] (nearest), size = (H, W)."""
  from PIL import Image
  return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))


class _SessionModel:
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


class FrozenModel(_SessionModel):
  """A loaded frozen graph: `predict(image uint8 [H, W, 3])` -> labels int32 [H, W]; run as
  `dilated_for_this_runtime` makes it."""
  format = FROZEN_GRAPH_FORMAT

  def __init__(self, path: str):
    from google.protobuf.message import DecodeError
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


class SavedModelModel(_SessionModel):
  """A loaded SavedModel (its serving_default signature): `predict(image uint8 [H, W, 3])` ->
  labels int32 [H, W]."""
  format = SAVED_MODEL_FORMAT

  def __init__(self, export_dir: str):
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


class TFLiteModel:
  """A loaded TFLite model: `predict(image uint8 [H, W, 3])` -> labels int32 [H, W].

  The image is resized to the model's fixed input size (bilinear) and the labels back (nearest).
  Runs on LiteRT (`ai_edge_litert`), the maintained interpreter: tf.lite.Interpreter is deprecated.
  An interpreter is not thread-safe: one predict at a time.
  """
  format = TFLITE_FORMAT

  def __init__(self, path: str):
    from ai_edge_litert.interpreter import Interpreter
    self._interpreter = Interpreter(model_path=path)
    self._interpreter.allocate_tensors()
    image_input = self._interpreter.get_input_details()[0]
    labels_output = self._interpreter.get_output_details()[0]
    if image_input['dtype'] != np.uint8 or len(image_input['shape']) != 4 or \
        len(labels_output['shape']) != 3:
      raise UserError(f'{path}: input {image_input["dtype"].__name__} {list(image_input["shape"])}, '
                      f'first output {list(labels_output["shape"])}; expected uint8 [1, H, W, 3] '
                      'in and labels [1, H, W] first out, as write_tflite makes')
    self.input_size = tuple(int(v) for v in image_input['shape'][1:3])
    self._input_index = image_input['index']
    self._labels_index = labels_output['index']

  def predict(self, image):
    size = image.shape[:2]
    fitted = image if size == self.input_size else _resize_image(image, self.input_size)
    self._interpreter.set_tensor(self._input_index, fitted[np.newaxis])
    self._interpreter.invoke()
    labels = self._interpreter.get_tensor(self._labels_index)[0].astype(np.int32)
    return labels if size == self.input_size else _resize_labels(labels, size)

  def close(self):
    self._interpreter = None


_MODEL_CLASSES = {FROZEN_GRAPH_FORMAT: FrozenModel, SAVED_MODEL_FORMAT: SavedModelModel,
                  TFLITE_FORMAT: TFLiteModel}


def _file_format(path: str) -> Optional[str]:
  """The model format of a file from its first bytes, or None.

  TFLite files are FlatBuffers with the identifier `TFL3` at offset 4. A GraphDef has no magic
  number: a .pb file whose first byte is the tag of GraphDef's `node` field (1, length-delimited)
  is taken for one, and its parse confirms it when loaded.
  """
  with open(path, 'rb') as f:
    head = f.read(8)
  if head[4:8] == b'TFL3':
    return TFLITE_FORMAT
  if path.endswith('.pb') and os.path.basename(path) != SAVED_MODEL_PB and head[:1] == b'\x0a':
    return FROZEN_GRAPH_FORMAT
  return None


def find_models(path: str) -> dict:
  """{format: [paths]} of the models in `path` (a file, or a folder searched two levels down),
  recognised by content: SavedModel folders by their saved_model.pb, TFLite and frozen graph
  files by their first bytes."""
  found = {name: [] for name in MODEL_FORMATS}
  if os.path.isfile(path):
    if os.path.basename(path) == SAVED_MODEL_PB:
      found[SAVED_MODEL_FORMAT].append(os.path.dirname(path))
    elif _file_format(path):
      found[_file_format(path)].append(path)
    return found
  root_depth = path.rstrip(os.sep).count(os.sep)
  for folder, subfolders, files in os.walk(path):
    subfolders[:] = sorted(d for d in subfolders if not d.startswith('.') and d != 'variables')
    if folder.count(os.sep) - root_depth >= 2:
      subfolders[:] = []
    if SAVED_MODEL_PB in files:
      found[SAVED_MODEL_FORMAT].append(folder)
    for name in sorted(files):
      file_path = os.path.join(folder, name)
      if not name.startswith('.') and os.path.isfile(file_path) and _file_format(file_path):
        found[_file_format(file_path)].append(file_path)
  return found


def find_model(path: str, model_format: Optional[str] = None) -> Tuple[str, str]:
  """(format, path) of the one model to load from `path`: of `model_format` if given, else of the
  first format in MODEL_FORMATS that `path` holds. Two models of that format are an error."""
  if model_format is not None and model_format not in MODEL_FORMATS:
    raise UserError(f'model format {model_format!r}: expected one of {", ".join(MODEL_FORMATS)}')
  if not os.path.exists(path):
    raise UserError(f'{path}: no such file or folder')
  found = find_models(path)
  for name in [model_format] if model_format else MODEL_FORMATS:
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
  return _MODEL_CLASSES[found_format](model_path)


def compare_formats(models: Mapping[str, object], images: Iterable, num_classes: int,
                    reference: str = FROZEN_GRAPH_FORMAT) -> dict:
  """How closely each model's labels follow the reference model's, over `images` (uint8 [H, W, 3]).

  Returns {name: {'pixel_agreement', 'miou', 'num_pixels'}} for every name in `models` but
  `reference`: the share of pixels with the same label, and the mean IoU of the classes either
  model predicts, with the reference's labels taken as the truth.
  """
  others = [name for name in models if name != reference]
  confusions = {name: np.zeros((num_classes, num_classes), np.int64) for name in others}
  for image in images:
    expected = models[reference].predict(image)
    for name in others:
      confusions[name] += metrics.confusion_matrix(expected, models[name].predict(image),
                                                   num_classes, ignore_label=-1)
  class_names = [str(i) for i in range(num_classes)]
  results = {}
  for name, confusion in confusions.items():
    summary = metrics.summarize(confusion, class_names)
    results[name] = {'pixel_agreement': summary['pixel_accuracy'], 'miou': summary['miou'],
                     'num_pixels': summary['num_pixels']}
  return results
