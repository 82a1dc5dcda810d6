"""Parity with the original DeepLab (tensorflow/models research/deeplab): each option computes what
the original computes, checked against values worked out here by hand or in numpy."""
import os

import numpy as np
import pytest

from deeplab import losses, model, training
from deeplab.compat import tf
from deeplab.config import BuildConfig, EvalConfig, ExportConfig, ModelConfig, TrainConfig
from deeplab.datasets import build, layouts, synthetic
from deeplab.datasets.manifest import Manifest, SplitInfo
from deeplab.errors import UserError
from deeplab.nets import registry


def run(tensor, feed=None):
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    return session.run(tensor, feed)


# ----------------------------------------------------------------------------- Cityscapes splits

def test_cityscapes_shards_carry_the_original_split_names(tmp_path):
  raw = synthetic.write_dataset('cityscapes', str(tmp_path / 'raw'), seed=1, num_train=2,
                                num_val=2, image_size=(24, 32))
  (tmp_path / 'out').mkdir()
  built, _ = build.build(layouts.get('cityscapes'), raw, str(tmp_path / 'out'),
                         BuildConfig(num_shards=1, num_workers=1), progress=False)
  assert sorted(built.splits) == ['train_fine', 'val_fine']
  assert sorted(os.listdir(tmp_path / 'out')) == [
      'dataset.json', 'train_fine-00000-of-00001.tfrecord', 'val_fine-00000-of-00001.tfrecord']
  # The name the original's commands use and the folder name both find the split.
  assert built.shard_paths('val') == built.shard_paths('val_fine')
  assert built.label_histogram('train') == built.splits['train_fine'].label_histogram


def test_shards_built_under_folder_names_are_found_by_the_original_names():
  manifest = Manifest('cityscapes', 19, 255, [], [], folder='/data', splits={
      'val': SplitInfo(1, [{'file': 'val-00000-of-00001.tfrecord'}])})
  assert manifest.shard_paths('val_fine') == ['/data/val-00000-of-00001.tfrecord']
  with pytest.raises(UserError, match="split 'test_fine' is not in the dataset"):
    manifest.shard_paths('test_fine')


# ----------------------------------------------------------------------------- multi-grid

def test_multi_grid_preset_none_and_numbers():
  assert ModelConfig(model_variant='resnet_v1_101_beta').multi_grid == (1, 2, 4)
  assert ModelConfig(model_variant='resnet_v1_101_beta', multi_grid='none').multi_grid == (1, 1, 1)
  assert ModelConfig(model_variant='resnet_v1_50_beta',
                     multi_grid=('1', '2', '1')).multi_grid == (1, 2, 1)
  assert ModelConfig(model_variant='xception_65').multi_grid == (1, 1, 1)
  # A model.json written before the setting existed rebuilds the network it was trained as.
  old = ModelConfig(model_variant='resnet_v1_50_beta').to_json()
  del old['multi_grid']
  assert ModelConfig.from_json(old).multi_grid == (1, 2, 4)
  with pytest.raises(UserError, match='xception_65 builder has no multi-grid'):
    ModelConfig(model_variant='xception_65', multi_grid=(1, 2, 4))
  with pytest.raises(UserError, match='expected three unit rates'):
    ModelConfig(model_variant='resnet_v1_50_beta', multi_grid=(1, 2))


def test_multi_grid_reaches_the_resnet_builder(monkeypatch):
  received = {}
  network = registry.Backbone.network

  def recording_network(backbone, name):
    builder, arg_scope, end_points = network(backbone, name)

    def recording(images, **kwargs):
      received.update(kwargs)
      return builder(images, **kwargs)
    return recording, arg_scope, end_points

  monkeypatch.setattr(registry.Backbone, 'network', recording_network)
  with tf.Graph().as_default():
    model.logits(tf.zeros([1, 33, 33, 3]),
                 ModelConfig(model_variant='resnet_v1_50_beta', multi_grid='none'))
  assert received['multi_grid'] == (1, 1, 1)


# ----------------------------------------------------------------------------- multi-scale inference

STRIDE = 16


def fake_logits(images, config, training=None):
  """A stand-in network: every STRIDE-th pixel (ceil(H / 16) x ceil(W / 16), like the real
  network's grid) plus the image mean (like the image-pooling branch), as 3 class scores."""
  del config, training
  return images[:, ::STRIDE, ::STRIDE, :] + tf.reduce_mean(images, axis=[1, 2], keepdims=True)


