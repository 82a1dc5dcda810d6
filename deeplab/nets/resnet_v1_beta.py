"""ResNet-v1 "beta" feature extractors for DeepLab: resnet_v1_50_beta and resnet_v1_101_beta.

"Beta" replaces ResNet-v1's 7x7 stride-2 root convolution by three 3x3 convolutions (He et al.,
"Bag of tricks", 2018); the rest is the bottleneck ResNet-v1 of He et al. (2015) without its
classifier. Scope and variable names are those of the published DeepLab / tf-slim checkpoints (the
scope has no "_beta"), so those checkpoints restore:

    resnet_v1_50/conv1_{1,2,3}/{weights, BatchNorm/*}                     (64, 64, 128 channels)
    resnet_v1_50/blockB/unit_U/bottleneck_v1/conv{1,2,3}/{weights, BatchNorm/*}
    resnet_v1_50/blockB/unit_U/bottleneck_v1/shortcut/{weights, BatchNorm/*}   (unit_1 only)

BatchNorm/* is {beta, gamma, moving_mean, moving_variance}; convolutions have no biases (batch
norm follows each). A bottleneck unit is conv1 1x1 (d) -> conv2 3x3 (d, the unit's stride and
rate) -> conv3 1x1 (4d, batch norm, no ReLU), added to the shortcut and then ReLU'd. The shortcut
is a 1x1 conv + batch norm where the depth changes (the first unit of each block), else the
input itself, subsampled where the unit has stride 2.

    block   bottleneck depth d   units (50 / 101)   stride of the last unit
    block1   64                  3 / 3               2
    block2  128                  4 / 4               2
    block3  256                  6 / 23              2
    block4  512                  3 / 3               1, unit rates multi_grid, by default (1, 2, 4)

Output stride: the root (conv1_1 and pool1) has stride 4; once the running stride reaches
`output_stride`, later stride-2 units keep the resolution and multiply the dilation rate of the
units after them instead (atrous convolution). block4's multi-grid unit rates multiply that rate:
at output stride 16 its conv2 rates are 2, 4, 8; at 8 they are 4, 8, 16. Multi-grid (1, 2, 4) is
the setting of DeepLab's model-zoo ResNet checkpoints and the builders' default; it changes no
variable, so ImageNet backbone checkpoints (and any other multi-grid) restore as well.

Strided 3x3 convolutions pad explicitly (kernel_size - 1 split evenly, then VALID), as tf-slim's
ResNets do, so features line up with the published weights on inputs of any parity.

Inputs are preprocessed to [-1, 1] (model.preprocess), as DeepLab does for the beta variants.

End points (keys relative to the network scope): `conv1_1`, `conv1_2`, `conv1_3`, `pool1`,
`blockB/unit_U/bottleneck_v1/{shortcut, conv1, conv2, conv3}` (after batch norm, before the
addition), `blockB/unit_U/bottleneck_v1` (unit output) and `blockB` (block output). The decoder
reads `block1/unit_2/bottleneck_v1/conv3` (stride 4, 256 channels).
"""
from deeplab.compat import slim, tf
from deeplab.nets import layers

MULTI_GRID = (1, 2, 4)
UNIT_SCOPE = 'bottleneck_v1'
DECODER_END_POINT = 'block1/unit_2/bottleneck_v1/conv3'
# Root convolutions: (scope, channels, stride).
ROOT_CONVS = (('conv1_1', 64, 2), ('conv1_2', 64, 1), ('conv1_3', 128, 1))
ROOT_STRIDE = 4  # conv1_1 and pool1
# Units in block3, the only block whose length differs between the two depths.
BLOCK3_UNITS = {'resnet_v1_50': 6, 'resnet_v1_101': 23}


def blocks(scope):
  """(block scope, bottleneck depth, units, stride of the last unit) of the network `scope`."""
  return (
      ('block1', 64, 3, 2),
      ('block2', 128, 4, 2),
      ('block3', 256, BLOCK3_UNITS[scope], 2),
      ('block4', 512, 3, 1),  # one unit per multi-grid factor
  )


