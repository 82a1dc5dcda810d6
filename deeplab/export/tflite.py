"""The TFLite writer: a fixed input size, uint8 RGB in (preprocessing inside), labels then logits out;
float32, or int8 with full-integer quantisation calibrated on training images."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from deeplab import checkpoint, model
from deeplab.compat import tf
from deeplab.config import MAX_IMAGE_SIDE, TFLITE_QUANTIZATIONS, ModelConfig
from deeplab.errors import UserError
from deeplab.export.freeze import frozen_graph_def
from deeplab.inference import IMAGES_INPUT, LOGITS_OUTPUT, PREDICTIONS_OUTPUT, resize_image
from deeplab.preprocess import resize_to_range

DEFAULT_TFLITE_SIZE = (513, 513)  # the model zoo's evaluation crop


def default_tflite_size(card: checkpoint.ModelCard) -> Tuple[int, int]:
  """(height, width) for a TFLite export: the training crop size recorded in model.json (the size
  the network was trained at), else DEFAULT_TFLITE_SIZE."""
  return tuple(card.training.train_crop_size) if card.training else DEFAULT_TFLITE_SIZE


def _fixed_size_logits(images, config: ModelConfig, size):
  """Logits float32 [1, H, W, num_classes] of images float32 [1, H, W, 3] in [0, 255].

  `model.predict_labels` at one scale, unflipped, with the logits kept instead of their softmax
  (the argmax is the same); the static size lets the converter fold the resizing arithmetic.
  Without a resize range the images go in as they are (no slice and reshape of the input for
  the interpreter to run on every call).
  """
  if not (config.min_resize_value or config.max_resize_value):
    return model.resize_bilinear(model.logits(model.preprocess(images), config), size)
  resized = resize_to_range(images[0], config.min_resize_value, config.max_resize_value)[tf.newaxis]
  scores = model.resize_bilinear(model.logits(model.preprocess(resized), config),
                                 tf.shape(resized)[1:3])
  return model.resize_bilinear(scores, size)


def _calibration_samples(images: Iterable, size):
  """float32 [1, H, W, 3] samples for the converter's calibration, each image resized to `size`.

  The first sample gets one black and one white pixel: the calibrated input range is then exactly
  0..255, so the quantised uint8 input has scale 1 and zero point 0 and takes raw pixel values.
  """
  count = 0
  for image in images:
    sample = resize_image(np.asarray(image, np.uint8), size).astype(np.float32)
    if count == 0:
      sample[0, 0], sample[0, -1] = 0.0, 255.0
    count += 1
    yield [sample[np.newaxis]]
  if not count:
    raise UserError('int8 quantisation needs representative images; got none')


def write_tflite(config: ModelConfig, checkpoint_prefix: str, path: str,
                 input_size: Sequence[int] = DEFAULT_TFLITE_SIZE, quantize: str = 'none',
                 representative_images: Optional[Iterable] = None) -> None:
  """Writes the TFLite model of `checkpoint_prefix` for images of `input_size` (height, width).

  Input uint8 RGB [1, H, W, 3] (preprocessing inside, as in the frozen graph); outputs in this order:
  labels int32 [1, H, W], logits [1, H, W, num_classes]. Single scale and unflipped whatever the
  frozen graph was exported with. quantize='none' keeps float32 weights and logits; 'int8' quantises
  weights and activations to integers, calibrated on `representative_images` (uint8 [h, w, 3] each,
  any size: images like those the model will see, e.g. some of its training set), with int8 logits.
  """
  if quantize not in TFLITE_QUANTIZATIONS:
    raise UserError(f'quantize={quantize!r}: expected one of {TFLITE_QUANTIZATIONS}')
  height, width = (int(v) for v in input_size)
  # Checked here too, not only by the flag's bounds: beyond them the converter can die of SIGSEGV.
  if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
    raise UserError(f'TFLite input size {height}x{width}: expected sides of 1..{MAX_IMAGE_SIDE} '
                    'pixels (--tflite_input_size, else the training crop size in model.json)')
  int8 = quantize == 'int8'

  def build_outputs():
    # The int8 converter quantises a float input into uint8 itself; the float model casts in-graph.
    images = tf.compat.v1.placeholder(tf.float32 if int8 else tf.uint8, [1, height, width, 3],
                                      name=IMAGES_INPUT)
    logits = _fixed_size_logits(tf.cast(images, tf.float32), config, [height, width])
    return (tf.argmax(logits, axis=3, output_type=tf.int32, name=PREDICTIONS_OUTPUT),
            tf.identity(logits, name=LOGITS_OUTPUT))

  frozen = frozen_graph_def(build_outputs, checkpoint_prefix)
  # Converted from a graph of the frozen GraphDef alone: in the graph with variables, the
  # converter's optimiser looks for their initialisers and logs an error for each one.
  with tf.Graph().as_default() as graph:
    tf.compat.v1.import_graph_def(frozen, name='')
    converter = tf.compat.v1.lite.TFLiteConverter(
        frozen, [graph.get_tensor_by_name(IMAGES_INPUT + ':0')],
        [graph.get_tensor_by_name(name + ':0') for name in (PREDICTIONS_OUTPUT, LOGITS_OUTPUT)])
    if int8:
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.representative_dataset = lambda: _calibration_samples(
          representative_images or (), (height, width))
      converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
      converter.inference_input_type = tf.uint8
      converter.inference_output_type = tf.int8
    flatbuffer = converter.convert()
  with open(path, 'wb') as f:
    f.write(flatbuffer)


def write(job, path: str) -> None:
  options = job.options
  calibration = None
  if options.tflite_quantize != 'none':
    if job.calibration_images is None:
      raise UserError(f'--tflite_quantize={options.tflite_quantize} calibrates on training '
                      'images: pass --tfrecords')
    calibration = job.calibration_images()
  write_tflite(job.card.model, job.checkpoint_prefix, path,
               options.tflite_input_size or default_tflite_size(job.card),
               options.tflite_quantize, calibration)
