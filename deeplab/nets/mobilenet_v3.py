"""MobileNetV3 large and small feature extractors for DeepLab, as its segmentation models build them.

MobileNetV3 (Howard et al., 2019) is MobileNetV2's inverted-residual network with 5x5 depthwise
convolutions in places, hard-swish activations in the later blocks and squeeze-and-excitation
gates on some depthwise outputs. DeepLab's `mobilenet_v3_large_seg` / `mobilenet_v3_small_seg`
stop after the 1x1 convolution that follows the last block (`Conv_1`, end point `layer_17` /
`layer_13`) and halve the channels of the last four layers. Scope and variable names are those of
the published Cityscapes checkpoints (mobilenetv3_{large,small}_cityscapes_trainfine):

    MobilenetV3/Conv/{weights, BatchNorm/*}                          3x3 stride 2, 16 channels
    MobilenetV3/expanded_conv[_N]/expand/{weights, BatchNorm/*}      (absent where no expansion)
    MobilenetV3/expanded_conv[_N]/depthwise/{depthwise_weights, BatchNorm/*}
    MobilenetV3/expanded_conv[_N]/squeeze_excite/Conv{,_1}/{weights, biases}  (gated blocks)
    MobilenetV3/expanded_conv[_N]/project/{weights, BatchNorm/*}
    MobilenetV3/Conv_1/{weights, BatchNorm/*}                        1x1, 480 (large) / 288 (small)

Blocks (`NETWORKS`): expansion factor, output channels, depthwise kernel, stride, activation of
the expansion and depthwise conv (ReLU or hard-swish), squeeze-and-excitation. Conv and Conv_1
use hard-swish; projections are linear; batch norm follows every conv except the gate's two, which
have biases instead. A gate averages the depthwise output over the image, reduces it to a quarter
of its channels (rounded to a multiple of 8) with a 1x1 conv + ReLU, restores the channels with a
1x1 conv + hard sigmoid (relu6(x + 3) * 0.16667) and multiplies the depthwise output by the result.

Output stride: Conv and four blocks subsample (32 in all); once the running stride reaches
`output_stride`, later strided blocks keep the resolution and dilate their depthwise convolutions
instead. DeepLab's published models run at output stride 32.

Inputs are preprocessed to [-1, 1] (model.preprocess), as DeepLab does for MobileNetV3.

End points: `layer_1` (Conv), `layer_2` ... (blocks), the last one Conv_1, and for each block
`layer_N/{expansion_output, depthwise_output, output}`. The decoder reads `DECODER_END_POINTS`.
"""
import functools

import numpy as np

from deeplab.compat import slim, tf
from deeplab.nets import layers
from deeplab.nets.mobilenet_v2 import inverted_residual, inverted_residual_unit, make_divisible

SCOPE = 'MobilenetV3'
FIRST_CONV_CHANNELS = 16
ROOT_STRIDE = 2  # Conv
SQUEEZE_FACTOR = 4


def hard_swish(x):
  """x * relu6(x + 3) / 6: swish with a piecewise-linear gate."""
  with tf.compat.v1.name_scope('hard_swish'):
    return x * tf.nn.relu6(x + np.float32(3)) * np.float32(1. / 6.)


def hard_sigmoid(x):
  """relu6(x + 3) * 0.16667, the gate of squeeze-and-excitation (the published models' constant)."""
  return tf.nn.relu6(x + 3) * 0.16667


# The blocks, expanded_conv, expanded_conv_1, ...: each column holds one property of every block.
# Blocks from `hard_swish_from` on use hard-swish, the earlier ones ReLU; `gated` blocks have
# squeeze-and-excitation. The segmentation models halve the channels of the last blocks and of
# Conv_1 (large: 80 instead of 160, expanded 336 = 3 * 112 and 480 = 6 * 80; small: 48 instead of
# 96, expanded 144 = 3 * 48 and 288 = 6 * 48).
NETWORKS = {
    'mobilenet_v3_large_seg': dict(
        expansion=(1, 4, 3, 3, 3, 3, 6, 2.5, 184 / 80, 184 / 80, 6, 6, 3, 6, 6),
        channels=(16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 80, 80, 80),
        kernel_size=(3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5),
        strides=(1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1),
        hard_swish_from=6, gated=(3, 4, 5, 10, 11, 12, 13, 14), conv_1_channels=480),
    'mobilenet_v3_small_seg': dict(
        expansion=(1, 72 / 16, 88 / 24, 4, 6, 6, 3, 3, 3, 6, 6),
        channels=(16, 24, 24, 40, 40, 40, 48, 48, 48, 48, 48),
        kernel_size=(3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5),
        strides=(2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1),
        hard_swish_from=3, gated=(0, 3, 4, 5, 6, 7, 8, 9, 10), conv_1_channels=288),
}
# variant -> {stride: end point the decoder reads at that stride}.
DECODER_END_POINTS = {
    'mobilenet_v3_large_seg': {4: 'layer_4/depthwise_output', 8: 'layer_7/depthwise_output'},
    'mobilenet_v3_small_seg': {4: 'layer_2/depthwise_output', 8: 'layer_4/depthwise_output'},
}


