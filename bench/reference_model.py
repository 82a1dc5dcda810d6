"""The model the inference benches run: DeepLabv3 MobileNetV2 (depth multiplier 0.5, output stride
8), the configuration of Google's deeplabv3.tflite. With the shared fixture present its weights are
Google's (so the TFLite file Google ships is a contender on the same weights); without it, the same
network with random weights (latency does not depend on the values).
"""
import os
from typing import Optional, Tuple

from tests.conftest import FIXTURES
from tests.reference_model import TFLITE_CONFIG, write_reference_checkpoint

GOOGLE_TFLITE = FIXTURES / 'reference_models' / 'tflite_support' / 'deeplabv3.tflite'
GOOGLE_TFLITE_SIZE = (257, 257)
PHOTOS = FIXTURES / 'photos'


def google_tflite() -> Optional[str]:
  """The path of Google's deeplabv3.tflite, or None (with the reason printed) when absent."""
  if GOOGLE_TFLITE.exists():
    return str(GOOGLE_TFLITE)
  print(f'skipping Google\'s TFLite contender: {GOOGLE_TFLITE} is absent', flush=True)
  return None


def write_checkpoint(folder: str) -> Tuple[object, str]:
  """(ModelConfig, checkpoint prefix) of the benchmarked model, written into `folder`."""
  from deeplab import model
  from deeplab.compat import tf
  from deeplab.config import ModelConfig
  config = ModelConfig(**TFLITE_CONFIG)
  prefix = os.path.join(folder, 'model.ckpt')
  if GOOGLE_TFLITE.exists():
    write_reference_checkpoint(str(GOOGLE_TFLITE), prefix)
    return config, prefix
  with tf.Graph().as_default():
    model.logits(tf.compat.v1.placeholder(tf.float32, [1, *GOOGLE_TFLITE_SIZE, 3]), config)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      tf.compat.v1.train.Saver().save(session, prefix, write_meta_graph=False)
  return config, prefix


def photos(size, count: int):
  """`count` uint8 RGB images [H, W, 3] of `size` (height, width): the demo photos of the shared
  fixtures, resized, when present; else smooth random images."""
  import numpy as np
  from PIL import Image
  paths = sorted(PHOTOS.glob('image*.jpg')) if PHOTOS.exists() else []
  rng = np.random.default_rng(0)
  images = []
  for index in range(count):
    if paths:
      image = Image.open(paths[index % len(paths)]).convert('RGB')
    else:
      image = Image.fromarray(rng.integers(0, 255, (size[0] // 16 + 1, size[1] // 16 + 1, 3),
                                           dtype=np.uint8))
    images.append(np.asarray(image.resize((size[1], size[0]), Image.BILINEAR)))
  return images
