"""The DeepLab model builder: backbone -> ASPP head (-> decoder) -> logits, and prediction.

One builder serves training (`logits` on crops), evaluation and export (`predict` on whole images,
single- or multi-scale, optionally with flipped copies). Scope names are those of the published
DeepLab checkpoints:

    image_pooling/*, aspp0/*, aspp{i}/* or aspp{i}_depthwise/* + aspp{i}_pointwise/*,
    concat_projection/*, decoder/feature_projection0/*, decoder/decoder_conv{0,1}[_depthwise,
    _pointwise]/* (or decoder/decoder_conv0/* or decoder_split_sep_conv0_* with a sum merge),
    logits/semantic/{weights,biases} (absent when the decoder outputs the logits)

All bilinear resizing uses corner alignment, as the original DeepLab does, so that crops of size
k * output_stride + 1 map exactly onto their feature grid.
"""
from typing import Optional

from deeplab.compat import slim, tf
from deeplab.config import ModelConfig, TrainConfig
from deeplab.nets import layers
from deeplab.nets.mobilenet_v3 import hard_sigmoid
from deeplab.nets.registry import BACKBONES
from deeplab.nets.batch_norm import batch_norm
from deeplab.preprocess import MEAN_PIXEL, resize_to_range

DECODER_PROJECTION_DEPTH = 48
LOGITS_SCOPE = 'logits'
# Scopes that are new when fine-tuning to another class count without the last layers.
LOGITS_SCOPES = ('logits',)
LAST_LAYER_SCOPES = ('logits', 'image_pooling', 'aspp', 'concat_projection', 'decoder')


def preprocess(images):
  """uint8 or float RGB in [0, 255] -> float32 in [-1, 1]."""
  return tf.cast(images, tf.float32) / MEAN_PIXEL - 1.0


def resize_bilinear(images, size):
  """Bilinear resize with aligned corners, in the dtype of `images` (float32, or bfloat16/float16 in
  a mixed-precision graph; the op itself returns float32). `size` is [height, width]."""
  return tf.cast(tf.compat.v1.image.resize_bilinear(images, size, align_corners=True), images.dtype)


def _spatial_size(tensor):
  return tf.shape(tensor)[1:3]


def _separable_conv(net, depth, rate, scope, weight_decay):
  """3x3 depthwise (`<scope>_depthwise`) + 1x1 pointwise (`<scope>_pointwise`), each with BN+ReLU."""
  net = slim.separable_conv2d(
      net, None, 3, depth_multiplier=1, rate=rate,
      weights_initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.33),
      weights_regularizer=None, scope=scope + '_depthwise')
  return slim.conv2d(
      net, depth, 1, weights_initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.06),
      weights_regularizer=slim.l2_regularizer(weight_decay), scope=scope + '_pointwise')


def _head_arg_scope(config: ModelConfig, train_config: TrainConfig, train_batch_norm: bool):
  with slim.arg_scope([slim.conv2d, slim.separable_conv2d],
                      weights_regularizer=slim.l2_regularizer(train_config.weight_decay),
                      activation_fn=tf.nn.relu, normalizer_fn=batch_norm, padding='SAME', stride=1):
    with slim.arg_scope([batch_norm], is_training=train_batch_norm,
                        decay=train_config.batch_norm_decay, epsilon=config.batch_norm_epsilon,
                        center=True, scale=True) as scope:
      return scope


