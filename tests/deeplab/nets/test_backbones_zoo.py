"""Model-zoo backbones beyond the first four: MobileNetV3, ResNet-v1-18/50/101, Xception-41/71.

Published variable names and shapes (representative ones: the root, a middle unit, the last unit,
the shortcuts, the decoder's end points), output sizes at output strides 8/16/32, and a tiny
DeepLab on each. Inputs are 33x50; the deep networks are only built, never run.
"""
import math
import re

import numpy as np
import pytest

from deeplab import model
from deeplab.compat import slim, tf
from deeplab.config import ModelConfig
from deeplab.errors import UserError
from deeplab.nets.registry import BACKBONES
from deeplab.nets import mobilenet_v3, resnet_v1_beta
from tests.deeplab.nets.test_backbones import (_conv_rate, _conv_stride, features_with_the_same_weights,
                            predict_at_a_tiny_size)
from tf_slim.nets import resnet_v1  # after deeplab.compat, which patches tf-slim

# Every test here builds, freezes, trains or converts whole networks (`make test`, not test-fast).
pytestmark = pytest.mark.heavy

HEIGHT, WIDTH = 33, 50
BATCH_NORM_VARIABLES = ('beta', 'gamma', 'moving_mean', 'moving_variance')


def _build_backbone(variant, output_stride):
  """The backbone alone on a [1, 33, 50, 3] placeholder: (features, end points, variable shapes)."""
  backbone, arg_scope, _ = BACKBONES[variant].network(variant)
  with slim.arg_scope(arg_scope(is_training=False, weight_decay=1e-4, batch_norm_decay=0.997)):
    features, end_points = backbone(tf.compat.v1.placeholder(tf.float32, [1, HEIGHT, WIDTH, 3]),
                                    depth_multiplier=1.0, output_stride=output_stride)
  return features, end_points, {v.op.name: v.shape.as_list()
                                for v in tf.compat.v1.global_variables()}


def _units(names, scope):
  return {re.match(rf'{scope}/(.*/?block\d/unit_\d+)/', n).group(1) for n in names
          if '/unit_' in n}


def _assert_batch_norm(names, conv, depth):
  for variable in BATCH_NORM_VARIABLES:
    assert names[f'{conv}/BatchNorm/{variable}'] == [depth]


def _assert_sizes(features, end_points, variant, output_stride, depth, decoder_depths):
  assert features.shape.as_list() == [1, math.ceil(HEIGHT / output_stride),
                                      math.ceil(WIDTH / output_stride), depth]
  for stride, end_point in BACKBONES[variant].network(variant)[2].items():
    assert end_points[end_point].shape.as_list() == [
        1, math.ceil(HEIGHT / stride), math.ceil(WIDTH / stride), decoder_depths[stride]]


# variant -> (units per block, unit scope, output depth, decoder end point depths by stride)
RESNETS = {
    'resnet_v1_18': ((2, 2, 2, 2), 'lite_bottleneck_v1', 512, {4: 64, 8: 128}),
    'resnet_v1_50': ((3, 4, 6, 3), 'bottleneck_v1', 2048, {4: 256, 8: 512}),
    'resnet_v1_101': ((3, 4, 23, 3), 'bottleneck_v1', 2048, {4: 256, 8: 512}),
}


# ResNet-101 differs from -50 only in block3's length, which no output stride depends on: it is
# built at 16 only, to keep the test short.
@pytest.mark.parametrize('variant, output_stride', [
    (variant, output_stride) for variant in RESNETS for output_stride in (8, 16, 32)
    if variant != 'resnet_v1_101' or output_stride == 16])
