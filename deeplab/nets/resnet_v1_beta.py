"""ResNet-v1 feature extractors for DeepLab: resnet_v1_{18,50,101} and resnet_v1_{50,101}_beta.

The residual networks of He et al. (2015) without their classifier, as DeepLab builds them (its
module of this name holds all of them). "Beta" replaces the 7x7 stride-2 root convolution by
three 3x3 convolutions (He et al., "Bag of tricks", 2018). Scope and variable names are those of
the published DeepLab / tf-slim checkpoints (a beta network's scope has no "_beta"), so they
restore:

    resnet_v1_N/conv1/{weights, BatchNorm/*}                         7x7, 64 channels (not beta)
    resnet_v1_N/conv1_{1,2,3}/{weights, BatchNorm/*}                 3x3, 64, 64, 128 (beta)
    resnet_v1_{50,101}/blockB/unit_U/bottleneck_v1/conv{1,2,3}/{weights, BatchNorm/*}
    resnet_v1_18/blockB/unit_U/lite_bottleneck_v1/conv{1,2}/{weights, BatchNorm/*}
    resnet_v1_N/blockB/unit_1/<unit>/shortcut/{weights, BatchNorm/*}   (where the depth changes)

BatchNorm/* is {beta, gamma, moving_mean, moving_variance}; convolutions have no biases (batch
norm follows each). A bottleneck unit (ResNet-50/101) is conv1 1x1 (d) -> conv2 3x3 (d, the
unit's stride and rate) -> conv3 1x1 (4d, batch norm, no ReLU); a lite bottleneck (ResNet-18) is
conv1 3x3 (d, the unit's rate) -> conv2 3x3 (d, the unit's stride and rate, batch norm, no ReLU).
Either is added to the shortcut and then ReLU'd. The shortcut is a 1x1 conv + batch norm where
the depth changes (the first unit of a block, except ResNet-18's block1), else the input itself,
subsampled where the unit has stride 2.

    block   base depth d   units (18 / 50 / 101)   stride of the last unit
    block1   64            2 / 3 / 3                2
    block2  128            2 / 4 / 4                2
    block3  256            2 / 6 / 23               2
    block4  512            one per multi-grid factor: 2 (ResNet-18) or 3     1

Output stride: the root (conv1 or conv1_1, and pool1) has stride 4; once the running stride
reaches `output_stride`, later stride-2 units keep the resolution and multiply the dilation rate of
the units after them instead (atrous convolution). block4's multi-grid unit rates multiply that
rate: with (1, 2, 4), at output stride 16 its rates are 2, 4, 8; at 8 they are 4, 8, 16.
Multi-grid (1, 2, 4) is the setting of DeepLab's model-zoo ResNet checkpoints and the bottleneck
networks' default; ResNet-18 defaults to DeepLab's (1, 1). Multi-grid changes no variable, so
checkpoints trained with any of them restore.

Strided 3x3 and 7x7 convolutions pad explicitly (kernel_size - 1 split evenly, then VALID), as
tf-slim's ResNets do, so features line up with the published weights on inputs of any parity.

Inputs arrive preprocessed to [-1, 1] (model.preprocess), which the beta networks were trained on.
The others were trained on RGB minus the ImageNet mean (`MEAN_RGB`), so they map their input back
to that range first.

End points (keys relative to the network scope): `conv1` or `conv1_1`, `conv1_2`, `conv1_3`;
`pool1`; `blockB/unit_U/<unit>/{shortcut, conv1, conv2[, conv3]}` (after batch norm, before the
addition), `blockB/unit_U/<unit>` (unit output) and `blockB` (block output). The decoder reads
`DECODER_END_POINTS[variant][stride]` (stride 4 and 8).
"""
import dataclasses
import functools
from typing import Callable, Tuple

from deeplab.compat import slim, tf
from deeplab.nets import layers
from deeplab.preprocess import MEAN_PIXEL

MULTI_GRID = (1, 2, 4)
# Beta root convolutions: (scope, channels, stride).
ROOT_CONVS = (('conv1_1', 64, 2), ('conv1_2', 64, 1), ('conv1_3', 128, 1))
ROOT_STRIDE = 4  # conv1 (or conv1_1) and pool1
# ImageNet mean (RGB) the non-beta networks subtract from [0, 255] images.
MEAN_RGB = (123.15, 115.90, 103.06)
# Units in block3, the only block whose length differs between ResNet-50 and -101.
BLOCK3_UNITS = {'resnet_v1_50': 6, 'resnet_v1_101': 23}


