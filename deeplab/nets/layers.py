"""Layer defaults shared by the backbones built from depthwise-separable convolutions."""
from deeplab.compat import slim, tf
from deeplab.nets.batch_norm import batch_norm


def separable_net_arg_scope(activation_fn, is_training=True, weight_decay=4e-5,
                            batch_norm_decay=0.9997, batch_norm_epsilon=1e-3, stddev=0.09):
  """Truncated-normal init, BN + `activation_fn`, L2 on regular convs only (not on depthwise
  filters, as the published MobileNetV2 and Xception were trained)."""
  with slim.arg_scope([slim.conv2d, slim.separable_conv2d],
                      weights_initializer=tf.compat.v1.truncated_normal_initializer(stddev=stddev),
                      normalizer_fn=batch_norm, activation_fn=activation_fn, padding='SAME'):
    with slim.arg_scope([batch_norm], is_training=is_training, decay=batch_norm_decay,
                        epsilon=batch_norm_epsilon, center=True, scale=True):
      with slim.arg_scope([slim.conv2d], weights_regularizer=slim.l2_regularizer(weight_decay)):
        with slim.arg_scope([slim.separable_conv2d], weights_regularizer=None) as scope:
          return scope
