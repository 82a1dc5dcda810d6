"""Backbones other than MobileNetV2: published variable names and shapes, strides, the whole model.

Sizes are tiny (33x50 inputs) so that the ResNets and Xception build and run in seconds on 2 cores.
"""
import math
import re

import numpy as np
import pytest

from deeplab import model, training
from deeplab.compat import slim, tf
from deeplab.config import ModelConfig
from deeplab.errors import UserError
from deeplab.nets.registry import BACKBONES
from deeplab.nets import resnet_v1_beta, xception
from tf_slim.nets import resnet_utils, resnet_v1  # after deeplab.compat, which patches tf-slim

HEIGHT, WIDTH = 33, 50
# variant -> (scope, units in block1..block4)
RESNETS = {
    'resnet_v1_50_beta': ('resnet_v1_50', (3, 4, 6, 3)),
    'resnet_v1_101_beta': ('resnet_v1_101', (3, 4, 23, 3)),
}
BATCH_NORM_VARIABLES = ('beta', 'gamma', 'moving_mean', 'moving_variance')


def _build_backbone(variant, output_stride):
  """The backbone alone on a [1, 33, 50, 3] placeholder, in a new graph (the default)."""
  backbone, arg_scope, _ = BACKBONES[variant].network(variant)
  with slim.arg_scope(arg_scope(is_training=False, weight_decay=1e-4, batch_norm_decay=0.997)):
    return backbone(tf.compat.v1.placeholder(tf.float32, [1, HEIGHT, WIDTH, 3]),
                    depth_multiplier=1.0, output_stride=output_stride)


def _conv_rate(graph, conv_op):
  """The dilation rate of the (depthwise) conv op `conv_op`, however TensorFlow implemented it."""
  dilations = graph.get_operation_by_name(conv_op).get_attr('dilations')
  if max(dilations) > 1:
    return dilations[1]
  try:  # a dilated conv done as SpaceToBatchND -> conv -> BatchToSpaceND
    block_shape = graph.get_operation_by_name(f'{conv_op}/SpaceToBatchND/block_shape')
  except KeyError:
    return 1
  return int(tf.make_ndarray(block_shape.get_attr('value'))[0])


def _conv_stride(graph, conv_op):
  return graph.get_operation_by_name(conv_op).get_attr('strides')[1]


