"""Rewrites of a frozen inference graph that keep its labels and cost fewer ops.

`lean_inference_graph` is applied to the exported file (portable: any TensorFlow runs it);
`dilated_for_this_runtime` when a graph is loaded, where this runtime's kernels take dilations;
`native_dilations` to the graph the TFLite writer converts (TFLite's kernels all take them).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

from deeplab.compat import tf
from deeplab.inference import INPUT_TENSOR, PREDICTIONS_TENSOR, PROBABILITIES_TENSOR


_BATCH_NORMS = ('FusedBatchNorm', 'FusedBatchNormV3')
_CONVOLUTIONS = ('Conv2D', 'DepthwiseConv2dNative')
# Ops that compute each output pixel and channel from the same pixel and channel alone.
_PER_PIXEL = ('BiasAdd', 'Relu', 'Relu6', 'Identity')
FROZEN_GRAPH_OUTPUTS = (PREDICTIONS_TENSOR, PROBABILITIES_TENSOR)


def lean_inference_graph(graph_def, input_size: Optional[Sequence[int]] = None,
                         outputs: Sequence[str] = FROZEN_GRAPH_OUTPUTS):
  """The frozen inference graph `graph_def` with the same labels, computed with fewer ops.

  - Batch norm folded into the convolution before it (weights scaled per output channel, the
    shift a BiasAdd), which TensorFlow's runtime then fuses with the bias and the activation. The
    factors are computed in float32 as the batch norm kernel computes them, so a batch norm that
    is the identity leaves the weights bit for bit.
  - The image pooling branch folded into concat_projection's bias (`_fold_image_pooling`): it is
    one vector per image, so the projection's share of it is too; the broadcast of that vector
    to every pixel, its copy into the concatenation and its half of the projection go.
  - The bias and activation of an atrous convolution moved before its BatchToSpaceND (they act
    per pixel and channel, which the batch-to-space only moves): the runtime then fuses them
    into the convolution, as it does for the others.
  - SemanticPredictions from the logits rather than their softmax, when the argmax reads the
    softmax directly (one scale, unflipped, no resize back from the model's range): softmax is
    monotonic, so the argmax is the same. SemanticProbabilities is unchanged.
  - With `input_size` (height, width), ImageTensor gets that static shape, and Grappler folds
    the shape arithmetic of the resizes and atrous convolutions into constants when it runs the
    graph; such a graph only takes images of that size.

  `outputs`: the names of the graph's output nodes (those present are kept, with what they read).
  The graph stays portable: its atrous convolutions are still the space-to-batch form every
  TensorFlow runs (see `dilated_for_this_runtime`).
  """
  graph_def = _copy(graph_def)
  nodes = {node.name: node for node in graph_def.node}
  consumers = _consumers(graph_def)
  for node in list(graph_def.node):
    if node.op in _BATCH_NORMS and not node.attr['is_training'].b:
      _fold_batch_norm(graph_def, node, nodes, consumers)
  for node in list(graph_def.node):
    if node.op == 'ResizeBilinear':
      _fold_image_pooling(graph_def, node, nodes, _consumers(graph_def))
  for node in list(graph_def.node):
    if node.op == 'BatchToSpaceND':
      _per_pixel_ops_before(node, nodes, _consumers(graph_def))
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
  return tf.compat.v1.graph_util.extract_sub_graph(
      graph_def, [name for name in outputs if name in nodes])


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


def _consumers(graph_def) -> dict:
  """{node name: [the nodes that read it, control inputs included, once per input]}."""
  consumers = {}
  for node in graph_def.node:
    for name in node.input:
      consumers.setdefault(_producer(name), []).append(node)
  return consumers


def _only_reader(node, consumers):
  """The one node that reads `node`, reading its first output once; None otherwise."""
  readers = consumers.get(node.name, ())
  if len(readers) != 1:
    return None
  names = [name for name in readers[0].input if _producer(name) == node.name]
  return readers[0] if names in ([node.name], [node.name + ':0']) else None


def _nhwc(node) -> bool:
  return node.attr['data_format'].s in (b'', b'NHWC')


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


def _fold_image_pooling(graph_def, resize, nodes, consumers) -> None:
  """Folds the image pooling branch whose broadcast is `resize` into the bias of the projection
  of the concatenation that reads it.

  The branch is one vector per image (a spatial mean, then 1x1 convolutions, bias and
  activations), resized to the feature map's size: bilinear resizing of a 1x1 map copies its one
  pixel everywhere. A 1x1 convolution of a concatenation is the sum of the 1x1 convolutions of
  its parts, and the part of a vector copied everywhere is one vector, W_pool . v: it joins the
  projection's bias (the folded batch norm's shift), computed once per image, and the projection
  convolves the other branches only. Batch size 1 (the graph's contract), as the bias is one
  vector. Leaves the graph as it is when the pattern does not hold.
  """
  pooled = resize.input[0]
  if not _is_one_pixel(pooled, nodes):
    return
  concat = _only_reader(resize, consumers)
  if concat is None or concat.op != 'ConcatV2':
    return
  parts = list(concat.input[:concat.attr['N'].i])
  axis = _constant(concat.input[len(parts)], nodes)
  if axis is None or int(axis) not in (3, -1) or len(concat.input) != len(parts) + 1:
    return
  projection = _only_reader(concat, consumers)
  if projection is None or projection.op != 'Conv2D' or not _nhwc(projection) or any(
      value != 1 for key in ('strides', 'dilations') for value in projection.attr[key].list.i):
    return
  bias = _only_reader(projection, consumers)
  weights = _constant(projection.input[1], nodes)
  if (bias is None or bias.op != 'BiasAdd' or not _nhwc(bias) or weights is None
      or weights.shape[:2] != (1, 1) or _constant(bias.input[1], nodes) is None):
    return
  channels = [_channels(part, nodes) for part in parts]
  index = parts.index(resize.name) if resize.name in parts else parts.index(resize.name + ':0')
  if None in channels or sum(channels) != weights.shape[2] or parts.count(parts[index]) != 1:
    return
  start = sum(channels[:index])
  rows = slice(start, start + channels[index])
  name = projection.name
  image_term = graph_def.node.add()
  image_term.CopyFrom(projection)
  image_term.name = f'{name}/image_pooling'
  image_term.input[:] = [pooled, _add_constant(graph_def, nodes, f'{name}/image_pooling_weights',
                                               weights[:, :, rows])]
  nodes[image_term.name] = image_term
  flat = _add_node(graph_def, nodes, f'{name}/image_pooling_vector', 'Reshape',
                   [image_term.name, _add_constant(graph_def, nodes, f'{name}/vector_shape',
                                                   np.array([-1], np.int32))])
  flat.attr['Tshape'].type = tf.int32.as_datatype_enum
  per_image = _add_node(graph_def, nodes, f'{bias.name}/per_image', 'AddV2',
                        [flat.name, bias.input[1]])
  bias.input[1] = per_image.name
  others = parts[:index] + parts[index + 1:]
  projection.input[1] = _add_constant(graph_def, nodes, f'{name}/other_branches_weights',
                                      np.delete(weights, np.arange(rows.start, rows.stop), axis=2))
  if len(others) == 1:
    projection.input[0] = others[0]
  else:
    concat.input[:] = others + [concat.input[len(parts)]]
    concat.attr['N'].i = len(others)


def _is_one_pixel(name: str, nodes) -> bool:
  """Whether `name` is [N, 1, 1, C] by construction: a mean over height and width (keep_dims),
  then ops that map each pixel to a pixel (1x1 convolutions, bias, activations)."""
  node = nodes[_producer(name)]
  while node.op in _PER_PIXEL or (node.op == 'Conv2D' and _is_1x1(node, nodes)):
    node = nodes[_producer(node.input[0])]
  if node.op != 'Mean' or not node.attr['keep_dims'].b:
    return False
  axes = _constant(node.input[1], nodes)
  return axes is not None and sorted(int(axis) % 4 for axis in np.ravel(axes)) == [1, 2]


def _is_1x1(convolution, nodes) -> bool:
  weights = _constant(convolution.input[1], nodes)
  return (weights is not None and weights.shape[:2] == (1, 1) and _nhwc(convolution)
          and all(value == 1 for value in convolution.attr['dilations'].list.i))


def _channels(name: str, nodes) -> Optional[int]:
  """The channel count of `name` (NHWC), from the weights of the convolution that makes it (through
  per-pixel ops and resizes), or None when it cannot be told."""
  node = nodes[_producer(name)]
  while node.op in _PER_PIXEL + ('ResizeBilinear', 'BatchToSpaceND'):
    node = nodes[_producer(node.input[0])]
  weights = _constant(node.input[1], nodes) if node.op in _CONVOLUTIONS else None
  if weights is None or not _nhwc(node):
    return None
  return int(weights.shape[3] if node.op == 'Conv2D' else weights.shape[2] * weights.shape[3])


def _per_pixel_ops_before(batch_to_space, nodes, consumers) -> None:
  """Moves the bias and activation that read `batch_to_space` (the end of an atrous convolution)
  before it: SpaceToBatchND -> convolution -> BiasAdd -> Relu6 -> BatchToSpaceND. They act on each
  pixel and channel alone and the batch-to-space only moves pixels (and crops the extra padding),
  so the values are the same; the runtime then fuses them into the convolution."""
  moved, node = [], batch_to_space
  while True:
    reader = _only_reader(node, consumers)
    if reader is None or reader.op not in _PER_PIXEL or reader.op == 'Identity' or (
        reader.op == 'BiasAdd' and not _nhwc(reader)):
      break
    moved.append(reader)
    node = reader
  if not moved:
    return
  last_readers = consumers.get(moved[-1].name, ())
  moved[0].input[0] = batch_to_space.input[0]
  batch_to_space.input[0] = moved[-1].name
  for reader in last_readers:
    for index, name in enumerate(reader.input):
      if name in (moved[-1].name, moved[-1].name + ':0'):
        reader.input[index] = batch_to_space.name
      elif name == '^' + moved[-1].name:
        reader.input[index] = '^' + batch_to_space.name


def dilated_for_this_runtime(graph_def):
  """`graph_def` with its atrous convolutions as `native_dilations` makes them, for those of
  the convolution ops whose kernels take dilations in this TensorFlow; else `graph_def` itself.

  The same sums over the same pixels, without the two copies of the feature map and the shape
  arithmetic of their paddings (about 20 ops each for any-size input): about a sixth of the
  latency of MobileNetV2 at output stride 8 (257x257). Done when a graph is loaded rather than in
  the exported file, because TensorFlow's own depthwise kernel, which runs where oneDNN does not
  (ARM, TF_ENABLE_ONEDNN_OPTS=0, TF Serving builds without it), refuses dilations.
  """
  dilated = tuple(op for op in _CONVOLUTIONS if takes_dilations(op))
  return native_dilations(graph_def, dilated) if dilated else graph_def


def native_dilations(graph_def, ops: Sequence[str] = _CONVOLUTIONS,
                     outputs: Sequence[str] = FROZEN_GRAPH_OUTPUTS):
  """`graph_def` with each atrous convolution of the `ops` types (SpaceToBatchND -> convolution
  -> its per-pixel ops -> BatchToSpaceND, as tf.nn builds a dilated one for any input size) as one
  convolution with that dilation, for runtimes whose kernels take dilations (TFLite's all do).
  `outputs` as in lean_inference_graph."""
  graph_def = _copy(graph_def)
  nodes = {node.name: node for node in graph_def.node}
  for node in list(graph_def.node):
    if node.op == 'BatchToSpaceND':
      _dilate_in_place(graph_def, node, nodes, ops)
  return tf.compat.v1.graph_util.extract_sub_graph(
      graph_def, [name for name in outputs if name in nodes])


@functools.lru_cache(maxsize=None)
def takes_dilations(op: str) -> bool:
  """Whether the convolution op `op` (Conv2D or DepthwiseConv2dNative) runs with dilations here,
  on the device a session places it on (a placeholder input: constant folding would run it
  elsewhere)."""
  with tf.Graph().as_default() as graph:
    images = tf.compat.v1.placeholder(tf.float32, [1, 5, 5, 1])
    dilated = getattr(tf.raw_ops, op)(
        input=images, filter=tf.ones([3, 3, 1, 1]), strides=[1, 1, 1, 1], padding='SAME',
        dilations=[1, 2, 2, 1])
    with tf.compat.v1.Session(graph=graph) as session:
      try:
        session.run(dilated, {images: np.ones([1, 5, 5, 1], np.float32)})
        return True
      except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
        return False


def _dilate_in_place(graph_def, batch_to_space, nodes, ops) -> None:
  """Turns SpaceToBatchND -> convolution (VALID, stride 1) -> per-pixel ops (bias, activation;
  see `_per_pixel_ops_before`) -> `batch_to_space` into that convolution with the block shape as
  its dilation and SAME padding, followed by the same per-pixel ops, read where `batch_to_space`
  was. Leaves the graph as it is unless the convolution is one of `ops`, the pattern holds and the
  space-to-batch pads as SAME padding of the dilated kernel would (how the models build every
  atrous convolution)."""
  consumers = _consumers(graph_def)
  last = nodes[_producer(batch_to_space.input[0])]
  convolution = last
  while convolution.op in _PER_PIXEL:
    convolution = nodes[_producer(convolution.input[0])]
  if (convolution.op not in ops or convolution.attr['padding'].s != b'VALID'
      or list(convolution.attr['strides'].list.i) != [1, 1, 1, 1]
      or any(rate != 1 for rate in convolution.attr['dilations'].list.i)
      or not _nhwc(convolution)):
    return
  node = convolution
  while node is not last:  # another reader of a value in the chain would see it change
    node = _only_reader(node, consumers)
    if node is None:
      return
  if _only_reader(last, consumers) is not batch_to_space:
    return
  space_to_batch = nodes[_producer(convolution.input[0])]
  if space_to_batch.op != 'SpaceToBatchND':
    return
  rates = _constant(space_to_batch.input[1], nodes)
  crop_rates = _constant(batch_to_space.input[1], nodes)
  if rates is None or crop_rates is None or rates.tolist() != crop_rates.tolist():
    return
  weights = _constant(convolution.input[1], nodes)
  if weights is None or not _pads_same(space_to_batch, batch_to_space, weights.shape[:2], rates,
                                       nodes):
    return
  convolution.input[0] = space_to_batch.input[0]
  convolution.attr['padding'].s = b'SAME'
  convolution.attr['dilations'].list.i[:] = [1, *(int(rate) for rate in rates), 1]
  for reader in consumers.get(batch_to_space.name, ()):
    for index, name in enumerate(reader.input):
      if name in (batch_to_space.name, batch_to_space.name + ':0'):
        reader.input[index] = last.name


def _pads_same(space_to_batch, batch_to_space, kernel_size, rates, nodes) -> bool:
  """Whether `space_to_batch` pads as the dilated convolution with SAME padding would. tf.nn's
  atrous convolutions pad by base paddings ([[top, bottom], [left, right]]) plus what makes the
  size a multiple of the rate, cropped again by `batch_to_space`. For an input of any size the
  base paddings are the one 2x2 constant the paddings are computed from; for a static size the
  paddings and crops are constants themselves."""
  totals = [(int(size) - 1) * int(rate) for size, rate in zip(kernel_size, rates)]
  same = [[total // 2, total - total // 2] for total in totals]
  paddings = _constant(space_to_batch.input[2], nodes)
  if paddings is not None:
    crops = _constant(batch_to_space.input[2], nodes)
    return (crops is not None and crops.shape == paddings.shape == (2, 2) and not crops[:, 0].any()
            and (paddings - np.stack([np.zeros(2, crops.dtype), crops[:, 1]], 1)).tolist() == same)
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
  return found == [same]


def _add_constant(graph_def, nodes, name: str, value: np.ndarray) -> str:
  """Adds a Const node of `value` (float32 unless it is int32); returns its name."""
  value = value if value.dtype == np.int32 else value.astype(np.float32)
  node = _add_node(graph_def, nodes, name, 'Const', [])
  node.attr['dtype'].type = tf.as_dtype(value.dtype).as_datatype_enum
  node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(value))
  return name


def _add_node(graph_def, nodes, name: str, op: str, inputs):
  """Adds a node (of float32 values, attribute T, unless a Const) and returns it."""
  node = graph_def.node.add()
  node.name, node.op = name, op
  node.input.extend(inputs)
  if op != 'Const':
    node.attr['T'].type = tf.float32.as_datatype_enum
  nodes[name] = node
  return node