def test_resnet_published_variable_names_shapes_and_output_sizes(variant, output_stride):
  units_per_block, unit_scope, depth, decoder_depths = RESNETS[variant]
  with tf.Graph().as_default():
    features, end_points, names = _build_backbone(variant, output_stride)

  assert all(name.startswith(variant + '/') for name in names)
  assert not any(name.endswith('/biases') for name in names)
  assert _units(names, variant) == {f'block{b}/unit_{u}' for b, count in
                                    enumerate(units_per_block, start=1)
                                    for u in range(1, count + 1)}
  # The 7x7 root of the ImageNet checkpoints, not the beta variant's three 3x3 convs.
  assert names[f'{variant}/conv1/weights'] == [7, 7, 3, 64]
  _assert_batch_norm(names, f'{variant}/conv1', 64)
  assert not any('/conv1_1/' in name for name in names)
  convs_per_unit = 3 if unit_scope == 'bottleneck_v1' else 2
  shortcut_blocks = (1, 2, 3, 4) if unit_scope == 'bottleneck_v1' else (2, 3, 4)
  assert len(names) == 5 * (1 + convs_per_unit * sum(units_per_block) + len(shortcut_blocks))
  shortcuts = {n.split(f'/{unit_scope}/')[0] for n in names if '/shortcut/' in n}
  assert shortcuts == {f'{variant}/block{b}/unit_1' for b in shortcut_blocks}

  last_unit = f'{variant}/block4/unit_{units_per_block[3]}/{unit_scope}'
  middle_unit = f'{variant}/block3/unit_{units_per_block[2] // 2 + 1}/{unit_scope}'
  if unit_scope == 'bottleneck_v1':
    assert names[f'{last_unit}/conv3/weights'] == [1, 1, 512, 2048]
    _assert_batch_norm(names, f'{last_unit}/conv3', 2048)
    assert names[f'{middle_unit}/conv1/weights'] == [1, 1, 1024, 256]
    assert names[f'{middle_unit}/conv2/weights'] == [3, 3, 256, 256]
    assert names[f'{variant}/block2/unit_1/bottleneck_v1/shortcut/weights'] == [1, 1, 256, 512]
  else:
    assert names[f'{last_unit}/conv2/weights'] == [3, 3, 512, 512]
    _assert_batch_norm(names, f'{last_unit}/conv2', 512)
    assert names[f'{middle_unit}/conv1/weights'] == [3, 3, 256, 256]
    assert names[f'{variant}/block1/unit_1/lite_bottleneck_v1/conv1/weights'] == [3, 3, 64, 64]
    assert names[f'{variant}/block2/unit_1/lite_bottleneck_v1/conv1/weights'] == \
        [3, 3, 64, 128]
    assert names[f'{variant}/block2/unit_1/lite_bottleneck_v1/shortcut/weights'] == \
        [1, 1, 64, 128]
  _assert_sizes(features, end_points, variant, output_stride, depth, decoder_depths)


def test_resnet_18_block4_rates_and_multi_grid():
  with tf.Graph().as_default() as graph:
    with slim.arg_scope(resnet_v1_beta.resnet_v1_beta_arg_scope(is_training=False)):
      resnet_v1_beta.resnet_v1_18(tf.zeros([1, HEIGHT, WIDTH, 3]), output_stride=8,
                                  multi_grid=(1, 2))
  unit = 'resnet_v1_18/block{}/unit_{}/lite_bottleneck_v1/conv{}/Conv2D'

  # Both convs of a unit take its rate: block3 at 2, block4's at 4 times its multi-grid factor.
  assert [_conv_rate(graph, unit.format(3, 1, conv)) for conv in (1, 2)] == [2, 2]
  assert [_conv_rate(graph, unit.format(4, u, conv)) for u in (1, 2) for conv in (1, 2)] == \
      [4, 4, 8, 8]
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match=r'block4: 2 units but multi_grid=\(1, 2, 4\)'):
      resnet_v1_beta.resnet_v1_18(tf.zeros([1, HEIGHT, WIDTH, 3]), multi_grid=(1, 2, 4))


@pytest.mark.parametrize('variant, mean_subtracted', [('resnet_v1_18', True),
                                                      ('resnet_v1_50_beta', False)])
def test_resnet_inputs_are_what_the_checkpoints_were_trained_on(variant, mean_subtracted):
  # The model feeds [-1, 1]; the non-beta ImageNet checkpoints saw RGB in [0, 255] minus the mean.
  images = np.stack([np.full([HEIGHT, WIDTH, 3], value, np.float32) for value in (-1.0, 1.0)])
  with tf.Graph().as_default() as graph:
    with slim.arg_scope(resnet_v1_beta.resnet_v1_beta_arg_scope(is_training=False)):
      BACKBONES[variant].network(variant)[0](tf.constant(images), output_stride=32)
    scope = resnet_v1_beta.VARIANTS[variant].scope
    root_input = graph.get_operation_by_name(f'{scope}/Pad').inputs[0]
    with tf.compat.v1.Session() as session:
      value = session.run(root_input)[:, 0, 0, :]
  expected = images[:, 0, 0, :]
  if mean_subtracted:
    expected = (expected + 1) * 127.5 - np.array(resnet_v1_beta.MEAN_RGB, np.float32)
  np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-4)


