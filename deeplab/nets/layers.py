"""What the backbones share: layer defaults, fixed-padding and atrous convolutions and the dense
block stacker.

A backbone is a root (its first layers, which subsample by a fixed `input_stride`) followed by a
list of `Block`s of `Unit`s that `stack_blocks_dense` builds for a target output stride.
"""
import contextlib
import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from tensorflow.core.framework import attr_value_pb2

from deeplab.compat import slim, tf
from deeplab.nets.batch_norm import batch_norm

# Set by `native_dilations`: a module value, not a thread-local, because MirroredStrategy builds
# each replica's graph in a thread of its own.
_native_dilations = False


def backbone_arg_scope(weights_initializer, activation_fn, is_training, weight_decay,
                       batch_norm_decay, batch_norm_epsilon):
  """Layer defaults of every backbone: conv -> batch norm (scaled) -> `activation_fn`.

  Regular convolutions get L2 weight decay and depthwise filters none, as the published models were
  trained; convolutions and max pooling pad SAME unless a layer says otherwise.
  """
  with slim.arg_scope([slim.conv2d, slim.separable_conv2d], weights_initializer=weights_initializer,
                      normalizer_fn=batch_norm, activation_fn=activation_fn, padding='SAME'):
    with slim.arg_scope([batch_norm], is_training=is_training, decay=batch_norm_decay,
                        epsilon=batch_norm_epsilon, center=True, scale=True):
      with slim.arg_scope([slim.conv2d], weights_regularizer=slim.l2_regularizer(weight_decay)):
        with slim.arg_scope([slim.separable_conv2d], weights_regularizer=None):
          with slim.arg_scope([slim.max_pool2d], padding='SAME') as scope:
            return scope


def pad_for_kernel(net, kernel_size, rate=1):
  """Zero-pads H and W by the reach of a (dilated) kernel minus 1, split evenly (extra after).

  A strided VALID conv after this padding has SAME's output size, ceil(H / stride), but SAME pads
  only the bottom/right of even inputs, which shifts the features by a pixel against the published
  weights (trained with this padding).
  """
  reach = kernel_size + (kernel_size - 1) * (rate - 1)
  before, after = (reach - 1) // 2, (reach - 1) - (reach - 1) // 2
  return tf.pad(net, [[0, 0], [before, after], [before, after], [0, 0]])


@functools.lru_cache(maxsize=None)
def conv2d_trains_dilated(dtype_name: str = 'float32') -> bool:
  """Whether this runtime's Conv2D, with its input and filter gradients, runs dilated in `dtype_name`
  and agrees with the space-to-batch form (on the CPU).

  TensorFlow's own CPU kernels refuse a dilated input gradient; oneDNN's (TensorFlow's default on
  x86) have all three. Agreement is checked, not only that the kernels run: oneDNN's dilated
  depthwise gradients run and are wrong, so an error is not the only way a kernel can fail. The
  probe never touches a GPU (cuDNN has all three kernels): a CPU answer of no keeps GPU training
  in the space-to-batch form too, slower but right.
  """
  dtype = tf.as_dtype(dtype_name)
  rng = np.random.default_rng(0)
  with tf.Graph().as_default() as graph:
    images = tf.compat.v1.placeholder(dtype, [2, 7, 7, 3])  # not foldable: run by the session
    weights = tf.constant(rng.standard_normal([3, 3, 3, 4]), dtype)
    results = []
    for native in (True, False):
      if native:
        outputs = tf.nn.conv2d(images, weights, 1, 'SAME', dilations=2)
      else:
        outputs = tf.compat.v1.nn.atrous_conv2d(images, weights, 2, 'SAME')
      loss = tf.reduce_sum(tf.square(tf.nn.relu(outputs + 0.5)))
      results.append([outputs, *tf.gradients(loss, [images, weights])])
    native_ops = {t.op.type for t in results[0]}
    if native_ops != {'Conv2D', 'Conv2DBackpropInput', 'Conv2DBackpropFilter'}:
      return False
    config = tf.compat.v1.ConfigProto(device_count={'GPU': 0})
    with tf.compat.v1.Session(graph=graph, config=config) as session:
      try:
        native, space_to_batch = session.run(
            results, {images: rng.standard_normal([2, 7, 7, 3]).astype(dtype.as_numpy_dtype)})
      except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
        return False
  tolerance = 1e-4 if dtype == tf.float32 else 5e-2
  return all(np.allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                         rtol=tolerance, atol=tolerance * np.abs(np.asarray(b, np.float32)).max())
             for a, b in zip(native, space_to_batch))