def channels(base, depth_multiplier):
  """Channels of a layer of `base` channels at `depth_multiplier`, a multiple of 8."""
  return make_divisible(base * depth_multiplier, 8, 8)


def squeeze_excite(net):
  """Gates [N, H, W, C] by a per-channel weight in [0, 1] computed from its average over H, W."""
  depth = net.shape[-1]
  with tf.compat.v1.variable_scope('squeeze_excite'):
    pooled = tf.reduce_mean(net, axis=[1, 2], keepdims=True)
    squeezed = slim.conv2d(pooled, make_divisible(depth / SQUEEZE_FACTOR, 8, 8), 1,
                           normalizer_fn=None, activation_fn=tf.nn.relu, scope='Conv')
    gate = slim.conv2d(squeezed, depth, 1, normalizer_fn=None, activation_fn=hard_sigmoid,
                       scope='Conv_1')
  return net * gate


def _inverted_residuals(network, depth_multiplier):
  """The blocks of `network` (a value of `NETWORKS`) as one unscoped `layers.Block`:
  expanded_conv, expanded_conv_1, ... (end points layer_2, ...)."""
  columns = zip(network['expansion'], network['channels'], network['kernel_size'],
                network['strides'])
  return layers.Block(None, inverted_residual, [
      inverted_residual_unit(
          index, stride, expansion=expansion, out_channels=channels(base, depth_multiplier),
          kernel_size=kernel_size,
          activation_fn=hard_swish if index >= network['hard_swish_from'] else tf.nn.relu,
          squeeze_excite=squeeze_excite if index in network['gated'] else None)
      for index, (expansion, base, kernel_size, stride) in enumerate(columns)])


def mobilenet_v3(images, depth_multiplier=1.0, output_stride=16, reuse=None, *, variant):
  """Builds the feature extractor `variant` ('mobilenet_v3_large_seg' or 'mobilenet_v3_small_seg').

  Args:
    images: float32 [N, H, W, 3], preprocessed to [-1, 1].
    depth_multiplier: width multiplier of every layer (the published models use 1).
    output_stride: 2, 4, 8, 16 or 32: H / feature height (rounded up with SAME padding).
  Returns:
    features: [N, ceil(H / output_stride), ceil(W / output_stride), channels(480 or 288)].
    end_points: dict of named activations (see the module docstring).
  Raises:
    ValueError: `output_stride` cannot be reached.
  """
  network = NETWORKS[variant]
  dense_block = _inverted_residuals(network, depth_multiplier)
  end_points = {}
  with tf.compat.v1.variable_scope(SCOPE, values=[images], reuse=reuse):
    net = slim.conv2d(images, channels(FIRST_CONV_CHANNELS, depth_multiplier), 3,
                      stride=ROOT_STRIDE, activation_fn=hard_swish, scope='Conv')
    end_points['layer_1'] = net
    net = layers.stack_blocks_dense(net, [dense_block], output_stride, ROOT_STRIDE, end_points)
    net = slim.conv2d(net, channels(network['conv_1_channels'], depth_multiplier), 1,
                      activation_fn=hard_swish, scope='Conv_1')
    end_points[f'layer_{len(network["strides"]) + 2}'] = net
  return net, end_points


mobilenet_v3_large_seg = functools.partial(mobilenet_v3, variant='mobilenet_v3_large_seg')
mobilenet_v3_small_seg = functools.partial(mobilenet_v3, variant='mobilenet_v3_small_seg')