@pytest.mark.heavy
@pytest.mark.parametrize('variant', sorted(RESNETS))
@pytest.mark.parametrize('output_stride', [8, 16])
def test_resnet_published_variable_names_and_shapes(variant, output_stride):
  scope, units_per_block = RESNETS[variant]
  with tf.Graph().as_default():
    features, end_points = _build_backbone(variant, output_stride)
    names = {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()}

  assert all(name.startswith(scope + '/') for name in names)
  assert not any(name.endswith('/biases') for name in names)  # batch norm follows every conv
  units = {re.match(rf'{scope}/(block\d/unit_\d+)/', n).group(1) for n in names if '/block' in n}
  assert sorted(units) == sorted(f'block{b}/unit_{u}' for b, count in
                                 enumerate(units_per_block, start=1) for u in range(1, count + 1))
  # 5 variables per conv (weights + 4 batch norm): 3 root convs, 3 per unit, 4 shortcuts.
  assert len(names) == 5 * (3 + 3 * sum(units_per_block) + 4)

  assert names[f'{scope}/conv1_1/weights'] == [3, 3, 3, 64]
  assert names[f'{scope}/conv1_2/weights'] == [3, 3, 64, 64]
  assert names[f'{scope}/conv1_3/weights'] == [3, 3, 64, 128]
  for conv in ('conv1_1', 'conv1_2', 'conv1_3'):
    for var in BATCH_NORM_VARIABLES:
      assert f'{scope}/{conv}/BatchNorm/{var}' in names
  assert names[f'{scope}/block4/unit_3/bottleneck_v1/conv3/BatchNorm/moving_variance'] == [2048]
  assert names[f'{scope}/block3/unit_{units_per_block[2]}/bottleneck_v1/conv2/weights'] == \
      [3, 3, 256, 256]
  # A shortcut conv exactly where the depth changes: the first unit of each block.
  shortcuts = {n.split('/bottleneck_v1/')[0] for n in names if '/shortcut/' in n}
  assert shortcuts == {f'{scope}/block{b}/unit_1' for b in range(1, 5)}
  for block, depth_in, depth in ((1, 128, 256), (2, 256, 512), (3, 512, 1024), (4, 1024, 2048)):
    prefix = f'{scope}/block{block}/unit_1/bottleneck_v1'
    assert names[f'{prefix}/shortcut/weights'] == [1, 1, depth_in, depth]
    assert names[f'{prefix}/shortcut/BatchNorm/moving_mean'] == [depth]
    assert names[f'{prefix}/conv1/weights'] == [1, 1, depth_in, depth // 4]
    assert names[f'{prefix}/conv3/weights'] == [1, 1, depth // 4, depth]

  assert features.shape.as_list() == [1, math.ceil(HEIGHT / output_stride),
                                      math.ceil(WIDTH / output_stride), 2048]
  low_level = end_points[resnet_v1_beta.DECODER_END_POINTS[variant][4]]
  assert low_level.shape.as_list() == [1, math.ceil(HEIGHT / 4), math.ceil(WIDTH / 4), 256]


@pytest.mark.parametrize('output_stride, block3_rate, block4_rates', [
    (8, 2, (4, 8, 16)), (16, 1, (2, 4, 8)), (32, 1, (1, 2, 4))])
def test_resnet_atrous_rates_and_multi_grid(output_stride, block3_rate, block4_rates):
  with tf.Graph().as_default() as graph:
    _build_backbone('resnet_v1_50_beta', output_stride)
  unit = 'resnet_v1_50/block{}/unit_{}/bottleneck_v1/conv2/Conv2D'
  # The last unit of block1 always subsamples (stride 8); block3's last one only at stride 32.
  assert _conv_stride(graph, unit.format(1, 3)) == 2
  assert _conv_stride(graph, unit.format(3, 6)) == (2 if output_stride == 32 else 1)
  assert _conv_rate(graph, unit.format(1, 3)) == 1
  assert _conv_rate(graph, unit.format(3, 1)) == block3_rate
  assert tuple(_conv_rate(graph, unit.format(4, u)) for u in (1, 2, 3)) == block4_rates
  assert all(_conv_stride(graph, unit.format(4, u)) == 1 for u in (1, 2, 3))


def test_resnet_multi_grid_is_a_builder_argument():
  with tf.Graph().as_default() as graph:
    with slim.arg_scope(resnet_v1_beta.resnet_v1_beta_arg_scope(is_training=False)):
      resnet_v1_beta.resnet_v1_50_beta(tf.zeros([1, HEIGHT, WIDTH, 3]), output_stride=16,
                                       multi_grid=(1, 1, 2))
  unit = 'resnet_v1_50/block4/unit_{}/bottleneck_v1/conv2/Conv2D'
  assert tuple(_conv_rate(graph, unit.format(u)) for u in (1, 2, 3)) == (2, 2, 4)
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match=r'block4: 3 units but multi_grid=\(1, 2\)'):
      resnet_v1_beta.resnet_v1_50_beta(tf.zeros([1, HEIGHT, WIDTH, 3]), multi_grid=(1, 2))


def _tf_slim_resnet_50_beta(images, output_stride):
  """tf-slim's own ResNet-v1-50 units under the beta root; its units have no multi-grid."""
  with tf.compat.v1.variable_scope('resnet_v1_50'):
    net = images
    for conv_scope, depth, stride in resnet_v1_beta.ROOT_CONVS:
      net = resnet_utils.conv2d_same(net, depth, 3, stride, scope=conv_scope)
    net = slim.max_pool2d(net, 3, stride=2, scope='pool1')
    blocks = [resnet_v1.resnet_v1_block(scope, depth, units, stride)
              for scope, depth, units, stride in resnet_v1_beta.blocks('resnet_v1_50')]
    return resnet_utils.stack_blocks_dense(net, blocks, output_stride // 4)


def features_with_the_same_weights(build, build_reference):
  """Builds `build()` and, under the scope `reference`, `build_reference()` (ResNet layer
  defaults, inference), checks that they have the same variables, gives the reference ours and
  returns the values of both networks' outputs."""
  with tf.Graph().as_default():
    with slim.arg_scope(resnet_v1_beta.resnet_v1_beta_arg_scope(is_training=False)):
      features = build()
      ours = {v.op.name: v for v in tf.compat.v1.global_variables()}
      with tf.compat.v1.variable_scope('reference'):
        expected = build_reference()
    reference = {v.op.name[len('reference/'):]: v for v in tf.compat.v1.global_variables()
                 if v.op.name.startswith('reference/')}
    assert sorted(ours) == sorted(reference)
    copy_weights = tf.group(*[reference[name].assign(variable) for name, variable in ours.items()])
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      session.run(copy_weights)
      return session.run([features, expected])


@pytest.mark.heavy
def test_resnet_equals_tf_slims_resnet_v1_units():
  # Same variables, and with the same weights the same features, as tf-slim's ResNet-v1 (the code
  # DeepLab's checkpoints were trained with), on an even-sized input where padding matters.
  images = np.random.default_rng(0).uniform(-1, 1, [1, 34, 48, 3]).astype(np.float32)
  ours_value, expected_value = features_with_the_same_weights(
      lambda: resnet_v1_beta.resnet_v1_50_beta(tf.constant(images), output_stride=8,
                                               multi_grid=(1, 1, 1))[0],
      lambda: _tf_slim_resnet_50_beta(tf.constant(images), output_stride=8))
  assert ours_value.shape == expected_value.shape == (1, 5, 6, 2048)
  assert np.all(np.isfinite(ours_value)) and ours_value.max() > 0
  np.testing.assert_allclose(ours_value, expected_value, rtol=1e-5, atol=1e-6)


def test_resnet_presets_and_depth_multiplier():
  for variant in RESNETS:
    config = ModelConfig(model_variant=variant, num_classes=3)
    assert (config.atrous_rates, config.output_stride, config.decoder_output_stride) == \
        ((6, 12, 18), 16, 0)
    assert ModelConfig(model_variant=variant, output_stride=8).atrous_rates == (12, 24, 36)
    assert ModelConfig.from_json(config.to_json()) == config
  with pytest.raises(UserError, match='--depth_multiplier=0.5: resnet_v1_50_beta has no width'):
    ModelConfig(model_variant='resnet_v1_50_beta', depth_multiplier=0.5)


def predict_at_a_tiny_size(config, height=HEIGHT, width=WIDTH):
  """Builds `logits` on a [1, height, width, 3] input, then predicts a grey image of that size
  with the same variables; checks the labels and probabilities it returns.

  Returns (the logits' static shape as a list, {variable name: shape}).
  """
  with tf.Graph().as_default():
    scores = model.logits(tf.zeros([1, height, width, 3]), config)
    images = tf.compat.v1.placeholder(tf.uint8, [1, None, None, 3])
    predictions, probabilities = model.predict_labels(images, config)  # reuses the variables
    names = {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()}
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      labels, probs = session.run([predictions, probabilities],
                                  {images: np.full([1, height, width, 3], 128, np.uint8)})
  classes = config.num_classes
  assert labels.shape == (1, height, width) and probs.shape == (1, height, width, classes)
  np.testing.assert_allclose(probs.sum(axis=3), 1.0, rtol=1e-5)
  return scores.shape.as_list(), names


@pytest.mark.heavy
@pytest.mark.parametrize('variant', sorted(RESNETS) + ['xception_65'])
def test_deeplab_predicts_at_a_tiny_size(variant):
  config = ModelConfig(model_variant=variant, num_classes=3, decoder_output_stride=4)
  scores_shape, names = predict_at_a_tiny_size(config)
  assert scores_shape == [1, math.ceil(HEIGHT / 4), math.ceil(WIDTH / 4), 3]
  # The decoder projects the 256 channels of the stride-4 end point; the ASPP has three separable
  # branches on the backbone's 2048 channels.
  assert names['decoder/feature_projection0/weights'] == [1, 1, 256, 48]
  assert names['aspp3_depthwise/depthwise_weights'] == [3, 3, 2048, 1]


@pytest.mark.heavy
@pytest.mark.parametrize('variant, first_conv', [
    ('resnet_v1_50_beta', 'resnet_v1_50/conv1_1'),
    ('xception_65', 'xception_65/entry_flow/conv1_1')])
def test_trains_a_step(variant, first_conv):
  model_config = ModelConfig(model_variant=variant, num_classes=3)
  train_config = training.TrainConfig(training_number_of_steps=2, train_batch_size=1,
                                      train_crop_size=(HEIGHT, HEIGHT), base_learning_rate=0.01)
  random = np.random.default_rng(0)
  with tf.Graph().as_default():
    images = tf.constant(random.uniform(-1, 1, [1, HEIGHT, HEIGHT, 3]), tf.float32)
    labels = tf.constant(random.integers(0, 3, [1, HEIGHT, HEIGHT]), tf.int32)
    ops = training.build_train_graph(model_config, train_config, images, labels, ignore_label=255)
    moving_mean, = [v for v in tf.compat.v1.global_variables()
                    if v.op.name == f'{first_conv}/BatchNorm/moving_mean']
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      steps_and_losses = [session.run([ops['step'], ops['total_loss']]) for _ in range(2)]
      moved = session.run(moving_mean)
  assert [step for step, _ in steps_and_losses] == [1, 2]
  assert all(np.isfinite(loss) for _, loss in steps_and_losses)
  assert np.any(moved != 0)  # batch norm statistics update with the train op


XCEPTION_BLOCKS = {  # block -> (units, separable conv depths, has a shortcut conv)
    'entry_flow/block1': (1, (128, 128, 128), True),
    'entry_flow/block2': (1, (256, 256, 256), True),
    'entry_flow/block3': (1, (728, 728, 728), True),
    'middle_flow/block1': (16, (728, 728, 728), False),
    'exit_flow/block1': (1, (728, 1024, 1024), True),
    'exit_flow/block2': (1, (1536, 1536, 2048), False),
}


@pytest.mark.heavy
@pytest.mark.parametrize('output_stride', [8, 16])
def test_xception_published_variable_names_and_shapes(output_stride):
  with tf.Graph().as_default():
    features, end_points = _build_backbone('xception_65', output_stride)
    names = {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()}
    regularized = tf.compat.v1.losses.get_regularization_losses()

  assert all(name.startswith('xception_65/') for name in names)
  assert not any(name.endswith('/biases') for name in names)
  units = {re.match(r'xception_65/(\w+/block\d/unit_\d+)/', n).group(1) for n in names
           if '/unit_' in n}
  assert units == {f'{block}/unit_{u}' for block, (count, _, _) in XCEPTION_BLOCKS.items()
                   for u in range(1, count + 1)}
  # 5 variables per conv: 2 root convs, 6 per module (3 depthwise + 3 pointwise), 4 shortcuts.
  assert len(names) == 5 * (2 + 6 * 21 + 4)
  assert names['xception_65/entry_flow/conv1_1/weights'] == [3, 3, 3, 32]
  assert names['xception_65/entry_flow/conv1_2/weights'] == [3, 3, 32, 64]
  assert names['xception_65/entry_flow/conv1_2/BatchNorm/gamma'] == [64]
  depth_in = 64
  for block, (count, depths, has_shortcut) in XCEPTION_BLOCKS.items():
    for unit in range(1, count + 1):
      prefix = f'xception_65/{block}/unit_{unit}/xception_module'
      for index, depth in enumerate(depths, start=1):
        conv = f'{prefix}/separable_conv{index}'
        assert names[f'{conv}_depthwise/depthwise_weights'] == [3, 3, depth_in, 1]
        assert names[f'{conv}_pointwise/weights'] == [1, 1, depth_in, depth]
        for var in BATCH_NORM_VARIABLES:
          assert names[f'{conv}_depthwise/BatchNorm/{var}'] == [depth_in]
          assert names[f'{conv}_pointwise/BatchNorm/{var}'] == [depth]
        depth_in = depth
      assert (f'{prefix}/shortcut/weights' in names) == (has_shortcut and unit == 1)
  assert names['xception_65/entry_flow/block1/unit_1/xception_module/shortcut/weights'] == \
      [1, 1, 64, 128]
  assert names['xception_65/exit_flow/block1/unit_1/xception_module/shortcut/BatchNorm/beta'] == \
      [1024]
  # L2 weight decay on the regular convs only: 2 root, 21 * 3 pointwise, 4 shortcuts.
  assert len(regularized) == 2 + 21 * 3 + 4
  assert not any('depthwise' in loss.name for loss in regularized)

  assert features.shape.as_list() == [1, math.ceil(HEIGHT / output_stride),
                                      math.ceil(WIDTH / output_stride), 2048]
  low_level = end_points[xception.DECODER_END_POINTS['xception_65'][4]]
  assert low_level.shape.as_list() == [1, math.ceil(HEIGHT / 4), math.ceil(WIDTH / 4), 256]


@pytest.mark.heavy
@pytest.mark.parametrize('output_stride, rates', [
    (8, {'entry_flow/block3': 1, 'middle_flow/block1': 2, 'exit_flow/block1': 2,
         'exit_flow/block2': 4}),
    (16, {'entry_flow/block3': 1, 'middle_flow/block1': 1, 'exit_flow/block1': 1,
          'exit_flow/block2': 2}),
    (32, {'entry_flow/block3': 1, 'middle_flow/block1': 1, 'exit_flow/block1': 1,
          'exit_flow/block2': 1})])
def test_xception_atrous_rates_strides_and_activations(output_stride, rates):
  with tf.Graph().as_default() as graph:
    _build_backbone('xception_65', output_stride)
  module = 'xception_65/{}/unit_1/xception_module/separable_conv{}_depthwise'
  for block, rate in rates.items():
    assert [_conv_rate(graph, f'{module.format(block, i)}/depthwise') for i in (1, 2, 3)] == \
        [rate] * 3
  # A module's stride is on its third separable conv, while the running stride is below the target.
  strided = {'entry_flow/block3': output_stride > 8, 'exit_flow/block1': output_stride > 16}
  for block, is_strided in strided.items():
    assert _conv_stride(graph, f'{module.format(block, 3)}/depthwise') == (2 if is_strided else 1)
    assert _conv_stride(graph, f'{module.format(block, 2)}/depthwise') == 1
  # ReLU before each separable conv (linear depthwise) except in exit_flow/block2 (ReLU after BN).
  ops = {op.name for op in graph.get_operations()}
  assert module.format('middle_flow/block1', 1) + '/Relu' not in ops
  assert module.format('exit_flow/block2', 1) + '/Relu' in ops


def test_xception_preset():
  config = ModelConfig(model_variant='xception_65', num_classes=3)
  assert (config.atrous_rates, config.output_stride, config.decoder_output_stride) == \
      ((6, 12, 18), 16, 4)
  assert ModelConfig(model_variant='xception_65', output_stride=8).atrous_rates == (12, 24, 36)
  assert ModelConfig.from_json(config.to_json()) == config
  with pytest.raises(UserError, match='xception_65 has no width multiplier'):
    ModelConfig(model_variant='xception_65', depth_multiplier=0.5)