def test_resnet_50_equals_tf_slims_resnet_v1_50():
  # The 7x7-root network is tf-slim's resnet_v1_50 (whose ImageNet checkpoint it restores) on the
  # mean-subtracted RGB it was trained on: same variables and, with the same weights, the same
  # features, on an even-sized input where padding matters.
  images = np.random.default_rng(0).uniform(-1, 1, [1, 34, 48, 3]).astype(np.float32)
  rgb_minus_mean = (images + 1) * 127.5 - np.array(resnet_v1_beta.MEAN_RGB, np.float32)
  ours_value, expected_value = features_with_the_same_weights(
      lambda: resnet_v1_beta.resnet_v1_50(tf.constant(images), output_stride=8,
                                          multi_grid=(1, 1, 1))[0],
      lambda: resnet_v1.resnet_v1_50(tf.constant(rgb_minus_mean), num_classes=None,
                                     is_training=None, global_pool=False, output_stride=8,
                                     scope='resnet_v1_50')[0])
  assert ours_value.shape == expected_value.shape == (1, 5, 6, 2048)
  assert np.all(np.isfinite(ours_value)) and ours_value.max() > 0
  np.testing.assert_allclose(ours_value, expected_value, rtol=1e-4, atol=1e-5)


XCEPTION_ENTRY_FLOWS = {  # variant -> entry-flow blocks (depth, has stride 2), middle-flow units
    'xception_41': (((128, True), (256, True), (728, True)), 8),
    'xception_71': (((128, True), (256, False), (256, True), (728, False), (728, True)), 16),
}
XCEPTION_EXIT_FLOW = {'exit_flow/block1': (728, 1024, 1024), 'exit_flow/block2': (1536, 1536, 2048)}


# At 32 Xception-71 subsamples like -41; at 8 its five-block entry flow turns its last stride
# into dilation. It is not built at 32, to keep the test short.
@pytest.mark.parametrize('variant, output_stride', [
    ('xception_41', 8), ('xception_41', 16), ('xception_41', 32), ('xception_71', 8),
    ('xception_71', 16)])
def test_xception_published_variable_names_shapes_and_output_sizes(variant, output_stride):
  entry_flow, middle_units = XCEPTION_ENTRY_FLOWS[variant]
  with tf.Graph().as_default() as graph:
    features, end_points, names = _build_backbone(variant, output_stride)
    regularized = tf.compat.v1.losses.get_regularization_losses()

  assert all(name.startswith(variant + '/') for name in names)
  assert not any(name.endswith('/biases') for name in names)
  assert _units(names, variant) == (
      {f'entry_flow/block{b}/unit_1' for b in range(1, len(entry_flow) + 1)}
      | {f'middle_flow/block1/unit_{u}' for u in range(1, middle_units + 1)}
      | {'exit_flow/block1/unit_1', 'exit_flow/block2/unit_1'})
  modules = len(entry_flow) + middle_units + 2
  shortcuts = len(entry_flow) + 1
  # 5 variables per conv: 2 root convs, 6 per module (3 depthwise + 3 pointwise), the shortcuts.
  assert len(names) == 5 * (2 + 6 * modules + shortcuts)
  assert len(regularized) == 2 + 3 * modules + shortcuts  # no L2 on depthwise weights
  assert names[f'{variant}/entry_flow/conv1_1/weights'] == [3, 3, 3, 32]
  assert names[f'{variant}/entry_flow/conv1_2/weights'] == [3, 3, 32, 64]

  depth_in = 64
  for index, (depth, strided) in enumerate(entry_flow, start=1):
    prefix = f'{variant}/entry_flow/block{index}/unit_1/xception_module'
    assert names[f'{prefix}/shortcut/weights'] == [1, 1, depth_in, depth]
    assert names[f'{prefix}/separable_conv1_depthwise/depthwise_weights'] == [3, 3, depth_in, 1]
    assert names[f'{prefix}/separable_conv1_pointwise/weights'] == [1, 1, depth_in, depth]
    _assert_batch_norm(names, f'{prefix}/separable_conv3_pointwise', depth)
    # At output stride 8 the last strided entry-flow module keeps the resolution.
    subsamples = strided and not (output_stride == 8 and index == len(entry_flow))
    assert _conv_stride(graph, f'{prefix}/separable_conv3_depthwise/depthwise') == \
        (2 if subsamples else 1)
    depth_in = depth
  middle = f'{variant}/middle_flow/block1/unit_{middle_units}/xception_module'
  assert names[f'{middle}/separable_conv2_depthwise/depthwise_weights'] == [3, 3, 728, 1]
  _assert_batch_norm(names, f'{middle}/separable_conv2_depthwise', 728)
  assert f'{middle}/shortcut/weights' not in names
  for block, depths in XCEPTION_EXIT_FLOW.items():
    prefix = f'{variant}/{block}/unit_1/xception_module'
    for index, depth in enumerate(depths, start=1):
      assert names[f'{prefix}/separable_conv{index}_pointwise/weights'] == [1, 1, depth_in, depth]
      depth_in = depth
  _assert_batch_norm(names, f'{variant}/exit_flow/block2/unit_1/xception_module/'
                            'separable_conv3_pointwise', 2048)
  assert names[f'{variant}/exit_flow/block1/unit_1/xception_module/shortcut/weights'] == \
      [1, 1, 728, 1024]
  _assert_sizes(features, end_points, variant, output_stride, 2048, {4: 256, 8: 728})


