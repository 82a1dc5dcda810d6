"""Layers shared by the backbones: fixed-padding convolutions and layer defaults."""
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