def _dense_blocks(scope, multi_grid):
  """`blocks(scope)` as `layers.Block`s of bottlenecks; block4's units take the multi-grid."""
  dense_blocks = []
  for block_scope, depth_bottleneck, units, last_stride in blocks(scope):
    strides = (1,) * (units - 1) + (last_stride,)
    block_multi_grid = multi_grid if block_scope == 'block4' else None
    dense_blocks.append(layers.Block(block_scope, bottleneck, layers.numbered_units(
        block_scope, UNIT_SCOPE, strides, block_multi_grid, depth_bottleneck=depth_bottleneck)))
  return dense_blocks


def resnet_v1_beta_arg_scope(is_training=True, weight_decay=1e-4, batch_norm_decay=0.997,
                             batch_norm_epsilon=1e-5):
  """Layer defaults: He (variance scaling) init, L2 on weights, conv -> BN (scaled) -> ReLU."""
  return layers.backbone_arg_scope(slim.variance_scaling_initializer(), tf.nn.relu, is_training,
                                   weight_decay, batch_norm_decay, batch_norm_epsilon)


def bottleneck(net, stride, rate, end_points, name, depth_bottleneck):
  """One bottleneck_v1 unit: [N, H, W, C] -> [N, ceil(H / stride), ceil(W / stride), 4 * d]."""
  depth = 4 * depth_bottleneck
  with tf.compat.v1.variable_scope(UNIT_SCOPE):
    if net.shape[-1] == depth:
      # 1x1 max pooling with a stride is plain subsampling (no variables).
      shortcut = net if stride == 1 else slim.max_pool2d(net, 1, stride=stride, scope='shortcut')
    else:
      shortcut = slim.conv2d(net, depth, 1, stride=stride, activation_fn=None, scope='shortcut')
      end_points[f'{name}/shortcut'] = shortcut
    residual = slim.conv2d(net, depth_bottleneck, 1, scope='conv1')
    end_points[f'{name}/conv1'] = residual
    residual = layers.conv2d_same(residual, depth_bottleneck, 3, stride, rate=rate, scope='conv2')
    end_points[f'{name}/conv2'] = residual
    residual = slim.conv2d(residual, depth, 1, activation_fn=None, scope='conv3')
    end_points[f'{name}/conv3'] = residual
    return tf.nn.relu(shortcut + residual)


def resnet_v1_beta(images, scope, depth_multiplier=1.0, output_stride=16, multi_grid=MULTI_GRID,
                   reuse=None):
  """Builds the feature extractor `scope` ('resnet_v1_50' or 'resnet_v1_101').

  Args:
    images: float32 [N, H, W, 3], preprocessed to [-1, 1].
    depth_multiplier: must be 1.0; the published ResNets have one width (accepted so that every
      backbone has the same signature).
    output_stride: 4, 8, 16 or 32: H / feature height (rounded up).
    multi_grid: three factors, one per block4 unit, multiplying the block's atrous rate.
  Returns:
    features: [N, ceil(H / output_stride), ceil(W / output_stride), 2048].
    end_points: dict of named activations (see the module docstring).
  Raises:
    ValueError: another depth multiplier or output stride, or not three multi-grid factors.
  """
  if depth_multiplier != 1.0:
    raise ValueError(f'{scope} has no width multiplier; got depth_multiplier={depth_multiplier}')
  dense_blocks = _dense_blocks(scope, multi_grid)
  end_points = {}
  with tf.compat.v1.variable_scope(scope, values=[images], reuse=reuse):
    net = layers.root_convs(images, ROOT_CONVS, end_points)
    net = slim.max_pool2d(net, 3, stride=2, scope='pool1')
    end_points['pool1'] = net
    net = layers.stack_blocks_dense(net, dense_blocks, output_stride, ROOT_STRIDE, end_points)
  return net, end_points


def resnet_v1_50_beta(images, depth_multiplier=1.0, output_stride=16, multi_grid=MULTI_GRID,
                      reuse=None):
  """ResNet-50 beta (scope `resnet_v1_50`); see `resnet_v1_beta`."""
  return resnet_v1_beta(images, 'resnet_v1_50', depth_multiplier, output_stride, multi_grid, reuse)


def resnet_v1_101_beta(images, depth_multiplier=1.0, output_stride=16, multi_grid=MULTI_GRID,
                       reuse=None):
  """ResNet-101 beta (scope `resnet_v1_101`); see `resnet_v1_beta`."""
  return resnet_v1_beta(images, 'resnet_v1_101', depth_multiplier, output_stride, multi_grid,
                        reuse)
