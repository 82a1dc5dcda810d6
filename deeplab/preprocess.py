"""Image preprocessing that both the input pipeline and the model apply: resizing to the training
range, and the mean pixel that normalisation to [-1, 1] centres on.

It lives apart from `deeplab.input` so that the model (which resizes whole images to the training
range before predicting) does not depend on the tf.data pipeline.
"""
from deeplab.compat import tf

# Normalisation to [-1, 1] maps the mean pixel to 0, so training crops padded with it pad with 0.
MEAN_PIXEL = 127.5


def resize_to_range(image, min_size=0, max_size=0, method='bilinear'):
  """Resizes [H, W, C] so the short side is >= min_size and the long side <= max_size.

  0 disables a bound; with both 0 the image is returned unchanged. Sizes are floored, as the
  original DeepLab does. `method` is 'bilinear' for images and 'nearest' for labels.
  """
  if not min_size and not max_size:
    return image
  size = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.constant(1.0)
  if min_size:
    scale = float(min_size) / tf.reduce_min(size)
  if max_size:
    scale = tf.minimum(scale, float(max_size) / tf.reduce_max(size))
  new_size = tf.maximum(tf.cast(tf.floor(size * scale), tf.int32), 1)
  return resize(image, new_size, method)


def resize(image, size, method):
  """[H, W, C] -> [size[0], size[1], C] with aligned corners, 'bilinear' or 'nearest' (labels)."""
  if method == 'nearest':
    return tf.compat.v1.image.resize_nearest_neighbor(image[tf.newaxis], size, align_corners=True)[0]
  return tf.compat.v1.image.resize_bilinear(image[tf.newaxis], size, align_corners=True)[0]
