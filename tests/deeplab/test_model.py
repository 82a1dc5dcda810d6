"""The model builder: published variable names, shapes, prediction at any size."""
import numpy as np
import pytest

from deeplab import model
from deeplab.compat import tf
from deeplab.config import ModelConfig
from deeplab.errors import UserError
from deeplab.nets import mobilenet_v2


def _variables(config, size=65):
  with tf.Graph().as_default():
    scores = model.logits(tf.compat.v1.placeholder(tf.float32, [1, size, size, 3]), config)
    return {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()}, scores.shape


@pytest.mark.parametrize('depth_multiplier, output_stride, rates', [
    (1.0, 16, ()), (0.5, 8, ()), (1.0, 8, (12, 24, 36)), (0.75, 16, (6, 12, 18))])
def test_published_variable_names(depth_multiplier, output_stride, rates):
  config = ModelConfig(num_classes=21, depth_multiplier=depth_multiplier,
                       output_stride=output_stride, atrous_rates=rates)
  names, shape = _variables(config)
  assert shape.as_list() == [1, 65 // output_stride + 1, 65 // output_stride + 1, 21]
  # The first block has no expand layer; every block has depthwise + project with batch norm.
  assert 'MobilenetV2/expanded_conv/expand/weights' not in names
  for block in ['expanded_conv'] + [f'expanded_conv_{i}' for i in range(1, 17)]:
    assert f'MobilenetV2/{block}/depthwise/depthwise_weights' in names
    for var in ('beta', 'gamma', 'moving_mean', 'moving_variance'):
      assert f'MobilenetV2/{block}/project/BatchNorm/{var}' in names
  assert names['MobilenetV2/Conv/weights'][3] == mobilenet_v2.channels(32, depth_multiplier)
  assert names['MobilenetV2/expanded_conv_16/project/weights'][3] == \
      mobilenet_v2.channels(320, depth_multiplier)
  for head in ('image_pooling/weights', 'aspp0/weights', 'concat_projection/weights',
               'concat_projection/BatchNorm/moving_variance'):
    assert names[head][-1] == 256
  for i in range(1, len(rates) + 1):
    assert f'aspp{i}_depthwise/depthwise_weights' in names
    assert f'aspp{i}_pointwise/weights' in names
  assert f'aspp{len(rates) + 1}_depthwise/depthwise_weights' not in names
  assert names['logits/semantic/weights'] == [1, 1, 256, 21]
  assert names['logits/semantic/biases'] == [21]
  assert not any(n.startswith('decoder') for n in names)


def test_thin_mobilenet_channels_match_the_published_half_width_model():
  # Channels of the published depth-multiplier-0.5 DeepLab model (from its TFLite graph).
  assert [mobilenet_v2.channels(c, 0.5) for c in (32, 16, 24, 32, 64, 96, 160, 320)] == \
      [16, 8, 12, 16, 32, 48, 80, 160]


def test_decoder_variables_and_stride_4_logits():
  config = ModelConfig(num_classes=5, atrous_rates=(6, 12, 18), decoder_output_stride=4)
  names, shape = _variables(config)
  assert shape.as_list() == [1, 17, 17, 5]
  assert names['decoder/feature_projection0/weights'] == [1, 1, 144, 48]
  for conv in ('decoder_conv0', 'decoder_conv1'):
    assert f'decoder/{conv}_depthwise/depthwise_weights' in names
    assert names[f'decoder/{conv}_pointwise/weights'][3] == 256


@pytest.mark.heavy
def test_predict_labels_keeps_any_input_size():
  config = ModelConfig(num_classes=3, depth_multiplier=0.25, min_resize_value=40,
                       max_resize_value=60)
  with tf.Graph().as_default():
    images = tf.compat.v1.placeholder(tf.uint8, [1, None, None, 3])
    predictions, probabilities = model.predict_labels(images, config, scales=(0.75, 1.0),
                                                      add_flipped_images=True)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      labels, probs = session.run([predictions, probabilities],
                                  {images: np.zeros([1, 33, 50, 3], np.uint8)})
  assert labels.shape == (1, 33, 50) and labels.dtype == np.int32
  assert probs.shape == (1, 33, 50, 3)
  np.testing.assert_allclose(probs.sum(axis=3), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(labels, probs.argmax(axis=3))


def test_config_round_trip_and_validation():
  config = ModelConfig(model_variant='mobilenet_v2', output_stride=8, num_classes=4,
                       atrous_rates=(12, 24))
  assert ModelConfig.from_json(config.to_json()) == config
  with pytest.raises(UserError, match='--model_variant=resnet_v9: unknown model variant'):
    ModelConfig(model_variant='resnet_v9')
  with pytest.raises(UserError, match='--output_stride=12'):
    ModelConfig(output_stride=12)
  with pytest.raises(UserError, match='unknown keys'):
    ModelConfig.from_json(dict(config.to_json(), colour='blue'))
