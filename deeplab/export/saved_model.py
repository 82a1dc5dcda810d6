"""The SavedModel writer (TensorFlow Serving and the servers built on it)."""
from __future__ import annotations

from deeplab.compat import tf
from deeplab.inference import (ENCODED_IMAGE_SIGNATURE, IMAGE_BYTES_INPUT, IMAGES_INPUT, INPUT_TENSOR,
                               PREDICTIONS_OUTPUT, PREDICTIONS_TENSOR, PROBABILITIES_OUTPUT,
                               PROBABILITIES_TENSOR, SERVING_SIGNATURE)


def write_saved_model(graph_def, export_dir: str) -> None:
  """Writes the frozen graph `graph_def` as a SavedModel in `export_dir` (which must not exist).

  One graph serves both signatures: `images` is a placeholder whose default is the decoded
  `image_bytes`, so feeding `images` never runs the decoder and the weights are stored once. The
  decoder is TensorFlow's (no EXIF rotation). The weights are constants, so there is no variables/
  folder; the same graph gives the same saved_model.pb bytes.
  """
  with tf.Graph().as_default() as graph:
    image_bytes = tf.compat.v1.placeholder(tf.string, [1], name=IMAGE_BYTES_INPUT)
    decoded = tf.io.decode_image(image_bytes[0], channels=3, dtype=tf.uint8, expand_animations=False)
    images = tf.compat.v1.placeholder_with_default(decoded[tf.newaxis], [1, None, None, 3],
                                                   name=IMAGES_INPUT)
    predictions, probabilities = tf.compat.v1.import_graph_def(
        graph_def, input_map={INPUT_TENSOR + ':0': images},
        return_elements=[PREDICTIONS_TENSOR + ':0', PROBABILITIES_TENSOR + ':0'], name='')
    tensor_info = tf.compat.v1.saved_model.utils.build_tensor_info
    outputs = {PREDICTIONS_OUTPUT: tensor_info(predictions),
               PROBABILITIES_OUTPUT: tensor_info(probabilities)}

    def signature(name, tensor):
      return tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
          {name: tensor_info(tensor)}, outputs,
          tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME)

    builder = tf.compat.v1.saved_model.Builder(export_dir)
    with tf.compat.v1.Session(graph=graph) as session:
      builder.add_meta_graph_and_variables(
          session, [tf.compat.v1.saved_model.tag_constants.SERVING],
          signature_def_map={SERVING_SIGNATURE: signature(IMAGES_INPUT, images),
                             ENCODED_IMAGE_SIGNATURE: signature(IMAGE_BYTES_INPUT, image_bytes)},
          strip_default_attrs=True)
    builder.save()


def write(job, path: str) -> None:
  write_saved_model(job.graph_def, path)