@pytest.mark.parametrize('variant', ['resnet_v1_18', 'resnet_v1_50', 'resnet_v1_101',
                                     'xception_41', 'xception_71'])
def test_presets(variant):
  config = ModelConfig(model_variant=variant, num_classes=3)
  decoder_output_stride = 4 if variant.startswith('xception') else 0
  assert (config.atrous_rates, config.output_stride, config.decoder_output_stride) == \
      ((6, 12, 18), 16, decoder_output_stride)
  assert ModelConfig(model_variant=variant, output_stride=8).atrous_rates == (12, 24, 36)
  assert ModelConfig.from_json(config.to_json()) == config
  with pytest.raises(UserError, match=f'{variant} has no width multiplier'):
    ModelConfig(model_variant=variant, depth_multiplier=0.5)


@pytest.mark.parametrize('variant, decoder_output_stride, low_level_depth', [
    ('resnet_v1_18', 8, 128), ('resnet_v1_50', 4, 256), ('xception_41', 4, 256)])
def test_deeplab_predicts_at_a_tiny_size(variant, decoder_output_stride, low_level_depth):
  config = ModelConfig(model_variant=variant, num_classes=3,
                       decoder_output_stride=decoder_output_stride)
  scores_shape, names = predict_at_a_tiny_size(config)
  assert scores_shape == [1, math.ceil(HEIGHT / decoder_output_stride),
                          math.ceil(WIDTH / decoder_output_stride), 3]
  assert names['decoder/feature_projection0/weights'] == [1, 1, low_level_depth, 48]


def _shapes(listing):
  """{'MobilenetV3/<name>': shape} from lines '<name> <dimension> ...'."""
  return {f'MobilenetV3/{name}': [int(d) for d in dims]
          for name, *dims in (line.split() for line in listing.strip().splitlines())}