def np_fake_logits(image):
  return image[::STRIDE, ::STRIDE] + image.mean(axis=(0, 1))


def np_resize(array, height, width):
  """Bilinear resize with aligned corners of [h, w, C]."""
  def positions(size_in, size_out):
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    pos = np.arange(size_out) * scale
    low = np.floor(pos).astype(int)
    return low, np.minimum(low + 1, size_in - 1), (pos - low)
  top, bottom, fy = positions(array.shape[0], height)
  left, right, fx = positions(array.shape[1], width)
  rows = array[top] + (array[bottom] - array[top]) * fy[:, None, None]
  return rows[:, left] + (rows[:, right] - rows[:, left]) * fx[None, :, None]


def np_softmax(scores):
  exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
  return exp / exp.sum(axis=-1, keepdims=True)


def scale_dimension(size, scale):  # the original's int((size - 1) * scale + 1)
  return int((size - 1) * scale + 1)


def original_multi_scale(image, scales, flipped):
  """The original's predict_labels_multi_scale, step by step, on [H, W, 3] in [0, 255]."""
  height, width = image.shape[:2]
  probabilities = []
  for scale in scales:
    for flip in (False, True) if flipped else (False,):
      source = image[:, ::-1] if flip else image
      if scale != 1.0:
        source = np_resize(source, scale_dimension(height, scale), scale_dimension(width, scale))
      scores = np_fake_logits(source / 127.5 - 1.0)
      grid = [scale_dimension(size, max(1.0, scale) / STRIDE) for size in (height, width)]
      scores = np_resize(scores, *grid)
      if flip:
        scores = scores[:, ::-1]
      probabilities.append(np_softmax(np_resize(scores, height, width)))
  return np.mean(probabilities, axis=0)


@pytest.mark.parametrize('scales, flipped', [((0.5, 0.75, 1.25), False), ((0.75, 1.0), True)])
def test_multi_scale_is_the_originals_computation(monkeypatch, scales, flipped):
  monkeypatch.setattr(model, 'logits', fake_logits)
  image = np.random.RandomState(0).uniform(0, 255, (50, 70, 3)).astype(np.float32)
  with tf.Graph().as_default():
    _, probabilities = model.predict_labels(tf.constant(image[None]), ModelConfig(num_classes=3),
                                            scales, flipped)
    result = run(probabilities)[0]
  np.testing.assert_allclose(result, original_multi_scale(image, scales, flipped), atol=2e-5)


def test_crop_size_pads_with_the_mean_pixel_as_the_original_eval(monkeypatch):
  monkeypatch.setattr(model, 'logits', fake_logits)
  image = np.random.RandomState(1).uniform(0, 255, (40, 50, 3)).astype(np.float32)
  padded = np.full((65, 81, 3), 127.5, np.float32)
  padded[:40, :50] = image
  with tf.Graph().as_default():
    _, probabilities = model.predict_labels(tf.constant(image[None]), ModelConfig(num_classes=3),
                                            crop_size=(65, 81))
    whole = model.predict_labels(tf.constant(image[None]), ModelConfig(num_classes=3))[1]
    result, without_padding = run([probabilities, whole])
  # The padding moves the image mean, so the padded protocol differs from the whole image one.
  np.testing.assert_allclose(result[0], original_multi_scale(padded, (1.0,), False)[:40, :50],
                             atol=2e-5)
  assert not np.allclose(result, without_padding, atol=1e-3)


def test_crop_size_settings():
  assert EvalConfig().eval_crop_size == () and ExportConfig().export_crop_size == ()
  assert EvalConfig(eval_crop_size=(513, 513)).eval_crop_size == (513, 513)
  with pytest.raises(UserError, match='--export_crop_size=513: expected two integers'):
    ExportConfig(export_crop_size=(513,))


def test_evaluate_and_export_pass_the_crop_size(monkeypatch):
  received = []

  def recording(images, config, scales, add_flipped_images, crop_size):
    received.append(crop_size)
    tf.compat.v1.get_variable('weights', [])  # something for the saver to restore
    labels = tf.zeros(tf.shape(images)[:3], tf.int32)
    return labels, tf.zeros(tf.concat([tf.shape(images)[:3], [config.num_classes]], 0))

  monkeypatch.setattr(model, 'predict_labels', recording)
  from deeplab.export import freeze
  monkeypatch.setattr(freeze.checkpoint, 'restore', lambda *args: None)
  freeze.freeze(ModelConfig(num_classes=3), 'unused', ExportConfig(export_crop_size=(9, 11)))
  assert received == [(9, 11)]


