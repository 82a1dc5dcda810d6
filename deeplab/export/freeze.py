"""The inference graph of a checkpoint with its variables turned into constants.

Inside the graph: resize to the model's range, predict (optionally multi-scale / flipped), resize
back. It is `model.predict_labels`, the function evaluate uses, with the variables frozen in.
"""
from __future__ import annotations

from deeplab import checkpoint, model
from deeplab.compat import tf
from deeplab.config import ExportConfig, ModelConfig
from deeplab.export.rewrites import lean_inference_graph
from deeplab.inference import INPUT_TENSOR, PREDICTIONS_TENSOR, PROBABILITIES_TENSOR


def frozen_graph_def(build_outputs, checkpoint_prefix: str):
  """The GraphDef of the graph `build_outputs()` builds (it returns the output tensors), with the
  variables restored from `checkpoint_prefix` and turned into constants."""
  with tf.Graph().as_default() as graph:
    outputs = build_outputs()
    with tf.compat.v1.Session(graph=graph) as session:
      checkpoint.restore(session, tf.compat.v1.train.Saver(), checkpoint_prefix)
      return tf.compat.v1.graph_util.convert_variables_to_constants(
          session, graph.as_graph_def(), [tensor.op.name for tensor in outputs])


def freeze(config: ModelConfig, checkpoint_prefix: str, export_config: ExportConfig,
           lean: bool = True):
  """Returns the frozen GraphDef of the inference graph of `checkpoint_prefix`, made lean for
  inference (`lean_inference_graph`) unless lean=False (as built: to compare against)."""
  def build_outputs():
    images = tf.compat.v1.placeholder(tf.uint8, [1, None, None, 3], name=INPUT_TENSOR)
    predictions, probabilities = model.predict_labels(
        images, config, export_config.inference_scales, export_config.add_flipped_images,
        export_config.export_crop_size)
    return (tf.identity(predictions, name=PREDICTIONS_TENSOR),
            tf.identity(probabilities, name=PROBABILITIES_TENSOR))

  graph_def = frozen_graph_def(build_outputs, checkpoint_prefix)
  return lean_inference_graph(graph_def) if lean else graph_def