# variant -> (representative published variables of the Cityscapes checkpoints
# mobilenetv3_{large,small}_cityscapes_trainfine, decoder end point depths by stride, blocks,
# output channels).
MOBILENET_V3 = {
    'mobilenet_v3_large_seg': (_shapes("""
        Conv/weights                                          3 3 3 16
        expanded_conv/depthwise/depthwise_weights             3 3 16 1
        expanded_conv/project/weights                         1 1 16 16
        expanded_conv_3/depthwise/depthwise_weights           5 5 72 1
        expanded_conv_3/squeeze_excite/Conv/weights           1 1 72 24
        expanded_conv_3/squeeze_excite/Conv/biases            24
        expanded_conv_3/squeeze_excite/Conv_1/weights         1 1 24 72
        expanded_conv_3/squeeze_excite/Conv_1/biases          72
        expanded_conv_8/expand/weights                        1 1 80 184
        expanded_conv_11/squeeze_excite/Conv/weights          1 1 672 168
        expanded_conv_12/expand/weights                       1 1 112 336
        expanded_conv_12/project/weights                      1 1 336 80
        expanded_conv_14/expand/weights                       1 1 80 480
        expanded_conv_14/project/BatchNorm/moving_mean        80
        Conv_1/weights                                        1 1 80 480
        Conv_1/BatchNorm/gamma                                480
        """), {4: 72, 8: 120}, 15, 480),
    'mobilenet_v3_small_seg': (_shapes("""
        Conv/weights                                          3 3 3 16
        expanded_conv/squeeze_excite/Conv/weights             1 1 16 8
        expanded_conv/project/weights                         1 1 16 16
        expanded_conv_1/expand/weights                        1 1 16 72
        expanded_conv_2/expand/weights                        1 1 24 88
        expanded_conv_4/depthwise/depthwise_weights           5 5 240 1
        expanded_conv_4/squeeze_excite/Conv/weights           1 1 240 64
        expanded_conv_8/expand/weights                        1 1 48 144
        expanded_conv_9/expand/weights                        1 1 48 288
        expanded_conv_10/project/weights                      1 1 288 48
        Conv_1/weights                                        1 1 48 288
        Conv_1/BatchNorm/moving_variance                      288
        """), {4: 16, 8: 88}, 11, 288),
}
# Blocks with a squeeze-and-excitation gate, and those with hard-swish, by index (expanded_conv_N).
MOBILENET_V3_GATED = {'mobilenet_v3_large_seg': {3, 4, 5, 10, 11, 12, 13, 14},
                      'mobilenet_v3_small_seg': {0, 3, 4, 5, 6, 7, 8, 9, 10}}
MOBILENET_V3_HARD_SWISH = {'mobilenet_v3_large_seg': set(range(6, 15)),
                           'mobilenet_v3_small_seg': set(range(3, 11))}


def _block_scope(index):
  return 'MobilenetV3/expanded_conv' + (f'_{index}' if index else '')


@pytest.mark.parametrize('variant', sorted(MOBILENET_V3))
@pytest.mark.parametrize('output_stride', [8, 16, 32])
def test_mobilenet_v3_published_variable_names_shapes_and_output_sizes(variant, output_stride):
  expected, decoder_depths, blocks, depth = MOBILENET_V3[variant]
  with tf.Graph().as_default() as graph:
    features, end_points, names = _build_backbone(variant, output_stride)
  ops = {op.name for op in graph.get_operations()}
  for name, shape in expected.items():
    assert names[name] == shape, name
  assert all(name.startswith('MobilenetV3/') for name in names)
  assert {n.split('/')[1] for n in names if '/expanded_conv' in n} == \
      {_block_scope(i).split('/')[1] for i in range(blocks)}
  for index in range(blocks):
    scope = _block_scope(index)
    gated = index in MOBILENET_V3_GATED[variant]
    assert (f'{scope}/squeeze_excite/Conv_1/biases' in names) == gated
    assert not any(n.startswith(f'{scope}/squeeze_excite/') and '/BatchNorm/' in n for n in names)
    assert (f'{scope}/depthwise/hard_swish/mul_1' in ops) == \
        (index in MOBILENET_V3_HARD_SWISH[variant])
  # Biases only in the gates; batch norm after every other conv.
  assert all('/squeeze_excite/' in n for n in names if n.endswith('/biases'))
  assert 'MobilenetV3/Conv/hard_swish/mul_1' in ops and 'MobilenetV3/Conv_1/hard_swish/mul_1' in ops
  _assert_sizes(features, end_points, variant, output_stride, depth, decoder_depths)
  assert end_points[f'layer_{blocks + 2}'] is features


def test_mobilenet_v3_gate_and_activations():
  values = np.linspace(-4, 4, 9, dtype=np.float32)
  with tf.Graph().as_default():
    with tf.compat.v1.Session() as session:
      swish, sigmoid = session.run([mobilenet_v3.hard_swish(values),
                                    mobilenet_v3.hard_sigmoid(values)])
  np.testing.assert_allclose(swish, values * np.clip(values + 3, 0, 6) / 6, rtol=1e-6)
  np.testing.assert_allclose(sigmoid, np.clip(values + 3, 0, 6) * 0.16667, rtol=1e-6)


