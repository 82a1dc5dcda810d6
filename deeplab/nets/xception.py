"""Xception-41, -65 and -71 feature extractors for DeepLab: the modified, aligned Xception.

Chollet's Xception (2017), made deeper and fully convolutional by Dai et al. (MSRA, COCO 2017) and
DeepLab (Chen et al., 2018): every max pooling is a stride-2 separable convolution, so the output
stride can be set by atrous convolution, and each separable convolution is split into a depthwise
and a pointwise conv, each with batch norm. Scope and variable names are those of the published
DeepLab checkpoints (ImageNet ones for all three depths, model-zoo ones for xception_65/71), so
they restore; `<net>` is xception_41, xception_65 or xception_71:

    <net>/entry_flow/conv1_{1,2}/{weights, BatchNorm/*}                          (32, 64 channels)
    <net>/<flow>/blockB/unit_U/xception_module/separable_conv{1,2,3}_depthwise/
        {depthwise_weights, BatchNorm/*}
    <net>/<flow>/blockB/unit_U/xception_module/separable_conv{1,2,3}_pointwise/
        {weights, BatchNorm/*}
    <net>/<flow>/blockB/unit_1/xception_module/shortcut/{weights, BatchNorm/*}      ("conv" skips)

BatchNorm/* is {beta, gamma, moving_mean, moving_variance}; convolutions have no biases.

The networks differ in the entry flow and in the length of the middle flow:

    entry flow (depth of its three separable convs, stride)       middle flow units
    xception_41, xception_65: block1 128 s2, block2 256 s2, block3 728 s2          8 / 16
    xception_71: block1 128 s2, block2 256 s1, block3 256 s2, block4 728 s1,
                 block5 728 s2                                                      16

Every entry-flow module has a "conv" skip and ReLU before each separable conv. The rest is common:

    block                 separable conv depths   units   skip    stride   ReLU
    middle_flow/block1    728, 728, 728           8/16    sum     1        before each sep. conv
    exit_flow/block1      728, 1024, 1024          1      conv    2        before each sep. conv
    exit_flow/block2      1536, 1536, 2048         1      none    1        after each BN

A module's stride is on its third separable conv; a "conv" skip is a strided 1x1 conv + batch norm
of the module's input (no ReLU), a "sum" skip the input itself. Where the ReLU comes before each
separable conv (on its input), the depthwise and pointwise convs are linear (batch norm only); in
exit_flow/block2 each is followed by batch norm and ReLU. Only the pointwise and the other regular
convs have L2 weight decay (not the depthwise weights), as DeepLab trains them.

Output stride: the root (conv1_1) has stride 2; once the running stride reaches `output_stride`,
later stride-2 modules keep the resolution and dilate the modules after them instead (atrous
convolution): at output stride 16 exit_flow/block2 has rate 2; at 8 the middle flow and
exit_flow/block1 have rate 2 and exit_flow/block2 rate 4. DeepLab's published Xception models use
no multi-grid (unit rates 1, 1, 1), and neither does this network. Strided convolutions pad
explicitly, as the published models were trained (`layers.pad_for_kernel`).

Inputs are preprocessed to [-1, 1] (model.preprocess), as DeepLab does for Xception.

End points (keys relative to the network scope): `entry_flow/conv1_{1,2}`, for each module
`<flow>/blockB/unit_U/xception_module/separable_conv{1,2,3}_{depthwise,pointwise}` and `shortcut`,
`<flow>/blockB/unit_U/xception_module` (module output) and `<flow>/blockB` (block output). The
decoder reads, at stride 4 and 8, the second separable conv of the entry-flow module that
subsamples from that stride (`DECODER_END_POINTS`).
"""
import functools

from deeplab.compat import slim, tf
from deeplab.nets import layers

UNIT_SCOPE = 'xception_module'
# Root convolutions: (scope, channels, stride).
ROOT_CONVS = (('entry_flow/conv1_1', 32, 2), ('entry_flow/conv1_2', 64, 1))
ROOT_STRIDE = 2  # entry_flow/conv1_1
# Entry flows: (block scope, depths of the three separable convs, stride); one unit each, "conv"
# skips, ReLU before each separable conv.
_ENTRY_FLOW_3_BLOCKS = (
    ('entry_flow/block1', (128, 128, 128), 2),
    ('entry_flow/block2', (256, 256, 256), 2),
    ('entry_flow/block3', (728, 728, 728), 2),
)
_ENTRY_FLOW_5_BLOCKS = (
    ('entry_flow/block1', (128, 128, 128), 2),
    ('entry_flow/block2', (256, 256, 256), 1),
    ('entry_flow/block3', (256, 256, 256), 2),
    ('entry_flow/block4', (728, 728, 728), 1),
    ('entry_flow/block5', (728, 728, 728), 2),
)
# network scope -> (entry flow, units of the middle flow).
NETWORKS = {
    'xception_41': (_ENTRY_FLOW_3_BLOCKS, 8),
    'xception_65': (_ENTRY_FLOW_3_BLOCKS, 16),
    'xception_71': (_ENTRY_FLOW_5_BLOCKS, 16),
}
_DECODER_SOURCE = '{}/unit_1/xception_module/separable_conv2_pointwise'
# network scope -> {stride: end point the decoder reads at that stride}.
DECODER_END_POINTS = {
    'xception_41': {4: _DECODER_SOURCE.format('entry_flow/block2'),
                    8: _DECODER_SOURCE.format('entry_flow/block3')},
    'xception_65': {4: _DECODER_SOURCE.format('entry_flow/block2'),
                    8: _DECODER_SOURCE.format('entry_flow/block3')},
    'xception_71': {4: _DECODER_SOURCE.format('entry_flow/block3'),
                    8: _DECODER_SOURCE.format('entry_flow/block5')},
}


