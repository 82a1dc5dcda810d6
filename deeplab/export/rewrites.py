"""Rewrites of a frozen inference graph that keep its labels and cost fewer ops.

`lean_inference_graph` is applied to the exported file (portable: any TensorFlow runs it);
`dilated_for_this_runtime` when a graph is loaded, where this runtime's kernels take dilations.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

from deeplab.compat import tf
from deeplab.inference import INPUT_TENSOR, PREDICTIONS_TENSOR, PROBABILITIES_TENSOR


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
