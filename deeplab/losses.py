"""Segmentation loss: per-pixel softmax cross-entropy that ignores the ignore label, with the
options of the original DeepLab train.py (class weights, hard pixel mining, loss at logits
resolution), and the class weights a dataset's label histogram gives."""
from typing import Optional, Sequence

import numpy as np

from deeplab.compat import tf
from deeplab.config import TrainConfig
from deeplab.errors import UserError
from deeplab.model import resize_bilinear

# Normalisers below this count as zero pixels (the loss is then 0), as in the original.
_MIN_PIXELS = 1e-5


def _mean_over(total, count):
  """total / count, and 0 where count is 0 (a batch of ignored pixels has no loss)."""
  return tf.cast(count > 0, tf.float32) * total / tf.maximum(_MIN_PIXELS, count)


def hard_pixel_count(num_pixels, top_k_percent_pixels: float, hard_example_mining_step: int,
                     global_step=None):
  """How many of `num_pixels` (a float32 scalar) the hard-pixel-mined loss keeps: int32.

  The share falls linearly from all pixels at step 0 to `top_k_percent_pixels` at
  `hard_example_mining_step` (at once when that is 0), and stays there.
  """
  share = top_k_percent_pixels
  if hard_example_mining_step:
    ramp = tf.minimum(1.0, tf.cast(global_step, tf.float32) / float(hard_example_mining_step))
    share = ramp * top_k_percent_pixels + (1.0 - ramp)
  return tf.cast(share * num_pixels, tf.int32)


def softmax_cross_entropy(logits, labels, num_classes, ignore_label, label_weights: Sequence = (),
                          upsample_logits: bool = True, top_k_percent_pixels: float = 1.0,
                          hard_example_mining_step: int = 0, global_step=None,
                          scope='semantic_loss'):
  """Cross-entropy of the labelled pixels, as the original DeepLab's training loss.

  Args:
    logits: float32 [N, h, w, C] at feature resolution.
    labels: int32 [N, H, W]; `ignore_label` pixels (and any value >= num_classes) weigh 0.
    label_weights: one weight per class (empty: all 1); a pixel's loss is multiplied by its
      class's weight. The mean is still over the labelled pixels (not over the weights), as the
      original normalises it.
    upsample_logits: True: logits are resized (bilinear, aligned corners) to the label size; False:
      labels are resized (nearest, aligned corners) to the logits size.
    top_k_percent_pixels: below 1, only the pixels with the largest weighted losses count (hard
      pixel mining): `hard_pixel_count` of all N*H*W pixels, ignored ones included; the loss is
      their sum over the number of them whose loss is not 0.
    hard_example_mining_step, global_step: the ramp of `hard_pixel_count`.
  Returns:
    A scalar loss, also added to tf.compat.v1.GraphKeys.LOSSES.
  """
  with tf.name_scope(scope):
    if upsample_logits:
      logits = resize_bilinear(logits, tf.shape(labels)[1:3])
    else:
      labels = tf.compat.v1.image.resize_nearest_neighbor(
          labels[..., tf.newaxis], tf.shape(logits)[1:3], align_corners=True)[..., 0]
    labels = tf.reshape(labels, [-1])
    logits = tf.reshape(logits, [-1, num_classes])
    valid = tf.logical_and(tf.not_equal(labels, ignore_label), labels < num_classes)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    weights = tf.cast(valid, tf.float32)
    if label_weights:
      weights *= tf.gather(tf.constant(label_weights, tf.float32), safe_labels)
    pixel_losses = weights * tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=safe_labels, logits=logits)
    if top_k_percent_pixels == 1.0:
      loss = _mean_over(tf.reduce_sum(pixel_losses), tf.reduce_sum(tf.cast(valid, tf.float32)))
    else:
      count = hard_pixel_count(tf.cast(tf.size(labels), tf.float32), top_k_percent_pixels,
                               hard_example_mining_step, global_step)
      hardest, _ = tf.nn.top_k(pixel_losses, k=count, sorted=True)
      loss = _mean_over(tf.reduce_sum(hardest),
                        tf.reduce_sum(tf.cast(tf.not_equal(hardest, 0.0), tf.float32)))
    tf.compat.v1.losses.add_loss(loss)
    return loss


def inverse_frequency_weights(label_histogram: Sequence[int], cap: float) -> tuple:
  """Class weights from pixel counts per class: (mean count / count), each at most `cap`.

  A class with the average frequency weighs 1, rarer classes more (up to `cap`, which also
  stands for a class with no pixels), commoner ones less.
  """
  counts = np.asarray(label_histogram, np.float64)
  weights = np.where(counts > 0, counts.mean() / np.maximum(counts, 1), cap)
  return tuple(float(w) for w in np.minimum(weights, cap))


def class_weights(train_config: TrainConfig, label_histogram: Optional[Sequence[int]], num_classes: int) -> tuple:
  """The per-class loss weights `train_config` asks for: its label_weights, or those its
  label_weight_rule computes from the training split's label histogram; () = all 1."""
  if train_config.label_weights:
    if len(train_config.label_weights) != num_classes:
      raise UserError(f'--label_weights: {len(train_config.label_weights)} weights for '
                      f'{num_classes} classes; expected one per class')
    return train_config.label_weights
  if train_config.label_weight_rule == 'inverse_frequency':
    if not label_histogram:
      raise UserError(f'--label_weight_rule=inverse_frequency: split '
                      f'{train_config.train_split!r} has no label histogram (TFRecords without '
                      'dataset.json); give --label_weights instead')
    return inverse_frequency_weights(label_histogram, train_config.label_weight_cap)
  return ()
