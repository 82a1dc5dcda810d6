"""MobileNetV2 feature extractor for DeepLab (Sandler et al., 2018).

The network stops after the last inverted-residual block (`expanded_conv_16`, end point
`layer_18`); DeepLab puts its ASPP head there instead of the classifier's 1x1 `Conv_1`. Scope and
variable names are those of the published MobileNetV2 / DeepLab checkpoints:

    MobilenetV2/Conv/{weights, BatchNorm/*}
    MobilenetV2/expanded_conv[_N]/expand/{weights, BatchNorm/*}          (absent in block 0)
    MobilenetV2/expanded_conv[_N]/depthwise/{depthwise_weights, BatchNorm/*}
    MobilenetV2/expanded_conv[_N]/project/{weights, BatchNorm/*}

Output stride: once the running stride reaches `output_stride`, later strided blocks keep the
resolution and dilate their depthwise convolutions instead (atrous convolution).

End points: `layer_1` (Conv) ... `layer_18` (expanded_conv_16), and for each block
`layer_N/expansion_output`, `layer_N/depthwise_output`, `layer_N/output`. The decoder reads
`layer_4/depthwise_output` at stride 4 and `layer_7/depthwise_output` at stride 8.
"""
from deeplab.compat import slim, tf
from deeplab.nets import layers

SCOPE = 'MobilenetV2'
# Inverted residual blocks: (expansion factor t, output channels c, repeats n, first stride s).
BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
FIRST_CONV_CHANNELS = 32
ROOT_STRIDE = 2  # Conv
# variant -> {stride: end point the decoder reads at that stride}.
DECODER_END_POINTS = {'mobilenet_v2': {4: 'layer_4/depthwise_output', 8: 'layer_7/depthwise_output'}}


def make_divisible(value, divisor, min_value):
  """Rounds `value` to the nearest multiple of `divisor` (>= min_value), never more than 10% down."""
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


def channels(base, depth_multiplier):
  """Channels of a layer of `base` channels at `depth_multiplier`.

  At the full width channels stay multiples of 8; thinner published models (e.g. 0.5) round to 1,
  which is how DeepLab's MobileNetV2 checkpoints were trained.
  """
  if depth_multiplier == 1.0:
    return make_divisible(base, 8, 8)
  return make_divisible(base * depth_multiplier, 1, 1)


def mobilenet_v2_arg_scope(is_training=True, weight_decay=4e-5, batch_norm_decay=0.9997,
                           batch_norm_epsilon=1e-3, stddev=0.09):
  """Layer defaults: truncated-normal init, L2 on regular convs (not depthwise), BN + ReLU6."""
  return layers.backbone_arg_scope(tf.compat.v1.truncated_normal_initializer(stddev=stddev),
                                   tf.nn.relu6, is_training, weight_decay, batch_norm_decay,
                                   batch_norm_epsilon)


def inverted_residual(net, stride, rate, end_points, name, expansion, out_channels, kernel_size=3,
                      activation_fn=None, squeeze_excite=None):
  """One block: 1x1 expand (if it adds channels) -> depthwise -> 1x1 linear project (+ residual).

  [N, H, W, C] -> [N, ceil(H / stride), ceil(W / stride), out_channels]. The expansion has
  C * `expansion` channels (rounded to a multiple of 8); the depthwise conv is
  `kernel_size` x `kernel_size`. `activation_fn` follows the expansion and the depthwise conv
  (None: the arg scope's); `squeeze_excite` (MobileNetV3), if given, gates the depthwise output.
  The residual is added where the block keeps the size and the channels.
  """
  in_channels = net.shape[-1]
  block_input = net
  expanded = make_divisible(in_channels * expansion, 8, 8)
  activation = {} if activation_fn is None else {'activation_fn': activation_fn}
  with slim.arg_scope([slim.conv2d, slim.separable_conv2d], **activation):
    if expanded > in_channels:
      net = slim.conv2d(net, expanded, 1, scope='expand')
    end_points[f'{name}/expansion_output'] = net
    net = slim.separable_conv2d(net, None, kernel_size, depth_multiplier=1, stride=stride,
                                rate=rate, scope='depthwise')
  end_points[f'{name}/depthwise_output'] = net
  if squeeze_excite:
    net = squeeze_excite(net)
  net = slim.conv2d(net, out_channels, 1, activation_fn=None, scope='project')
  if stride == 1 and in_channels == out_channels:
    net += block_input
  end_points[f'{name}/output'] = net
  return net


def inverted_residual_unit(index, stride, **args):
  """The `index`-th (from 0) inverted residual of a MobileNet: scope `expanded_conv[_<index>]`,
  end point `layer_<index + 2>` (layer_1 is the first convolution)."""
  return layers.Unit(scope='expanded_conv' + (f'_{index}' if index else ''),
                     end_point=f'layer_{index + 2}', stride=stride, args=args)


def _inverted_residuals(depth_multiplier):
  """The 17 blocks as units: scopes expanded_conv, expanded_conv_1, ...; end points layer_2, ...

  MobileNetV2's blocks sit directly in the network scope, so they form one `layers.Block` without
  a scope of its own.
  """
  units = []
  for expansion, base_channels, repeats, first_stride in BLOCKS:
    for repeat in range(repeats):
      units.append(inverted_residual_unit(
          len(units), first_stride if repeat == 0 else 1, expansion=expansion,
          out_channels=channels(base_channels, depth_multiplier)))
  return layers.Block(None, inverted_residual, units)


def mobilenet_v2(images, depth_multiplier=1.0, output_stride=16, scope=SCOPE, reuse=None):
  """Builds the feature extractor.

  Args:
    images: float32 [N, H, W, 3], preprocessed to [-1, 1].
    depth_multiplier: width multiplier of every layer.
    output_stride: 8, 16 or 32: H / feature height (rounded up with SAME padding).
  Returns:
    features: [N, ceil(H / output_stride), ceil(W / output_stride), channels(320)].
    end_points: dict of named activations (see the module docstring).
  Raises:
    ValueError: `output_stride` is not 2, 4, 8, 16 or 32.
  """
  end_points = {}
  with tf.compat.v1.variable_scope(scope, SCOPE, [images], reuse=reuse):
    net = slim.conv2d(images, channels(FIRST_CONV_CHANNELS, depth_multiplier), 3,
                      stride=ROOT_STRIDE, scope='Conv')
    end_points['layer_1'] = net
    net = layers.stack_blocks_dense(net, [_inverted_residuals(depth_multiplier)], output_stride,
                                    ROOT_STRIDE, end_points)
  return net, end_points
