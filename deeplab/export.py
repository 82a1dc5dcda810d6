"""The exporter: checkpoint -> frozen inference graph, like the model-zoo graphs.

    ImageTensor:0            uint8 [1, H, W, 3], any H and W
    SemanticPredictions:0    int32 [1, H, W]     class ids
    SemanticProbabilities:0  float32 [1, H, W, num_classes]

Inside the graph: resize to the model's range, predict (optionally multi-scale / flipped), resize
back. It is `model.predict_labels`, the function evaluate uses, with the variables frozen in.
"""
from __future__ import annotations

from deeplab import checkpoint, model
from deeplab.compat import tf
from deeplab.config import ExportConfig, ModelConfig

INPUT_TENSOR = 'ImageTensor'
PREDICTIONS_TENSOR = 'SemanticPredictions'
PROBABILITIES_TENSOR = 'SemanticProbabilities'
FROZEN_GRAPH = 'frozen_inference_graph.pb'


def freeze(config: ModelConfig, checkpoint_prefix: str, export_config: ExportConfig):
  """Returns the frozen GraphDef of the inference graph of `checkpoint_prefix`."""
  with tf.Graph().as_default() as graph:
    images = tf.compat.v1.placeholder(tf.uint8, [1, None, None, 3], name=INPUT_TENSOR)
    predictions, probabilities = model.predict_labels(
        images, config, export_config.inference_scales, export_config.add_flipped_images,
        export_config.export_crop_size)
    tf.identity(predictions, name=PREDICTIONS_TENSOR)
    tf.identity(probabilities, name=PROBABILITIES_TENSOR)
    with tf.compat.v1.Session(graph=graph) as session:
      checkpoint.restore(session, tf.compat.v1.train.Saver(), checkpoint_prefix)
      return tf.compat.v1.graph_util.convert_variables_to_constants(
          session, graph.as_graph_def(), [PREDICTIONS_TENSOR, PROBABILITIES_TENSOR])


def write_frozen_graph(graph_def, path: str) -> None:
  # Deterministic: protobuf map fields (node attributes) are otherwise written in hash order, and
  # the same checkpoint must give the same model.tar.gz bytes.
  with open(path, 'wb') as f:
    f.write(graph_def.SerializeToString(deterministic=True))


class FrozenModel:
  """A loaded frozen graph: `predict(image uint8 [H, W, 3])` -> labels int32 [H, W]."""

  def __init__(self, path: str):
    graph_def = tf.compat.v1.GraphDef()
    with open(path, 'rb') as f:
      graph_def.ParseFromString(f.read())
    self.graph = tf.Graph()
    with self.graph.as_default():
      tf.compat.v1.import_graph_def(graph_def, name='')
    self.session = tf.compat.v1.Session(graph=self.graph)
    self._labels = self.graph.get_tensor_by_name(PREDICTIONS_TENSOR + ':0')
    self._input = self.graph.get_tensor_by_name(INPUT_TENSOR + ':0')

  def predict(self, image):
    """Labels int32 [H, W] of one image; the [H, W, C] probabilities are not fetched (they are
    H x W x C floats: hundreds of MB for a large photo)."""
    return self.session.run(self._labels, {self._input: image[None]})[0]

  def close(self):
    self.session.close()