def blocks(scope):
  """(block scope, base depth, units, stride of the last unit) of the network `scope`.

  block4 has one unit per multi-grid factor; its count here is the default multi-grid's length.
  """
  if scope == 'resnet_v1_18':
    return (('block1', 64, 2, 2), ('block2', 128, 2, 2), ('block3', 256, 2, 2),
            ('block4', 512, 2, 1))
  return (
      ('block1', 64, 3, 2),
      ('block2', 128, 4, 2),
      ('block3', 256, BLOCK3_UNITS[scope], 2),
      ('block4', 512, 3, 1),
  )


def resnet_v1_beta_arg_scope(is_training=True, weight_decay=1e-4, batch_norm_decay=0.997,
                             batch_norm_epsilon=1e-5):
  """Layer defaults: He (variance scaling) init, L2 on weights, conv -> BN (scaled) -> ReLU."""
  return layers.backbone_arg_scope(slim.variance_scaling_initializer(), tf.nn.relu, is_training,
                                   weight_decay, batch_norm_decay, batch_norm_epsilon)


def _shortcut(net, depth, stride, end_points, name):
  """The unit's input, or where the depth changes a strided 1x1 conv + batch norm (no ReLU)."""
  if net.shape[-1] == depth:
    # 1x1 max pooling with a stride is plain subsampling (no variables).
    return net if stride == 1 else slim.max_pool2d(net, 1, stride=stride, scope='shortcut')
  end_points[f'{name}/shortcut'] = slim.conv2d(net, depth, 1, stride=stride, activation_fn=None,
                                               scope='shortcut')
  return end_points[f'{name}/shortcut']


def bottleneck(net, stride, rate, end_points, name, base_depth):
  """One bottleneck_v1 unit: [N, H, W, C] -> [N, ceil(H / stride), ceil(W / stride), 4 * d]."""
  depth = 4 * base_depth
  with tf.compat.v1.variable_scope('bottleneck_v1'):
    shortcut = _shortcut(net, depth, stride, end_points, name)
    residual = slim.conv2d(net, base_depth, 1, scope='conv1')
    end_points[f'{name}/conv1'] = residual
    residual = layers.conv2d_same(residual, base_depth, 3, stride, rate=rate, scope='conv2')
    end_points[f'{name}/conv2'] = residual
    residual = slim.conv2d(residual, depth, 1, activation_fn=None, scope='conv3')
    end_points[f'{name}/conv3'] = residual
    return tf.nn.relu(shortcut + residual)


def lite_bottleneck(net, stride, rate, end_points, name, base_depth):
  """One lite_bottleneck_v1 unit: [N, H, W, C] -> [N, ceil(H / stride), ceil(W / stride), d].

  Both 3x3 convs are dilated by `rate`; the second one subsamples.
  """
  with tf.compat.v1.variable_scope('lite_bottleneck_v1'):
    shortcut = _shortcut(net, base_depth, stride, end_points, name)
    residual = layers.conv2d_same(net, base_depth, 3, 1, rate=rate, scope='conv1')
    end_points[f'{name}/conv1'] = residual
    with slim.arg_scope([slim.conv2d], activation_fn=None):
      residual = layers.conv2d_same(residual, base_depth, 3, stride, rate=rate, scope='conv2')
    end_points[f'{name}/conv2'] = residual
    return tf.nn.relu(shortcut + residual)


@dataclasses.dataclass(frozen=True)
class Variant:
  """A published ResNet: its scope, unit, root and default block4 multi-grid."""
  scope: str
  unit_fn: Callable
  unit_scope: str
  beta: bool  # three 3x3 root convs and [-1, 1] inputs, else a 7x7 conv1 and mean-subtracted RGB
  multi_grid: Tuple[int, ...] = MULTI_GRID


