"""Units that had no test of their own: learning-rate schedules, training augmentation, overlays."""
import math

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from deeplab import input as model_input
from deeplab import schedules, visualize
from deeplab.colormaps import colorize
from deeplab.compat import tf
from deeplab.config import OVERLAY_FORMATS, ModelConfig, TrainConfig


def _rates(config, steps):
  with tf.Graph().as_default():
    step = tf.compat.v1.placeholder(tf.int64, [])
    rate = schedules.learning_rate(step, config)
    with tf.compat.v1.Session() as session:
      return [float(session.run(rate, {step: s})) for s in steps]


def test_poly_schedule_by_hand():
  config = TrainConfig(base_learning_rate=0.01, end_learning_rate=0.001, learning_power=0.9,
                       training_number_of_steps=100)
  expected = [(0.01 - 0.001) * (1 - min(s / 100, 1)) ** 0.9 + 0.001 for s in (0, 50, 100, 150)]
  assert _rates(config, [0, 50, 100, 150]) == pytest.approx(expected, rel=1e-6)


def test_step_schedule_and_slow_start_by_hand():
  config = TrainConfig(learning_policy='step', base_learning_rate=0.1, learning_rate_decay_step=10,
                       learning_rate_decay_factor=0.5, slow_start_step=3,
                       slow_start_learning_rate=0.001)
  assert _rates(config, [0, 2, 3, 9, 10, 25]) == pytest.approx(
      [0.001, 0.001, 0.1, 0.1, 0.05, 0.025], rel=1e-6)


def test_cosine_schedule_starts_after_the_slow_start():
  config = TrainConfig(learning_policy='cosine', base_learning_rate=0.1,
                       training_number_of_steps=110, slow_start_step=10,
                       slow_start_learning_rate=0.001)
  # Decay over 110 - 10 = 100 steps, counted from step 10.
  expected = [0.001, 0.001, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi * 0.25)), 0.05, 0.0, 0.0]
  assert _rates(config, [0, 9, 10, 35, 60, 110, 200]) == pytest.approx(expected, abs=1e-7)


def _preprocess(image, label, model_config, train_config, ignore_label=255, seed=0):
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(seed)
    example = {'image': tf.constant(image), 'label': tf.constant(label[:, :, None]),
               'name': tf.constant('x')}
    out = model_input.train_preprocess(example, model_config, train_config, ignore_label)
    with tf.compat.v1.Session() as session:
      return session.run(out)


def test_a_small_image_is_padded_with_the_mean_pixel_and_the_ignore_label():
  image = np.full((3, 4, 3), 255, np.uint8)
  label = np.ones((3, 4), np.uint8)
  train_config = TrainConfig(train_crop_size=(6, 7), min_scale_factor=1, max_scale_factor=1)
  normalized, labels = _preprocess(image, label, ModelConfig(), train_config)
  assert normalized.shape == (6, 7, 3) and labels.shape == (6, 7)
  image_pixels = labels == 1
  assert image_pixels.sum() == 12  # the whole image is inside the crop, maybe flipped
  assert np.all(normalized[image_pixels] == 1.0)  # 255 -> 1 in [-1, 1]
  assert np.all(normalized[~image_pixels] == 0.0) and np.all(labels[~image_pixels] == 255)


def test_random_scale_draws_from_the_steps_between_min_and_max():
  image = np.zeros((40, 40, 3), np.float32)
  label = np.zeros((40, 40, 1), np.uint8)
  sizes = set()
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(1)
    scaled, _ = model_input.random_scale(tf.constant(image), tf.constant(label), 0.5, 1.5, 0.5)
    with tf.compat.v1.Session() as session:
      for _ in range(40):
        sizes.add(session.run(tf.shape(scaled))[0])
  assert sizes == {20, 40, 60}