def blocks(scope):
  """(block scope, depths of the three separable convs, units, skip connection, stride,
  whether ReLU follows each batch norm rather than preceding each separable conv) of `scope`."""
  entry_flow, middle_flow_units = NETWORKS[scope]
  return tuple((block_scope, depths, 1, 'conv', stride, False)
               for block_scope, depths, stride in entry_flow) + (
      ('middle_flow/block1', (728, 728, 728), middle_flow_units, 'sum', 1, False),
      ('exit_flow/block1', (728, 1024, 1024), 1, 'conv', 2, False),
      ('exit_flow/block2', (1536, 1536, 2048), 1, 'none', 1, True),
  )


def xception_arg_scope(is_training=True, weight_decay=4e-5, batch_norm_decay=0.9997,
                       batch_norm_epsilon=1e-3, stddev=0.09):
  """Layer defaults: truncated-normal init, L2 on regular convs (not depthwise), BN + ReLU."""
  return layers.backbone_arg_scope(tf.compat.v1.truncated_normal_initializer(stddev=stddev),
                                   tf.nn.relu, is_training, weight_decay, batch_norm_decay,
                                   batch_norm_epsilon)


def separable_conv(net, depth, stride, rate, activation_fn, end_points, name, scope):
  """3x3 depthwise (`<scope>_depthwise`) + 1x1 pointwise (`<scope>_pointwise`), each with BN.

  [N, H, W, C] -> [N, ceil(H / stride), ceil(W / stride), depth]; `activation_fn` (or None)
  follows each batch norm.
  """
  padding = 'SAME'
  if stride > 1:
    net, padding = layers.pad_for_kernel(net, 3, rate), 'VALID'
  net = slim.separable_conv2d(net, None, 3, depth_multiplier=1, stride=stride, rate=rate,
                              padding=padding, activation_fn=activation_fn,
                              scope=scope + '_depthwise')
  end_points[f'{name}/{scope}_depthwise'] = net
  net = slim.conv2d(net, depth, 1, activation_fn=activation_fn, scope=scope + '_pointwise')
  end_points[f'{name}/{scope}_pointwise'] = net
  return net


def xception_module(net, stride, rate, end_points, name, depths, skip, relu_after_batch_norm):
  """Three separable convs (the last one strided) plus the skip connection.

  [N, H, W, C] -> [N, ceil(H / stride), ceil(W / stride), depths[-1]].
  """
  module_input = net
  with tf.compat.v1.variable_scope(UNIT_SCOPE):
    for index, depth in enumerate(depths, start=1):
      if not relu_after_batch_norm:
        net = tf.nn.relu(net)
      net = separable_conv(net, depth, stride if index == len(depths) else 1, rate,
                           tf.nn.relu if relu_after_batch_norm else None, end_points, name,
                           f'separable_conv{index}')
    if skip == 'conv':
      shortcut = slim.conv2d(module_input, depths[-1], 1, stride=stride, activation_fn=None,
                             scope='shortcut')
      end_points[f'{name}/shortcut'] = shortcut
      net += shortcut
    elif skip == 'sum':
      net += module_input
  return net


def _dense_blocks(scope):
  """`blocks(scope)` as `layers.Block`s of Xception modules; every module of a block has its
  stride."""
  return [layers.Block(block_scope, xception_module,
                       layers.numbered_units(block_scope, UNIT_SCOPE, (stride,) * units,
                                             depths=depths, skip=skip,
                                             relu_after_batch_norm=relu_after_batch_norm))
          for block_scope, depths, units, skip, stride, relu_after_batch_norm
          in blocks(scope)]


def xception(images, depth_multiplier=1.0, output_stride=16, reuse=None, *, scope):
  """Builds the feature extractor `scope` ('xception_41', 'xception_65' or 'xception_71').

  Args:
    images: float32 [N, H, W, 3], preprocessed to [-1, 1].
    depth_multiplier: must be 1.0; the published Xceptions have one width (accepted so that every
      backbone has the same signature).
    output_stride: 2, 4, 8, 16 or 32: H / feature height (rounded up).
  Returns:
    features: [N, ceil(H / output_stride), ceil(W / output_stride), 2048].
    end_points: dict of named activations (see the module docstring).
  Raises:
    ValueError: another depth multiplier or output stride.
  """
  if depth_multiplier != 1.0:
    raise ValueError(f'{scope} has no width multiplier; got depth_multiplier={depth_multiplier}')
  dense_blocks = _dense_blocks(scope)
  end_points = {}
  with tf.compat.v1.variable_scope(scope, values=[images], reuse=reuse):
    net = layers.root_convs(images, ROOT_CONVS, end_points)
    net = layers.stack_blocks_dense(net, dense_blocks, output_stride, ROOT_STRIDE, end_points)
  return net, end_points


xception_41 = functools.partial(xception, scope='xception_41')
xception_65 = functools.partial(xception, scope='xception_65')
xception_71 = functools.partial(xception, scope='xception_71')