@contextlib.contextmanager
def native_dilations(dtype=tf.float32):
  """Atrous convolutions built within (`atrous_conv2d`) are single dilated Conv2D ops, where
  `conv2d_trains_dilated(dtype)`; else, and outside, space-to-batch around a plain Conv2D.

  For training graphs: the space-to-batch form moves every dilated layer's input and output
  gradient through SpaceToBatchND / BatchToSpaceND, and convolves many tiny images. Inference
  graphs keep that form, which every runtime (TFLite included) runs; the exporter dilates them
  where it can (deeplab/export/rewrites.py).
  """
  global _native_dilations
  previous = _native_dilations
  _native_dilations = conv2d_trains_dilated(tf.as_dtype(dtype).name)
  try:
    yield
  finally:
    _native_dilations = previous


def atrous_conv2d(net, depth, kernel_size, rate=1, scope=None, **kwargs):
  """slim.conv2d at stride 1 with SAME padding, dilated by `rate`: [N, H, W, C] -> [N, H, W, depth].

  Within `native_dilations` (where the runtime trains them) the convolution is one Conv2D op
  with the dilation as its attribute. slim.conv2d, given a rate, always builds the space-to-batch
  form, so the layer is built at rate 1 and its Conv2D dilated afterwards: the same variables,
  regularizers, batch norm and names, and at stride 1 with SAME padding the same output shape,
  which is why only the attribute changes. Gradients, built later, read the attribute.
  """
  if rate == 1 or not _native_dilations:
    return slim.conv2d(net, depth, kernel_size, stride=1, rate=rate, padding='SAME', scope=scope,
                       **kwargs)
  graph = tf.compat.v1.get_default_graph()
  built_before = len(graph.get_operations())
  net = slim.conv2d(net, depth, kernel_size, stride=1, rate=1, padding='SAME', scope=scope,
                    **kwargs)
  (convolution,) = [op for op in graph.get_operations()[built_before:] if op.type == 'Conv2D']
  convolution._set_attr('dilations', attr_value_pb2.AttrValue(  # pylint: disable=protected-access
      list=attr_value_pb2.AttrValue.ListValue(i=[1, rate, rate, 1])))
  return net


def conv2d_same(net, depth, kernel_size, stride, rate=1, scope=None):
  """A conv whose output is [N, ceil(H / stride), ceil(W / stride), depth] for any H, W.

  Stride 1 uses SAME padding (`atrous_conv2d`); a strided conv pads explicitly (`pad_for_kernel`)
  and convolves VALID.
  """
  if stride == 1:
    return atrous_conv2d(net, depth, kernel_size, rate, scope=scope)
  return slim.conv2d(pad_for_kernel(net, kernel_size, rate), depth, kernel_size, stride=stride,
                     rate=rate, padding='VALID', scope=scope)


def root_convs(net, convs, end_points):
  """3x3 `conv2d_same`s, one per (scope, depth, stride) of `convs`, each output an end point.

  [N, H, W, C] -> [N, ceil(H / S), ceil(W / S), the last depth], S the product of the strides.
  """
  for scope, depth, stride in convs:
    net = conv2d_same(net, depth, 3, stride, scope=scope)
    end_points[scope] = net
  return net


