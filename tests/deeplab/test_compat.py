"""Guard for the TF 2.21 + tf-slim combination: conv + batch norm trains, freezes and reloads."""
import numpy as np

from deeplab.compat import slim, tf
from deeplab.nets.batch_norm import batch_norm


def test_conv_batch_norm_trains_one_step_freezes_and_reloads():
  rng = np.random.RandomState(0)
  images = rng.rand(2, 9, 9, 3).astype(np.float32)
  with tf.Graph().as_default() as graph:
    inputs = tf.compat.v1.placeholder(tf.float32, [None, 9, 9, 3], name='inputs')
    with slim.arg_scope([slim.conv2d, slim.separable_conv2d], normalizer_fn=batch_norm,
                        normalizer_params={'scale': True}):
      net = slim.conv2d(inputs, 4, 3, scope='conv')
      net = slim.separable_conv2d(net, None, 3, depth_multiplier=1, scope='depthwise')
    loss = tf.reduce_mean(tf.square(net))
    with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
      train_op = tf.compat.v1.train.MomentumOptimizer(0.1, 0.9).minimize(loss)
    names = sorted(v.op.name for v in tf.compat.v1.global_variables() if 'Momentum' not in v.op.name)
    assert names == sorted([
        'conv/weights', 'conv/BatchNorm/beta', 'conv/BatchNorm/gamma', 'conv/BatchNorm/moving_mean',
        'conv/BatchNorm/moving_variance', 'depthwise/depthwise_weights', 'depthwise/BatchNorm/beta',
        'depthwise/BatchNorm/gamma', 'depthwise/BatchNorm/moving_mean',
        'depthwise/BatchNorm/moving_variance'])
    moving_mean, = [v for v in tf.compat.v1.global_variables()
                    if v.op.name == 'conv/BatchNorm/moving_mean']
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      before = session.run(loss, {inputs: images})
      session.run(train_op, {inputs: images})
      assert session.run(loss, {inputs: images}) != before
      assert np.any(session.run(moving_mean) != 0)  # the UPDATE_OPS ran
      output = tf.identity(net, name='output')
      expected = session.run(output, {inputs: images})
      frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
          session, graph.as_graph_def(), ['output'])
  with tf.Graph().as_default():
    tf.compat.v1.import_graph_def(frozen, name='')
    with tf.compat.v1.Session() as session:
      reloaded = session.run('output:0', {'inputs:0': images})
  np.testing.assert_array_equal(reloaded, expected)
