"""Batch normalization with tf-slim's variable names, without tf-slim's Keras dependency.

Variables: `<scope>/BatchNorm/{beta,gamma,moving_mean,moving_variance}` (gamma only with
scale=True), exactly as `slim.batch_norm` names them, so published DeepLab checkpoints restore.
In training mode the batch statistics normalise and the moving averages are updated by ops added to
`tf.compat.v1.GraphKeys.UPDATE_OPS` (run them with the train op); in inference mode the moving
averages normalise. Built on `fused_batch_norm`, as slim's fused path is.
"""
from deeplab.compat import slim, tf


@slim.add_arg_scope
def batch_norm(inputs, decay=0.999, epsilon=0.001, center=True, scale=False, is_training=True,
               scope=None, reuse=None, outputs_collections=None, trainable=True):
  """Normalises an NHWC tensor [N, H, W, C]; returns the same shape.

  `is_training` is a Python bool: batch statistics + moving-average updates, or moving averages.
  With `trainable=False` (frozen batch norm while fine-tuning) beta and gamma are not trained.
  """
  v1 = tf.compat.v1
  with v1.variable_scope(scope, 'BatchNorm', [inputs], reuse=reuse) as sc:
    channels = inputs.shape[-1]
    dtype = inputs.dtype.base_dtype
    beta = (v1.get_variable('beta', [channels], dtype, v1.zeros_initializer(), trainable=trainable)
            if center else tf.zeros([channels], dtype))
    gamma = (v1.get_variable('gamma', [channels], dtype, v1.ones_initializer(), trainable=trainable)
             if scale else tf.ones([channels], dtype))
    moving_collections = [v1.GraphKeys.GLOBAL_VARIABLES, v1.GraphKeys.MOVING_AVERAGE_VARIABLES]
    moving_mean = v1.get_variable('moving_mean', [channels], dtype, v1.zeros_initializer(),
                                  trainable=False, collections=moving_collections)
    moving_variance = v1.get_variable('moving_variance', [channels], dtype, v1.ones_initializer(),
                                      trainable=False, collections=moving_collections)

    if is_training:
      outputs, mean, variance = v1.nn.fused_batch_norm(inputs, gamma, beta, epsilon=epsilon,
                                                       is_training=True)
      v1.add_to_collection(v1.GraphKeys.UPDATE_OPS,
                           v1.assign_sub(moving_mean, (moving_mean - mean) * (1.0 - decay)))
      v1.add_to_collection(v1.GraphKeys.UPDATE_OPS,
                           v1.assign_sub(moving_variance, (moving_variance - variance) * (1.0 - decay)))
    else:
      outputs, _, _ = v1.nn.fused_batch_norm(inputs, gamma, beta, mean=moving_mean,
                                             variance=moving_variance, epsilon=epsilon,
                                             is_training=False)
    outputs.set_shape(inputs.shape)
    return slim.utils.collect_named_outputs(outputs_collections, sc.name, outputs)