# ----------------------------------------------------------------------------- the loss

LOGITS = np.array([[[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]],
                    [[-1.0, 3.0, 0.0], [0.0, 0.0, 1.0]]]], np.float32)  # [1, 2, 2, 3]
LABELS = np.array([[[0, 2], [255, 1]]], np.int32)  # one pixel ignored


def pixel_losses():
  """Cross-entropy of each pixel of LOGITS against LABELS (ignored pixel: 0), by hand."""
  flat, labels = LOGITS.reshape(-1, 3), LABELS.reshape(-1)
  log_sum = np.log(np.exp(flat).sum(axis=1))
  return np.where(labels == 255, 0.0, log_sum - flat[np.arange(4), np.minimum(labels, 2)])


def loss_of(global_step=None, **options):
  with tf.Graph().as_default():
    step = tf.constant(global_step or 0, tf.int64)
    return run(losses.softmax_cross_entropy(tf.constant(LOGITS), tf.constant(LABELS), 3, 255,
                                            global_step=step, **options))


def test_default_loss_is_the_mean_over_labelled_pixels():
  assert loss_of() == pytest.approx(pixel_losses().sum() / 3, rel=1e-6)


def test_label_weights_weigh_pixels_but_not_the_normaliser():
  weights = np.array([0.5, 2.0, 0.0])  # per class; pixels are classes 0, 2, -, 1
  expected = (pixel_losses() * np.array([0.5, 0.0, 0.0, 2.0])).sum() / 3
  assert loss_of(label_weights=tuple(weights)) == pytest.approx(expected, rel=1e-6)


def test_top_k_percent_pixels_keeps_the_hardest_pixels():
  # int(0.5 * 4 pixels) = 2 (the ignored pixel counts among the 4), normalised by the non-zero ones.
  hardest = np.sort(pixel_losses())[::-1][:2]
  assert loss_of(top_k_percent_pixels=0.5) == pytest.approx(hardest.sum() / 2, rel=1e-6)


def test_hard_example_mining_ramps_the_share_down_linearly():
  # At step 50 of 100 towards 0.25: share 0.5 * 0.25 + 0.5 = 0.625, int(0.625 * 4) = 2 pixels.
  hardest = np.sort(pixel_losses())[::-1][:2]
  assert loss_of(global_step=50, top_k_percent_pixels=0.25,
                 hard_example_mining_step=100) == pytest.approx(hardest.sum() / 2, rel=1e-6)
  # At step 0 all 4 pixels: the ignored one's loss is 0, so 3 count.
  assert loss_of(global_step=0, top_k_percent_pixels=0.25, hard_example_mining_step=100) == \
      pytest.approx(pixel_losses().sum() / 3, rel=1e-6)


def test_loss_at_logits_resolution_downsamples_labels_nearest():
  labels = np.array([[[0, 9, 9, 2], [9, 9, 9, 9], [9, 9, 9, 9], [255, 9, 9, 1]]], np.int32)
  # Nearest with aligned corners from 4 to 2 takes rows and columns 0 and 3: LABELS again.
  with tf.Graph().as_default():
    loss = run(losses.softmax_cross_entropy(tf.constant(LOGITS), tf.constant(labels), 3, 255,
                                            upsample_logits=False))
  assert loss == pytest.approx(pixel_losses().sum() / 3, rel=1e-6)


def test_class_weights_from_settings_and_the_label_histogram():
  assert losses.inverse_frequency_weights([100, 300, 0, 50], cap=5.0) == pytest.approx(
      (112.5 / 100, 112.5 / 300, 5.0, 112.5 / 50))
  assert losses.inverse_frequency_weights([1, 1000], cap=3.0) == pytest.approx((3.0, 500.5 / 1000))
  rule = TrainConfig(label_weight_rule='inverse_frequency', label_weight_cap=5.0)
  assert losses.class_weights(rule, [100, 300, 0, 50], 4) == pytest.approx((1.125, 0.375, 5.0, 2.25))
  assert losses.class_weights(TrainConfig(label_weights=(1, 2)), None, 2) == (1.0, 2.0)
  assert losses.class_weights(TrainConfig(), [1, 2], 2) == ()
  with pytest.raises(UserError, match='2 weights for 3 classes'):
    losses.class_weights(TrainConfig(label_weights=(1, 2)), None, 3)
  with pytest.raises(UserError, match='has no label histogram'):
    losses.class_weights(rule, None, 4)
  with pytest.raises(UserError, match='give one'):
    TrainConfig(label_weights=(1, 2), label_weight_rule='inverse_frequency')