def test_the_label_is_resized_with_its_image_to_the_model_range_by_nearest_neighbour():
  image = np.zeros((20, 40, 3), np.uint8)
  label = np.tile(np.arange(40, dtype=np.uint8) // 10, (20, 1))  # four vertical bands: 0..3
  model_config = ModelConfig(min_resize_value=10, max_resize_value=10)
  train_config = TrainConfig(train_crop_size=(5, 10), min_scale_factor=1, max_scale_factor=1)
  _, labels = _preprocess(image, label, model_config, train_config)
  assert set(np.unique(labels)) == {0, 1, 2, 3}  # nearest: no blended values between bands
  row = labels[0].tolist()
  assert row in (sorted(row), sorted(row, reverse=True))  # the bands keep their order (or flip)
  assert all(labels[r].tolist() == row for r in range(5))


def test_overlay_blends_the_colormap_at_alpha(tmp_path):
  image = np.full((2, 2, 3), 100, np.uint8)
  labels = np.array([[0, 1], [1, 0]])
  colormap = [[0, 0, 0], [200, 0, 50]]
  blended = visualize.overlay(image, labels, colormap, alpha=0.25)
  assert blended[0, 1].tolist() == [125, 75, 88]  # 0.75 * 100 + 0.25 * (200, 0, 50), rounded
  assert blended[0, 0].tolist() == [75, 75, 75]
  visualize.save_label_png(labels, tmp_path / 'l.png')
  visualize.save_label_png(np.array([[300, 0]]), tmp_path / 'wide.png')
  assert np.asarray(Image.open(tmp_path / 'l.png')).tolist() == labels.tolist()
  assert Image.open(tmp_path / 'l.png').mode == 'L'
  assert np.asarray(Image.open(tmp_path / 'wide.png')).tolist() == [[300, 0]]


@pytest.mark.parametrize('alpha', [0.0, 0.3, 0.5, 1.0])
def test_overlay_is_the_pixelwise_blend_and_its_png_is_lossless(tmp_path, alpha):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
  labels = rng.integers(-1, 300, (37, 53)).astype(np.int32)  # ids without a colour included
  colormap = rng.integers(0, 256, (21, 3)).tolist()
  blended = visualize.overlay(image, labels, colormap, alpha)
  pixelwise = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(labels, colormap)
  np.testing.assert_array_equal(blended, np.clip(np.round(pixelwise), 0, 255).astype(np.uint8))
  visualize.write_overlay(blended, tmp_path / 'overlay.png', 'png')
  with Image.open(tmp_path / 'overlay.png') as png:
    assert png.format == 'PNG' and png.mode == 'RGB'
    np.testing.assert_array_equal(np.asarray(png), blended)


def test_jpeg_overlays_keep_colour_at_full_resolution(tmp_path):
  assert sorted(visualize.OVERLAY_SUFFIXES) == sorted(visualize.OVERLAY_MEDIA_TYPES) == sorted(
      OVERLAY_FORMATS)
  image = np.full((32, 32, 3), 120, np.uint8)
  labels = np.zeros((32, 32), np.int32)
  labels[:, 15:] = 1  # an edge between chroma blocks' pixels: 4:2:0 would blend its colours
  blended = visualize.overlay(image, labels, [[0, 0, 0], [255, 0, 0]], alpha=0.5)
  visualize.write_overlay(blended, tmp_path / 'overlay.jpg', 'jpeg')
  with Image.open(tmp_path / 'overlay.jpg') as jpeg:
    assert jpeg.format == 'JPEG' and JpegImagePlugin.get_sampling(jpeg) == 0  # 4:4:4
    decoded = np.asarray(jpeg).astype(int)
  assert np.abs(decoded - blended).max() <= 12
  assert decoded[:, 14, 0].max() < 80 and decoded[:, 15, 0].min() > 160  # the edge stays sharp
  with pytest.raises(ValueError, match='gif'):
    visualize.write_overlay(blended, tmp_path / 'overlay.gif', 'gif')
