"""What the backbones share: layer defaults, fixed-padding convolutions and the dense block stacker.

A backbone is a root (its first layers, which subsample by a fixed `input_stride`) followed by a
list of `Block`s of `Unit`s that `stack_blocks_dense` builds for a target output stride.
"""
import contextlib
import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

from deeplab.compat import slim, tf
from deeplab.nets.batch_norm import batch_norm


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


def conv2d_same(net, depth, kernel_size, stride, rate=1, scope=None):
  """A conv whose output is [N, ceil(H / stride), ceil(W / stride), depth] for any H, W.

  Stride 1 uses SAME padding; a strided conv pads explicitly (`pad_for_kernel`) and convolves VALID.
  """
  if stride == 1:
    return slim.conv2d(net, depth, kernel_size, stride=1, rate=rate, padding='SAME', scope=scope)
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
