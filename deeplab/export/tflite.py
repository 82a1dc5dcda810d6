"""The TFLite writer: any input size (or a fixed one), uint8 RGB in (preprocessing inside), labels then
scores out (the frozen graph's computation); float32, or int8 with full-integer quantisation
calibrated on training images."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from deeplab import model
from deeplab.compat import tf
from deeplab.config import MAX_IMAGE_SIDE, TFLITE_QUANTIZATIONS, ExportConfig, ModelConfig
from deeplab.errors import UserError
from deeplab.export.freeze import frozen_graph_def
from deeplab.export.rewrites import lean_inference_graph, native_dilations
from deeplab.inference import (IMAGES_INPUT, LOGITS_OUTPUT, PREDICTIONS_OUTPUT,
                               PROBABILITIES_OUTPUT, resize_image)

# int8 calibration runs each image at its own size (a model of any input size), scaled down to at
# most this many pixels (aspect kept): the value ranges it measures do not depend on the size,
# its time does.
CALIBRATION_MAX_PIXELS = 513 * 513


def _logits_suffice(config: ModelConfig, options: ExportConfig) -> bool:
  """Whether the frozen graph's labels are the argmax of the logits resized to the image: at one
  scale, unflipped, uncropped, and without a resize range (the frozen graph resizes the
  probabilities back from the model's range, and the argmax of resized probabilities is not that
  of resized logits)."""
  return (tuple(options.inference_scales) == (1.0,) and not options.add_flipped_images
          and not options.export_crop_size
          and not (config.min_resize_value or config.max_resize_value))


def _labels_and_scores(images, config: ModelConfig, options: ExportConfig):
  """(labels int32 [1, H, W], scores float32 [1, H, W, num_classes]) of images float32
  [1, H, W, 3] in [0, 255]: what the frozen graph computes (`model.predict_labels` with the
  export's scales, flips and crop size). When the logits suffice (`_logits_suffice`) the scores
  are the logits resized to the image, without the softmax and its resizes; else the
  probabilities. A static size lets the converter fold the resizing arithmetic.
  """
  if not _logits_suffice(config, options):
    return model.predict_labels(images, config, options.inference_scales,
                                options.add_flipped_images, options.export_crop_size)
  size = images.shape[1:3].as_list() if images.shape[1:3].is_fully_defined() else \
      tf.shape(images)[1:3]
  logits = model.resize_bilinear(model.logits(model.preprocess(images), config), size)
  return tf.argmax(logits, axis=3, output_type=tf.int32), logits


def _calibration_samples(images: Iterable, size: Optional[Sequence[int]]):
  """float32 [1, H, W, 3] samples for the converter's calibration: each image resized to `size`,
  or with None (a model of any input size) at its own size, scaled down to at most
  CALIBRATION_MAX_PIXELS.

  The first sample gets one black and one white pixel: the calibrated input range is then exactly
  0..255, so the quantised uint8 input has scale 1 and zero point 0 and takes raw pixel values.
  """
  count = 0
  for image in images:
    image = np.asarray(image, np.uint8)
    target = size
    if target is None:
      height, width = image.shape[:2]
      scale = min(1.0, (CALIBRATION_MAX_PIXELS / (height * width)) ** 0.5)
      target = (max(1, int(height * scale)), max(1, int(width * scale)))
    sample = resize_image(image, target).astype(np.float32)
    if count == 0:
      sample[0, 0], sample[0, -1] = 0.0, 255.0
    count += 1
    yield [sample[np.newaxis]]
  if not count:
    raise UserError('int8 quantisation needs representative images; got none')


def write_tflite(config: ModelConfig, checkpoint_prefix: str, path: str,
                 input_size: Optional[Sequence[int]] = None, quantize: str = 'none',
                 representative_images: Optional[Iterable] = None,
                 options: ExportConfig = ExportConfig()) -> None:
  """Writes the TFLite model of `checkpoint_prefix`: for images of any size (input [1, -1, -1, 3]:
  the interpreter's input is resized to each image's size), or of `input_size` (height, width)
  only.

  Input uint8 RGB [1, H, W, 3] (preprocessing inside, as in the frozen graph); outputs in this order:
  labels int32 [1, H, W], then logits [1, H, W, num_classes] (`semantic_logits`), or with the
  inference scales, flips or crop size of `options` (the export's) or a resize range in `config`
  the probabilities (`semantic_probabilities`): the frozen graph's computation. The graph converted is its lean form
  (`lean_inference_graph`: batch norm and image pooling folded) with native dilated convolutions,
  which TFLite's kernels take (XNNPACK runs them on any input size; the converter's own rewrite
  of space-to-batch convolutions needs a static size). quantize='none' keeps float32 weights and
  scores; 'int8' quantises weights and activations to integers, calibrated on
  `representative_images` (uint8 [h, w, 3] each, any size: images like those the model will see,
  e.g. some of its training set), with int8 scores.
  """
  if quantize not in TFLITE_QUANTIZATIONS:
    raise UserError(f'quantize={quantize!r}: expected one of {TFLITE_QUANTIZATIONS}')
  shape = [1, None, None, 3]
  if input_size is not None:
    height, width = (int(v) for v in input_size)
    # Checked here too, not only by the flag's bounds: beyond them the converter can die of SIGSEGV.
    if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
      raise UserError(f'TFLite input size {height}x{width}: expected sides of 1..{MAX_IMAGE_SIDE} '
                      'pixels (--tflite_input_size)')
    shape = [1, height, width, 3]
  int8 = quantize == 'int8'

  outputs = (PREDICTIONS_OUTPUT,
             LOGITS_OUTPUT if _logits_suffice(config, options) else PROBABILITIES_OUTPUT)

  def build_outputs():
    # The int8 converter quantises a float input into uint8 itself; the float model casts in-graph.
    images = tf.compat.v1.placeholder(tf.float32 if int8 else tf.uint8, shape, name=IMAGES_INPUT)
    labels, scores = _labels_and_scores(tf.cast(images, tf.float32), config, options)
    return tuple(tf.identity(tensor, name=name) for tensor, name in zip((labels, scores), outputs))

  frozen = frozen_graph_def(build_outputs, checkpoint_prefix)
  graph_def = native_dilations(lean_inference_graph(frozen, outputs=outputs), outputs=outputs)
  # Converted from a graph of the frozen GraphDef alone: in the graph with variables, the
  # converter's optimiser looks for their initialisers and logs an error for each one.
  with tf.Graph().as_default() as graph:
    tf.compat.v1.import_graph_def(graph_def, name='')
    converter = tf.compat.v1.lite.TFLiteConverter(
        graph_def, [graph.get_tensor_by_name(IMAGES_INPUT + ':0')],
        [graph.get_tensor_by_name(name + ':0') for name in outputs])
    if int8:
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.representative_dataset = lambda: _calibration_samples(
          representative_images or (), input_size)
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
  write_tflite(job.card.model, job.checkpoint_prefix, path, options.tflite_input_size or None,
               options.tflite_quantize, calibration, options)