@dataclasses.dataclass(frozen=True)
class Unit:
  """One unit of a block (a bottleneck, an Xception module, ...).

  scope: its variable scope, inside the block's.
  end_point: the key of its output in the end points; the unit function keys its layers under it.
  stride: how much the unit subsamples while the network is below its output stride.
  multi_grid: its multi-grid factor, multiplying the atrous rate the unit runs at.
  args: the other keyword arguments of the block's unit function.
  """
  scope: str
  end_point: str
  stride: int = 1
  multi_grid: int = 1
  args: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Block:
  """Units built by one function under one variable scope.

  scope: the block's variable scope and the end point of its output; None for units that sit
    directly in the network's scope (and then the block has no end point).
  unit_fn: builds a unit: `unit_fn(net, stride, rate, end_points, name, **unit.args)` maps
    [N, H, W, C] to [N, ceil(H / stride), ceil(W / stride), C'], dilating its spatial
    convolutions by `rate` and keying its layers' end points `<name>/...`.
  """
  scope: Optional[str]
  unit_fn: Callable[..., Any]
  units: Sequence[Unit]


def numbered_units(block_scope, unit_name, strides, multi_grid=None, **args):
  """Units scoped unit_1, unit_2, ... with end points `<block_scope>/unit_U/<unit_name>`.

  This is the layout of the published ResNet and Xception checkpoints; `unit_name` is the scope
  the unit function opens inside `unit_U`. `multi_grid` holds the units' multi-grid factors
  (default all 1), `args` go to every unit.
  """
  multi_grid = multi_grid or (1,) * len(strides)
  if len(multi_grid) != len(strides):
    raise ValueError(f'{block_scope}: {len(strides)} units but multi_grid={tuple(multi_grid)}')
  return tuple(Unit(f'unit_{index}', f'{block_scope}/unit_{index}/{unit_name}', stride, factor,
                    args)
               for index, (stride, factor) in enumerate(zip(strides, multi_grid), start=1))


def atrous_schedule(strides, multi_grid, output_stride, input_stride=1):
  """The (stride, atrous rate) each unit runs with so that the network ends at `output_stride`.

  Units subsample by their own stride until the running stride (from `input_stride`) reaches
  `output_stride`. From there on a unit keeps the resolution instead, and its stride multiplies
  the atrous rate of the units after it, so they see the context they would have seen at the
  lower resolution. A unit's multi-grid factor multiplies its own rate only.

  Args:
    strides: each unit's stride.
    multi_grid: each unit's multi-grid factor.
    output_stride: the input size over the size of the last unit's output.
    input_stride: the input size over the size of the first unit's input (the root's stride).
  Returns:
    a list of (stride, rate), one per unit.
  Raises:
    ValueError: the units' strides cannot make `output_stride` from `input_stride`.
  """
  schedule = []
  current_stride, rate = input_stride, 1
  for stride, factor in zip(strides, multi_grid):
    if current_stride == output_stride:
      schedule.append((1, rate * factor))
      rate *= stride
    else:
      schedule.append((stride, rate * factor))
      current_stride *= stride
  if current_stride != output_stride:
    raise ValueError(f'output_stride={output_stride} cannot be reached: the network subsamples '
                     f'by {input_stride} before its blocks and then by {list(strides)}')
  return schedule


def stack_blocks_dense(net, blocks, output_stride, input_stride, end_points):
  """Builds `blocks` on `net`, with atrous convolution beyond `output_stride` (`atrous_schedule`).

  Args:
    net: [N, ceil(H / input_stride), ceil(W / input_stride), C], the root's output for images of
      height H and width W.
    blocks: a sequence of `Block`s.
    output_stride: the image size over the size of the result.
    input_stride: the image size over the size of `net`.
    end_points: dict to which each unit, and each block with a scope, adds its output.
  Returns:
    the last unit's output, [N, ceil(H / output_stride), ceil(W / output_stride), C'] (SAME
    and fixed padding both round up).
  Raises:
    ValueError: `output_stride` cannot be reached (raised before any unit is built).
  """
  units = [unit for block in blocks for unit in block.units]
  schedule = iter(atrous_schedule([unit.stride for unit in units],
                                  [unit.multi_grid for unit in units], output_stride, input_stride))
  for block in blocks:
    with (tf.compat.v1.variable_scope(block.scope) if block.scope else contextlib.nullcontext()):
      for unit in block.units:
        stride, rate = next(schedule)
        with tf.compat.v1.variable_scope(unit.scope):
          net = block.unit_fn(net, stride, rate, end_points, unit.end_point, **unit.args)
        end_points[unit.end_point] = net
    if block.scope:
      end_points[block.scope] = net
  return net