@pytest.mark.parametrize('variant', sorted(MOBILENET_V3))
def test_mobilenet_v3_preset_is_the_model_zoos(variant):
  config = ModelConfig(model_variant=variant, num_classes=19, output_stride=32)
  assert (config.atrous_rates, config.decoder_output_stride, config.image_pooling_crop_size,
          config.image_pooling_stride, config.aspp_convs_filters,
          config.aspp_with_concat_projection, config.aspp_with_squeeze_and_excitation,
          config.image_se_uses_qsigmoid, config.decoder_use_sum_merge, config.decoder_filters,
          config.decoder_output_is_logits) == ((), 8, (769, 769), (4, 5), 128, 0, 1, 1, 1, 19, 1)
  assert ModelConfig(model_variant=variant, num_classes=3).decoder_filters == 3
  assert ModelConfig.from_json(config.to_json()) == config
  # Other backbones keep DeepLab's head.
  other = ModelConfig(model_variant='xception_65', num_classes=19)
  assert (other.image_pooling_crop_size, other.aspp_convs_filters, other.decoder_filters,
          other.aspp_with_concat_projection, other.decoder_output_is_logits) == ((), 256, 256, 1, 0)
  with pytest.raises(UserError, match='--decoder_filters=12: with --decoder_output_is_logits=1'):
    ModelConfig(model_variant=variant, num_classes=19, decoder_filters=12)
  with pytest.raises(UserError, match='--decoder_output_is_logits=1 needs a decoder'):
    ModelConfig(model_variant=variant, decoder_output_stride='none')
  with pytest.raises(UserError, match='--image_pooling_stride=4: expected two integers'):
    ModelConfig(model_variant=variant, image_pooling_stride=(4,))


@pytest.mark.parametrize('variant', sorted(MOBILENET_V3))
def test_mobilenet_v3_deeplab_predicts_at_a_tiny_size(variant):
  config = ModelConfig(model_variant=variant, num_classes=19, output_stride=32)
  scores_shape, names = predict_at_a_tiny_size(config, 65, 97)
  assert scores_shape == [1, 9, 13, 19]
  # The published head: a 128-channel 1x1 branch gated by image pooling (bias, no batch norm), a
  # 1x1 decoder summing it with the stride-8 features into the 19 logits; no concat projection,
  # no atrous branches, no logits layer.
  backbone_depth = MOBILENET_V3[variant][3]
  low_level_depth = MOBILENET_V3[variant][1][8]
  assert {name: shape for name, shape in names.items()
          if not name.startswith('MobilenetV3/')} == {
      'image_pooling/weights': [1, 1, backbone_depth, 128], 'image_pooling/biases': [128],
      'aspp0/weights': [1, 1, backbone_depth, 128],
      **{f'aspp0/BatchNorm/{v}': [128] for v in BATCH_NORM_VARIABLES},
      'decoder/feature_projection0/weights': [1, 1, low_level_depth, 19],
      'decoder/feature_projection0/biases': [19],
      'decoder/decoder_conv0/weights': [1, 1, 128, 19], 'decoder/decoder_conv0/biases': [19],
  }


@pytest.mark.parametrize('window, stride', [((5, 4), (2, 3)), ((11, 13), (4, 5)),
                                            ((30, 2), (1, 1))])
def test_image_pooling_averages_windows_cut_to_the_feature_map(window, stride):
  features = np.random.default_rng(0).normal(size=[2, 11, 13, 3]).astype(np.float32)
  with tf.Graph().as_default():
    placeholder = tf.compat.v1.placeholder(tf.float32, [2, None, None, 3])
    pooled = model.average_pool(placeholder, window, stride)
    cut = [min(window[0], 11), min(window[1], 13)]
    expected = tf.nn.avg_pool2d(features, cut, stride, 'VALID')
    with tf.compat.v1.Session() as session:
      value, expected_value = session.run([pooled, expected], {placeholder: features})
  np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-5)
  # The model zoo's window: a 769x769 crop at output stride 32 is 25x25 features.
  assert model.image_pooling_size((769, 769), 32) == [25, 25]