def image_pooling_size(crop_size, output_stride):
  """Feature size of a crop (DeepLab's scale_dimension): (crop - 1) // output_stride + 1."""
  return [(size - 1) // output_stride + 1 for size in crop_size]


def average_pool(features, window, stride):
  """VALID average pooling whose window is cut to the feature map where it is larger.

  [N, h, w, C] -> [N, (h - kh) // sh + 1, (w - kw) // sw + 1, C], kh = min(window[0], h) and
  kw = min(window[1], w). Sizes may be known only when the graph runs (whole images of any size),
  so the window sums come from a summed-area table instead of a fixed-size pooling op.
  """
  sums = tf.pad(features, [[0, 0], [1, 0], [1, 0], [0, 0]])
  sums = tf.cumsum(tf.cumsum(sums, axis=1), axis=2)
  area = 1.0
  for axis, size, step in ((1, window[0], stride[0]), (2, window[1], stride[1])):
    extent = tf.shape(features)[axis]
    size = tf.minimum(size, extent)
    starts = tf.range(0, extent - size + 1, step)
    sums = tf.gather(sums, starts + size, axis=axis) - tf.gather(sums, starts, axis=axis)
    area *= tf.cast(size, tf.float32)
  return sums / area


def _image_feature(features, config: ModelConfig):
  """The image pooling branch: [N, h, w, C] -> [N, h, w, aspp_convs_filters].

  Global average pooling, or with `image_pooling_crop_size` averages over windows of that crop's
  feature size, `image_pooling_stride` apart; a 1x1 conv, resized back to h, w. As a gate
  (`aspp_with_squeeze_and_excitation`) the conv has a bias and a (hard) sigmoid, not batch norm.
  """
  if config.image_pooling_crop_size:
    window = image_pooling_size(config.image_pooling_crop_size, config.output_stride)
    pooled = average_pool(features, window, config.image_pooling_stride)
  else:
    pooled = tf.reduce_mean(features, axis=[1, 2], keepdims=True)
  if config.aspp_with_squeeze_and_excitation:
    gate = hard_sigmoid if config.image_se_uses_qsigmoid else tf.sigmoid
    pooled = slim.conv2d(pooled, config.aspp_convs_filters, 1, activation_fn=gate,
                         normalizer_fn=None, scope='image_pooling')
  else:
    pooled = slim.conv2d(pooled, config.aspp_convs_filters, 1, scope='image_pooling')
  return resize_bilinear(pooled, _spatial_size(features))


def aspp(features, config: ModelConfig, is_training: bool, weight_decay: float):
  """Atrous spatial pyramid pooling: [N, h, w, C] -> [N, h, w, aspp_convs_filters].

  The branches (image pooling, 1x1, a 3x3 per atrous rate) are concatenated and, with
  `aspp_with_concat_projection`, projected by a 1x1 conv. With
  `aspp_with_squeeze_and_excitation` the image pooling branch multiplies the result instead.
  """
  depth = config.aspp_convs_filters
  branches = []
  image_feature = _image_feature(features, config) if config.add_image_level_feature else None
  if image_feature is not None and not config.aspp_with_squeeze_and_excitation:
    branches.append(image_feature)
  branches.append(slim.conv2d(features, depth, 1, scope='aspp0'))
  for i, rate in enumerate(config.atrous_rates, start=1):
    scope = f'aspp{i}'
    if config.aspp_with_separable_conv:
      branches.append(_separable_conv(features, depth, rate, scope, weight_decay))
    else:
      branches.append(layers.atrous_conv2d(features, depth, 3, rate, scope=scope))
  net = tf.concat(branches, axis=3)
  if config.aspp_with_concat_projection:
    net = slim.conv2d(net, depth, 1, scope='concat_projection')
    net = slim.dropout(net, keep_prob=config.dropout_keep_prob, is_training=is_training,
                       scope='concat_projection_dropout')
  if image_feature is not None and config.aspp_with_squeeze_and_excitation:
    net *= image_feature
  return net


def decoder(features, low_level_features, config: ModelConfig, weight_decay: float):
  """DeepLabv3+ decoder: ASPP output + projected low-level features (at the decoder output
  stride s) -> [N, ceil(H / s), ceil(W / s), decoder_filters].

  Concatenation (48 projected channels) and two 3x3 convs, or with `decoder_use_sum_merge` one
  conv of the ASPP output plus the low-level features projected to as many channels. With
  `decoder_output_is_logits` every conv is 1x1 with a bias and no batch norm or activation.
  """
  depth = config.decoder_filters
  separable = config.decoder_use_separable_conv and not config.decoder_output_is_logits
  kernel_size = 1 if config.decoder_output_is_logits else 3
  linear = dict(activation_fn=None, normalizer_fn=None) if config.decoder_output_is_logits else {}
  with tf.compat.v1.variable_scope('decoder'), slim.arg_scope([slim.conv2d], **linear):
    size = _spatial_size(low_level_features)
    projected = slim.conv2d(low_level_features,
                            depth if config.decoder_use_sum_merge else DECODER_PROJECTION_DEPTH, 1,
                            scope='feature_projection0')
    features = resize_bilinear(features, size)
    if config.decoder_use_sum_merge:
      if separable:
        return _separable_conv(features, depth, 1, 'decoder_split_sep_conv0', weight_decay) + \
            projected
      return slim.conv2d(features, depth, kernel_size, scope='decoder_conv0') + projected
    net = tf.concat([features, projected], axis=3)
    if separable:
      net = _separable_conv(net, depth, 1, 'decoder_conv0', weight_decay)
      return _separable_conv(net, depth, 1, 'decoder_conv1', weight_decay)
    return slim.repeat(net, 2, slim.conv2d, depth, kernel_size, scope='decoder_conv0')


def logits(images, config: ModelConfig, training: Optional[TrainConfig] = None):
  """Builds the network on preprocessed images.

  Args:
    images: float32 [N, H, W, 3] in [-1, 1].
    training: the run's settings when building a training graph (dropout on; batch norm in
      training mode with fine_tune_batch_norm; its weight decay and batch norm decay); None for
      inference.
  Returns:
    float32 [N, ceil(H / s), ceil(W / s), num_classes], s = decoder_output_stride or output_stride:
    logits/semantic's output, or the decoder's with decoder_output_is_logits.
  """
  # At inference the decay settings shape no op that predictions depend on; the defaults keep the
  # inference graph the same whatever a run trained with.
  train_config = training or TrainConfig()
  is_training = training is not None
  train_batch_norm = is_training and training.fine_tune_batch_norm
  backbone_spec = BACKBONES[config.model_variant]
  backbone, backbone_arg_scope, decoder_end_points = backbone_spec.network(config.model_variant)
  with slim.arg_scope(backbone_arg_scope(is_training=train_batch_norm,
                                         weight_decay=train_config.weight_decay,
                                         batch_norm_decay=train_config.batch_norm_decay)):
    # Only builders with multi-grid take it; the config allows 1,1,1 alone for the others.
    multi_grid = {'multi_grid': config.multi_grid} if backbone_spec.multi_grid else {}
    features, end_points = backbone(images, depth_multiplier=config.depth_multiplier,
                                    output_stride=config.output_stride, **multi_grid)
  with slim.arg_scope(_head_arg_scope(config, train_config, train_batch_norm)):
    net = aspp(features, config, is_training, train_config.weight_decay)
    if config.decoder_output_stride:
      low_level_features = end_points[decoder_end_points[config.decoder_output_stride]]
      net = decoder(net, low_level_features, config, train_config.weight_decay)
  if config.decoder_output_is_logits:
    return net
  with tf.compat.v1.variable_scope(LOGITS_SCOPE):
    return slim.conv2d(net, config.num_classes, 1, activation_fn=None, normalizer_fn=None,
                       weights_initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.01),
                       weights_regularizer=slim.l2_regularizer(train_config.weight_decay),
                       scope='semantic')