VARIANTS = {
    'resnet_v1_18': Variant('resnet_v1_18', lite_bottleneck, 'lite_bottleneck_v1', False, (1, 1)),
    'resnet_v1_50': Variant('resnet_v1_50', bottleneck, 'bottleneck_v1', False),
    'resnet_v1_101': Variant('resnet_v1_101', bottleneck, 'bottleneck_v1', False),
    'resnet_v1_50_beta': Variant('resnet_v1_50', bottleneck, 'bottleneck_v1', True),
    'resnet_v1_101_beta': Variant('resnet_v1_101', bottleneck, 'bottleneck_v1', True),
}
_BOTTLENECK_DECODER_END_POINTS = {4: 'block1/unit_2/bottleneck_v1/conv3',
                                  8: 'block2/unit_3/bottleneck_v1/conv3'}
_LITE_DECODER_END_POINTS = {4: 'block1/unit_1/lite_bottleneck_v1/conv2',
                            8: 'block2/unit_1/lite_bottleneck_v1/conv2'}
# variant -> {stride: end point the decoder reads at that stride}.
DECODER_END_POINTS = {
    name: _LITE_DECODER_END_POINTS if variant.unit_fn is lite_bottleneck
    else _BOTTLENECK_DECODER_END_POINTS for name, variant in VARIANTS.items()}


def _dense_blocks(variant, multi_grid):
  """`blocks(scope)` as `layers.Block`s of the variant's units; block4's take the multi-grid."""
  dense_blocks = []
  for block_scope, base_depth, units, last_stride in blocks(variant.scope):
    block_multi_grid = None
    if block_scope == 'block4':
      units, block_multi_grid = len(multi_grid), multi_grid
    strides = (1,) * (units - 1) + (last_stride,)
    dense_blocks.append(layers.Block(block_scope, variant.unit_fn, layers.numbered_units(
        block_scope, variant.unit_scope, strides, block_multi_grid, base_depth=base_depth)))
  return dense_blocks


def _root(images, beta, end_points):
  """conv1 (7x7, stride 2) or conv1_{1,2,3} (beta), then pool1: stride 4 in all."""
  if beta:
    net = layers.root_convs(images, ROOT_CONVS, end_points)
  else:
    net = end_points['conv1'] = layers.conv2d_same(images, 64, 7, 2, scope='conv1')
  net = end_points['pool1'] = slim.max_pool2d(net, 3, stride=2, scope='pool1')
  return net


def resnet(images, depth_multiplier=1.0, output_stride=16, multi_grid=None, reuse=None, *,
           variant):
  """Builds the feature extractor `variant` (a key of `VARIANTS`).

  Args:
    images: float32 [N, H, W, 3], preprocessed to [-1, 1].
    depth_multiplier: must be 1.0; the published ResNets have one width (accepted so that every
      backbone has the same signature).
    output_stride: 4, 8, 16 or 32: H / feature height (rounded up).
    multi_grid: one factor per block4 unit, multiplying the block's atrous rate (default: the
      variant's; the published block4 has 3 units, ResNet-18's 2).
  Returns:
    features: [N, ceil(H / output_stride), ceil(W / output_stride), 2048 (512 for ResNet-18)].
    end_points: dict of named activations (see the module docstring).
  Raises:
    ValueError: another depth multiplier or output stride, or another count of multi-grid factors.
  """
  spec = VARIANTS[variant]
  if depth_multiplier != 1.0:
    raise ValueError(f'{variant} has no width multiplier; got depth_multiplier={depth_multiplier}')
  multi_grid = tuple(multi_grid or spec.multi_grid)
  if len(multi_grid) != len(spec.multi_grid):
    raise ValueError(f'block4: {len(spec.multi_grid)} units but multi_grid={multi_grid}')
  dense_blocks = _dense_blocks(spec, multi_grid)
  end_points = {}
  with tf.compat.v1.variable_scope(spec.scope, values=[images], reuse=reuse):
    if not spec.beta:  # [-1, 1] back to [0, 255], minus the mean
      images = (images + 1.0) * MEAN_PIXEL - tf.constant(MEAN_RGB, tf.float32)
    net = _root(images, spec.beta, end_points)
    net = layers.stack_blocks_dense(net, dense_blocks, output_stride, ROOT_STRIDE, end_points)
  return net, end_points


resnet_v1_18 = functools.partial(resnet, variant='resnet_v1_18')
resnet_v1_50 = functools.partial(resnet, variant='resnet_v1_50')
resnet_v1_101 = functools.partial(resnet, variant='resnet_v1_101')
resnet_v1_50_beta = functools.partial(resnet, variant='resnet_v1_50_beta')
resnet_v1_101_beta = functools.partial(resnet, variant='resnet_v1_101_beta')
