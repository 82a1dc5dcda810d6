"""Batch normalization with tf-slim's variable names, without tf-slim's Keras dependency.

Variables: `<scope>/BatchNorm/{beta,gamma,moving_mean,moving_variance}` (gamma only with
scale=True), exactly as `slim.batch_norm` names them, so published DeepLab checkpoints restore.
In training mode the batch statistics normalise and the moving averages are updated by ops added to
`tf.compat.v1.GraphKeys.UPDATE_OPS` (run them with the train op); in inference mode the moving
averages normalise. Built on `fused_batch_norm`, as slim's fused path is.

Replicated training (tf.distribute): the moving averages are MEAN-aggregated over replicas, and
inside `synchronized_across_replicas()` a replica normalises with the mean and variance of the
whole global batch (all-reduced), so N replicas of batch b train batch norm like one batch of N*b.
In float16/bfloat16 graphs the variables stay float32.
"""
import contextlib

from deeplab import distribute
from deeplab.compat import slim, tf

# Set by `synchronized_across_replicas`; a module value, not a thread-local, because
# MirroredStrategy builds each replica's graph in a thread of its own.
_synchronized = False


@contextlib.contextmanager
def synchronized_across_replicas(enabled: bool = True):
  """Batch norm layers built within (in training mode) use statistics all-reduced over replicas."""
  global _synchronized
  previous, _synchronized = _synchronized, enabled
  try:
    yield
  finally:
    _synchronized = previous


def _replica_mean(value):
  """The mean of `value` over all replicas, on each; its gradient is the replicas' mean gradient."""
  reduced = distribute.all_reduce(tf.distribute.ReduceOp.MEAN, value)
  with tf.compat.v1.get_default_graph().gradient_override_map({'Identity': _REPLICA_MEAN_GRADIENT}):
    routed = tf.identity(value)
  return routed + tf.stop_gradient(reduced - value)  # the forward value of `reduced`


_REPLICA_MEAN_GRADIENT = 'DeepLabReplicaMeanGradient'


@tf.RegisterGradient(_REPLICA_MEAN_GRADIENT)
def _replica_mean_gradient(unused_op, gradient):
  # Every replica's loss depends on every replica's input through the mean.
  return _replica_mean(gradient)


def _global_moments(inputs, replica_context):
  """Mean and variance [C] over the batch of every replica (each replica's batch is equally large).

  Returns (mean, biased variance, unbiased variance) in float32, from one all-reduce of each
  replica's mean and second moment. That all-reduce and the subtraction after it are in float64:
  in float32, E[x^2] - mean^2 loses the variance's digits when the mean is large against the
  spread, and the gradients of batch norm magnify the loss.
  """
  local_mean, local_variance = tf.nn.moments(tf.cast(inputs, tf.float32), [0, 1, 2])
  moments = _replica_mean(tf.cast(tf.stack([local_mean, local_variance + tf.square(local_mean)]),
                                  tf.float64))
  variance = tf.cast(tf.nn.relu(moments[1] - tf.square(moments[0])), tf.float32)
  count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]) * replica_context.num_replicas_in_sync,
                  tf.float32)
  return tf.cast(moments[0], tf.float32), variance, variance * count / tf.maximum(count - 1, 1)


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
    # fused_batch_norm takes float32 parameters for float16/bfloat16 inputs.
    dtype = tf.float32 if inputs.dtype.base_dtype in (tf.float16, tf.bfloat16) else inputs.dtype
    beta = (v1.get_variable('beta', [channels], dtype, v1.zeros_initializer(), trainable=trainable)
            if center else tf.zeros([channels], dtype))
    gamma = (v1.get_variable('gamma', [channels], dtype, v1.ones_initializer(), trainable=trainable)
             if scale else tf.ones([channels], dtype))
    moving_collections = [v1.GraphKeys.GLOBAL_VARIABLES, v1.GraphKeys.MOVING_AVERAGE_VARIABLES]
    # MEAN: every replica updates the averages with its statistics (equal ones when synchronised).
    moving_mean = v1.get_variable('moving_mean', [channels], dtype, v1.zeros_initializer(),
                                  trainable=False, collections=moving_collections,
                                  aggregation=tf.VariableAggregation.MEAN)
    moving_variance = v1.get_variable('moving_variance', [channels], dtype, v1.ones_initializer(),
                                      trainable=False, collections=moving_collections,
                                      aggregation=tf.VariableAggregation.MEAN)

    replica_context = tf.distribute.get_replica_context()
    if is_training and _synchronized and replica_context and replica_context.num_replicas_in_sync > 1:
      mean, batch_variance, variance = _global_moments(inputs, replica_context)
      outputs = tf.cast(tf.nn.batch_normalization(tf.cast(inputs, tf.float32), mean,
                                                  batch_variance, beta, gamma, epsilon),
                        inputs.dtype)
    elif is_training:
      # `variance` is the unbiased one (as the moving average takes it); fused normalises with
      # the biased one.
      outputs, mean, variance = v1.nn.fused_batch_norm(inputs, gamma, beta, epsilon=epsilon,
                                                       is_training=True)
    if is_training:
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