def scale_dimension(size, scale):
  """int((size - 1) * scale + 1) of an int32 tensor, in float32 as the original DeepLab computes it:
  the size of a scaled image whose corner pixels stay corners (aligned-corner resizing)."""
  return tf.cast((tf.cast(size, tf.float32) - 1.0) * scale + 1.0, tf.int32)


def predict_probabilities(images, config: ModelConfig, scales=(1.0,), add_flipped_images=False):
  """Class probabilities at the input resolution, averaged over scales (and flips).

  As the original DeepLab's multi-scale evaluation: the image is resized (aligned corners) to
  int((H - 1) * s + 1) for each scale s != 1; each scale's logits are resized to the logits grid
  of scale max(1, s) (so a scale below 1 is first brought to the scale-1.0 grid), then to H x W;
  the softmax of each scale (and of each flipped copy) is averaged.

  Args:
    images: float32 [N, H, W, 3] in [0, 255] (any H, W).
  Returns:
    float32 [N, H, W, num_classes] softmax probabilities.
  """
  size = _spatial_size(images)
  logits_stride = config.decoder_output_stride or config.output_stride
  outputs = []
  for scale in scales:
    scaled = images
    if scale != 1.0:
      scaled = resize_bilinear(images, scale_dimension(size, scale))
    variants = [(scaled, False)] + ([(tf.reverse(scaled, [2]), True)] if add_flipped_images else [])
    for variant, flipped in variants:
      with tf.compat.v1.variable_scope(tf.compat.v1.get_variable_scope(),
                                       reuse=tf.compat.v1.AUTO_REUSE):
        scores = logits(preprocess(variant), config)
      if scale != 1.0:  # at 1.0 the logits already have the grid's size, ceil(H / stride)
        scores = resize_bilinear(scores, scale_dimension(size, max(1.0, scale) / logits_stride))
      if flipped:
        scores = tf.reverse(scores, [2])
      outputs.append(tf.nn.softmax(resize_bilinear(scores, size)))
  return outputs[0] if len(outputs) == 1 else tf.reduce_mean(tf.stack(outputs, axis=4), axis=4)


