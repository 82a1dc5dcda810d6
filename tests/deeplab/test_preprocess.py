"""Preprocessing shared by the input pipeline and the model: resizing to the training range."""
import numpy as np
import pytest

from deeplab.compat import tf
from deeplab.preprocess import resize_to_range


@pytest.mark.parametrize('min_size, max_size, expected', [
    (40, 0, [40, 60]),    # the short side grows to 40 (33 * 40 / 33, floor(50 * 40 / 33))
    (0, 30, [19, 30]),    # the long side shrinks to 30
    (40, 60, [39, 60]),   # both bounds: the long side wins
    (0, 0, [33, 50])])    # no bounds: unchanged
def test_resize_to_range_bounds_the_sides(min_size, max_size, expected):
  labels = np.arange(33 * 50, dtype=np.int32).reshape([33, 50, 1]) % 7
  with tf.Graph().as_default():
    image = resize_to_range(tf.zeros([33, 50, 3]), min_size, max_size)
    label = resize_to_range(tf.constant(labels), min_size, max_size, method='nearest')
    with tf.compat.v1.Session() as session:
      image_value, label_value = session.run([image, label])
  assert list(image_value.shape) == expected + [3]
  assert list(label_value.shape) == expected + [1]
  assert set(np.unique(label_value)) <= set(range(7))  # nearest neighbour: no new label values