# ----------------------------------------------------------------------------- gradients (the cosine
# schedule is tested with the others, in test_schedules_and_augmentation.py)

def tiny_logits(images, config, training=None):
  """A two-layer stand-in network whose variables are named like a backbone's and the logits'."""
  del training
  with tf.compat.v1.variable_scope('backbone'):
    hidden = tf.nn.conv2d(images, tf.compat.v1.get_variable(
        'weights', initializer=tf.fill([1, 1, 3, 4], 0.1)), 1, 'SAME')
  with tf.compat.v1.variable_scope('logits/semantic'):
    weights = tf.compat.v1.get_variable('weights', initializer=tf.fill([1, 1, 4, 3], 0.2))
    biases = tf.compat.v1.get_variable('biases', initializer=tf.zeros([3]))
  return tf.nn.conv2d(hidden, weights, 1, 'SAME') + biases


@pytest.mark.parametrize('multiplier', [1.0, 10.0])
def test_last_layer_gradient_multiplier_and_doubled_biases(monkeypatch, multiplier):
  monkeypatch.setattr(model, 'logits', tiny_logits)
  config = TrainConfig(last_layer_gradient_multiplier=multiplier, base_learning_rate=0.5,
                       momentum=0.0, weight_decay=0.0)
  with tf.Graph().as_default():
    images = tf.constant(np.random.RandomState(2).uniform(-1, 1, (1, 2, 2, 3)), tf.float32)
    ops = training.build_train_graph(ModelConfig(num_classes=3), config, images,
                                     tf.constant(LABELS), 255)
    variables = {v.op.name: v for v in tf.compat.v1.trainable_variables()}
    raw = dict(zip(variables, tf.gradients(ops['loss'], list(variables.values()))))
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      before, gradients = session.run([variables, raw])
      session.run(ops['step'])
      after = session.run(variables)
  factors = {'backbone/weights': 1.0, 'logits/semantic/weights': multiplier,
             'logits/semantic/biases': 2.0 * multiplier}
  for name, factor in factors.items():
    np.testing.assert_allclose(after[name], before[name] - 0.5 * factor * gradients[name],
                               rtol=1e-5, atol=1e-7)


def test_gradient_multiplier_of_the_head_follows_last_layers_contain_logits_only():
  head = TrainConfig(last_layer_gradient_multiplier=4.0)
  logits_only = TrainConfig(last_layer_gradient_multiplier=4.0, last_layers_contain_logits_only=True)
  assert training.gradient_multiplier('aspp1_pointwise/weights', head) == 4.0
  assert training.gradient_multiplier('decoder/decoder_conv0_pointwise/weights', head) == 4.0
  assert training.gradient_multiplier('aspp1_pointwise/weights', logits_only) == 1.0
  assert training.gradient_multiplier('MobilenetV2/Conv/weights', head) == 1.0


# ----------------------------------------------------------------------------- TensorBoard

def test_evaluation_summaries_are_read_by_tensorboard(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  from deeplab import evaluation
  result = {'miou': 0.5, 'pixel_accuracy': 0.75, 'per_class_iou': {'road': 0.25, 'sky': None}}
  sample = np.zeros((4, 12, 3), np.uint8)
  evaluation.write_summaries(result, [sample], str(tmp_path), global_step=7)
  board = event_accumulator.EventAccumulator(str(tmp_path))
  board.Reload()
  tags = board.Tags()
  assert sorted(tags['scalars']) == ['eval/iou/road', 'eval/miou', 'eval/pixel_accuracy']
  assert tags['images'] == ['eval/example_0']
  (miou,) = board.Scalars('eval/miou')
  assert (miou.step, miou.value) == (7, 0.5)
  (image,) = board.Images('eval/example_0')
  assert (image.height, image.width) == (4, 12)