def pad_with_mean_pixel(images, min_size):
  """Pads [N, H, W, 3] images at the bottom and right with MEAN_PIXEL to at least `min_size`
  (height, width); larger images are left as they are."""
  size = _spatial_size(images)
  padding = tf.maximum(tf.constant(min_size, tf.int32) - size, 0)
  paddings = [[0, 0], [0, padding[0]], [0, padding[1]], [0, 0]]
  padded = tf.pad(images - MEAN_PIXEL, paddings) + MEAN_PIXEL
  # Padding by computed amounts leaves every dimension unknown to shape inference, the TFLite
  # converter's too, which needs the channel count: a reshape to the same shape restates it.
  return tf.reshape(padded, tf.concat([tf.shape(padded)[:3], tf.shape(images)[3:]], 0))


def predict_labels(images, config: ModelConfig, scales=(1.0,), add_flipped_images=False,
                   crop_size=()):
  """Whole-image prediction, as evaluate and the exported graph do it.

  The image is resized to the model's range (min/max_resize_value); with `crop_size` (height,
  width) it is then padded with the mean pixel to at least that size, as the original eval.py and
  export_model.py do with eval_crop_size / crop_size (the image-pooling branch then averages over
  the padding too), and the prediction is cropped back. The probabilities are resized back to the
  input size before the argmax, so predictions and probabilities always agree and have the input's
  size.

  Args:
    images: uint8 or float [1, H, W, 3] RGB in [0, 255], any H and W.
  Returns:
    predictions int32 [1, H, W], probabilities float32 [1, H, W, num_classes].
  """
  images = tf.cast(images, tf.float32)
  size = _spatial_size(images)
  resized = resize_to_range(images[0], config.min_resize_value, config.max_resize_value)[tf.newaxis]
  if crop_size:
    resized_size = _spatial_size(resized)
    padded = pad_with_mean_pixel(resized, crop_size)
    probabilities = predict_probabilities(padded, config, scales, add_flipped_images)
    probabilities = probabilities[:, :resized_size[0], :resized_size[1]]
  else:
    probabilities = predict_probabilities(resized, config, scales, add_flipped_images)
  if config.min_resize_value or config.max_resize_value:
    probabilities = resize_bilinear(probabilities, size)
  return tf.argmax(probabilities, axis=3, output_type=tf.int32), probabilities
