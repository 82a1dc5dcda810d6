"""Segmentation loss: per-pixel softmax cross-entropy that ignores the ignore label."""
from deeplab.compat import tf
from deeplab.model import resize_bilinear


def softmax_cross_entropy(logits, labels, num_classes, ignore_label, scope='semantic_loss'):
  """Mean cross-entropy over the pixels whose label is a class.

  Args:
    logits: float32 [N, h, w, C] at feature resolution; upsampled (bilinear, aligned corners) to
      the label size first, as DeepLab's `upsample_logits` does.
    labels: int32 [N, H, W]; `ignore_label` pixels (and any value >= num_classes) weigh 0.
  Returns:
    A scalar loss, also added to tf.compat.v1.GraphKeys.LOSSES.
  """
  with tf.name_scope(scope):
    logits = resize_bilinear(logits, tf.shape(labels)[1:3])
    valid = tf.logical_and(tf.not_equal(labels, ignore_label), labels < num_classes)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    return tf.compat.v1.losses.sparse_softmax_cross_entropy(
        safe_labels, logits, weights=tf.cast(valid, tf.float32),
        reduction=tf.compat.v1.losses.Reduction.SUM_BY_NONZERO_WEIGHTS)
