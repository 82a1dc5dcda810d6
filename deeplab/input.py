"""tf.data input pipelines and preprocessing.

Training: decode -> resize to range -> random scale -> pad (mean pixel / ignore label) to the crop
size -> random crop -> random left-right flip -> [-1, 1]. Evaluation: whole images, one at a time,
at their own size (the model resizes inside `model.predict_labels`).

Images are padded with the mean pixel 127.5, which is 0 after normalisation; labels with the
ignore label, so padding never counts in the loss.
"""
import re

from deeplab.compat import tf
from deeplab.config import ModelConfig, TrainConfig
from deeplab.datasets import tfrecord
from deeplab.preprocess import MEAN_PIXEL, resize, resize_to_range

# The text of the assertion that a label has its image's size, and how to read the failure back.
LABEL_SIZE_MISMATCH = 'label size differs from image size in example'
_MISMATCH_RE = re.compile(re.escape(LABEL_SIZE_MISMATCH) +
                          r'\] \[(?P<name>.*?)\] \[(?P<image>[\d ]+)\] \[(?P<label>[\d ]+)\]')


def parse_example(serialized):
  """A serialized example in the original DeepLab format -> dict of decoded tensors.

  Returns: image uint8 [H, W, 3], label uint8 [H, W, 1], name string scalar.
  """
  features = tf.io.parse_single_example(serialized, {
      tfrecord.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
      tfrecord.IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=''),
      tfrecord.LABEL_ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=''),
  })
  image = tf.io.decode_image(features[tfrecord.IMAGE_ENCODED], channels=3, expand_animations=False)
  label = tf.io.decode_image(features[tfrecord.LABEL_ENCODED], channels=1, expand_animations=False)
  image.set_shape([None, None, 3])
  label.set_shape([None, None, 1])
  return {'image': image, 'label': label, 'name': features[tfrecord.IMAGE_FILENAME]}


def random_scale(image, label, min_scale, max_scale, step_size):
  """Scales image (bilinear) and label (nearest) by one random factor.

  With step_size > 0 the factor is drawn from min_scale, min_scale + step_size, ..., max_scale.
  """
  if min_scale == max_scale == 1.0:
    return image, label
  if step_size > 0:
    count = int(round((max_scale - min_scale) / step_size)) + 1
    factors = tf.linspace(float(min_scale), float(max_scale), count)
    scale = tf.gather(factors, tf.random.uniform([], 0, count, dtype=tf.int32))
  else:
    scale = tf.random.uniform([], min_scale, max_scale)
  size = tf.cast(tf.cast(tf.shape(image)[:2], tf.float32) * scale, tf.int32)
  return resize(image, size, 'bilinear'), resize(label, size, 'nearest')


def pad_and_random_crop(image, label, crop_size, ignore_label):
  """Pads to at least crop_size (bottom/right) and crops a random crop_size window from both."""
  crop_height, crop_width = crop_size
  shape = tf.shape(image)
  target_height = tf.maximum(shape[0], crop_height)
  target_width = tf.maximum(shape[1], crop_width)
  pad = [[0, target_height - shape[0]], [0, target_width - shape[1]], [0, 0]]
  image = tf.pad(image - MEAN_PIXEL, pad) + MEAN_PIXEL
  label = tf.pad(tf.cast(label, tf.int32) - ignore_label, pad) + ignore_label
  stacked = tf.concat([image, tf.cast(label, tf.float32)], axis=2)
  cropped = tf.image.random_crop(stacked, [crop_height, crop_width, 4])
  return cropped[:, :, :3], tf.cast(cropped[:, :, 3:], tf.int32)


def assert_label_fits_image(example):
  """The example's label, after asserting it has the image's height and width.

  A label of another size (e.g. from shards made by other tools) is an error naming the example;
  it is never stretched to fit. `describe_assertion` turns the failure into one line.
  """
  image_size, label_size = tf.shape(example['image'])[:2], tf.shape(example['label'])[:2]
  check = tf.debugging.Assert(tf.reduce_all(tf.equal(image_size, label_size)),
                              [LABEL_SIZE_MISMATCH, example['name'], image_size, label_size])
  with tf.control_dependencies([check]):
    return tf.identity(example['label'])


def describe_assertion(message: str) -> str:
  """One line for a failed `assert_label_fits_image`, from TensorFlow's error message."""
  match = _MISMATCH_RE.search(message)
  if not match:
    return message.strip().splitlines()[0]
  image_hw, label_hw = (match.group(k).split() for k in ('image', 'label'))
  return (f'example {match.group("name")!r}: its label is {"x".join(label_hw)} but its image is '
          f'{"x".join(image_hw)} (height x width); expected the same size (labels are never stretched)')


def train_preprocess(example, model_config: ModelConfig, train_config: TrainConfig, ignore_label):
  """One decoded example -> (float32 [h, w, 3] in [-1, 1], int32 [h, w] labels),
  (h, w) = train_crop_size: resize to the model's range, random scale, pad, crop, flip."""
  crop_size = train_config.train_crop_size
  image = tf.cast(example['image'], tf.float32)
  label = assert_label_fits_image(example)
  image = resize_to_range(image, model_config.min_resize_value, model_config.max_resize_value)
  label = resize_to_range(label, model_config.min_resize_value, model_config.max_resize_value,
                          method='nearest')
  image, label = random_scale(image, label, train_config.min_scale_factor,
                              train_config.max_scale_factor, train_config.scale_factor_step_size)
  image, label = pad_and_random_crop(image, label, crop_size, ignore_label)
  flip = tf.random.uniform([]) < 0.5
  image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
  label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
  image.set_shape([crop_size[0], crop_size[1], 3])
  label.set_shape([crop_size[0], crop_size[1], 1])
  return image / MEAN_PIXEL - 1.0, label[:, :, 0]


def out_of_range_pixels(label, num_classes: int, ignore_label: int):
  """int32 scalar: the pixels of `label` that are neither a class id (< num_classes) nor the
  ignore label. The loss gives them weight 0; training counts them so that a dataset.json whose
  class count does not fit its labels is seen (see `train_dataset`)."""
  label = tf.cast(label, tf.int32)
  # tf.not_equal, not `!=`: in graph mode `!=` compares the tensor objects, not their values.
  outside = tf.logical_and(label >= num_classes, tf.not_equal(label, ignore_label))
  return tf.reduce_sum(tf.cast(outside, tf.int32))


def train_dataset(shard_paths, model_config: ModelConfig, train_config: TrainConfig, ignore_label):
  """Endless shuffled, augmented batches: (images [B, h, w, 3] float32, labels [B, h, w] int32,
  out_of_range [B] int32), B = train_batch_size, (h, w) = train_crop_size; images resized to the
  model's range first. out_of_range counts each example's label pixels outside the classes
  (`out_of_range_pixels`, over its whole label): counted here, in the parallel input pipeline,
  it costs the training step nothing."""
  autotune = tf.data.AUTOTUNE
  seed = train_config.seed
  files = tf.data.Dataset.from_tensor_slices(list(shard_paths)).shuffle(len(shard_paths), seed=seed)
  dataset = files.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(shard_paths)),
                             num_parallel_calls=autotune)
  dataset = dataset.shuffle(256, seed=seed).repeat()
  # One map for decoding and augmentation (fewer dataset stages, less per-element overhead), in
  # whatever order the parallel calls finish: training order is not reproducible bit for bit anyway.
  def preprocess(serialized):
    example = parse_example(serialized)
    image, label = train_preprocess(example, model_config, train_config, ignore_label)
    return image, label, out_of_range_pixels(example['label'], model_config.num_classes,
                                             ignore_label)

  dataset = dataset.map(preprocess, num_parallel_calls=autotune, deterministic=False)
  return dataset.batch(train_config.train_batch_size, drop_remainder=True).prefetch(autotune)


def eval_dataset(shard_paths):
  """Whole examples in file order, one at a time (any size): dicts of image, label, name."""
  dataset = tf.data.TFRecordDataset(list(shard_paths))
  return dataset.map(parse_example, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
