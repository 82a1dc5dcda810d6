"""The lean inference graph (rewrites.lean_inference_graph), and as FrozenGraphPredictor loads it
(rewrites.dilated_for_this_runtime), gives the labels of the graph as built."""
import collections
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deeplab import inference
from deeplab.export import freeze, frozen_graph, rewrites
from deeplab.compat import tf
from deeplab.config import ExportConfig, ModelConfig
from tests.conftest import REPO

# Every test here builds, freezes, trains or converts whole networks (`make test`, not test-fast).
pytestmark = pytest.mark.heavy

# Every folding case: plain and depthwise convolutions, atrous depthwise (SpaceToBatchND ->
# depthwise -> BatchToSpaceND -> batch norm) in the backbone at output stride 8 and in the ASPP,
# and the decoder.
TINY = ModelConfig(num_classes=4, depth_multiplier=0.25, output_stride=8, atrous_rates=(2, 4),
                   decoder_output_stride=4)


def _tiny_checkpoint(folder, config, far_from_identity=True, seed=0):
  """A random checkpoint, the same for the same seed. Its batch norms far from the identity
  (random gamma, beta and moving statistics), so that a wrong fold changes the probabilities (the
  labels are then nearly one class whatever the image: every ReLU6 saturates); else as
  initialised (the identity), which leaves the labels following the image."""
  from deeplab import model
  prefix = str(folder / 'model.ckpt')
  rng = np.random.default_rng(seed)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(seed)
    model.logits(tf.compat.v1.placeholder(tf.float32, [1, 65, 65, 3]), config)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      values = {}
      for variable in tf.compat.v1.global_variables() if far_from_identity else ():
        name, shape = variable.op.name, variable.shape.as_list()
        if name.endswith(('/gamma', '/moving_variance')):
          values[variable] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif name.endswith(('/beta', '/moving_mean')):
          values[variable] = rng.normal(0.0, 0.5, shape).astype(np.float32)
      if values:  # one run, not one per variable (a run costs more than these tiny assignments)
        session.run([variable.assign(value) for variable, value in values.items()])
      tf.compat.v1.train.Saver().save(session, prefix, write_meta_graph=False)
  return prefix


def _run(graph_def, image):
  """(labels, probabilities) of a frozen graph for one image."""
  with tf.Graph().as_default() as graph:
    tf.compat.v1.import_graph_def(graph_def, name='')
    with tf.compat.v1.Session(graph=graph) as session:
      labels, probabilities = session.run(
          [inference.PREDICTIONS_TENSOR + ':0', inference.PROBABILITIES_TENSOR + ':0'],
          {inference.INPUT_TENSOR + ':0': image[np.newaxis]})
  return labels[0], probabilities[0]


def _ops(graph_def):
  return collections.Counter(node.op for node in graph_def.node)


def _as_loaded(graph_def):
  """The graph as FrozenGraphPredictor runs it (rewrites.dilated_for_this_runtime): on a TensorFlow whose
  convolution kernels take dilations (oneDNN, as here), without any space-to-batch."""
  loaded = rewrites.dilated_for_this_runtime(graph_def)
  if all(map(rewrites.takes_dilations, ('Conv2D', 'DepthwiseConv2dNative'))):
    assert not {'SpaceToBatchND', 'BatchToSpaceND'} & set(_ops(loaded))
  return loaded


def _images(sizes, seed=1):
  rng = np.random.default_rng(seed)
  return [np.asarray(Image.fromarray(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8))
                     .resize((w, h), Image.BILINEAR)) for h, w in sizes]


# The image pooling branch folded into concat_projection's bias (what `_fold_image_pooling` does
# to each scale and flip), and where it must not be: a plain 3x3 ASPP (atrous Conv2D, no
# decoder), and an image pooling over windows (not one vector per image).
PLAIN_ASPP = dataclasses.replace(TINY, aspp_with_separable_conv=False, decoder_output_stride=0)
WINDOWED_POOLING = dataclasses.replace(TINY, image_pooling_crop_size=(33, 33),
                                       image_pooling_stride=(2, 2))


def _pooling_broadcasts(graph_def):
  """The ResizeBilinear nodes that read the image pooling branch."""
  return [node for node in graph_def.node
          if node.op == 'ResizeBilinear' and 'image_pooling' in node.input[0]]


@pytest.mark.parametrize('config, export_config, folded', [
    (TINY, ExportConfig(), True),
    (TINY, ExportConfig(inference_scales=(0.75, 1.0), add_flipped_images=True), True),
    (PLAIN_ASPP, ExportConfig(), True),
    (WINDOWED_POOLING, ExportConfig(), False),
], ids=['single_scale', 'multi_scale_flipped', 'plain_aspp', 'windowed_pooling'])
def test_the_lean_graph_gives_the_labels_of_the_graph_as_built(tmp_path, config, export_config,
                                                               folded):
  prefix = _tiny_checkpoint(tmp_path, config)
  built = freeze.freeze(config, prefix, export_config, lean=False)
  lean = freeze.freeze(config, prefix, export_config)
  assert _ops(built)['FusedBatchNormV3'] > 20
  assert not any(op.startswith('FusedBatchNorm') for op in _ops(lean))
  assert _ops(lean)['SpaceToBatchND'] > 5  # atrous convolutions: kept portable in the file
  # Their bias and activation run before the batch-to-space, where the runtime fuses them.
  nodes = {node.name: node for node in lean.node}
  assert {nodes[node.input[0]].op for node in lean.node if node.op == 'BatchToSpaceND'} <= \
      {'BiasAdd', 'Relu', 'Relu6'}
  variants = len(export_config.inference_scales) * (2 if export_config.add_flipped_images else 1)
  assert len(_pooling_broadcasts(built)) == variants
  assert len(_pooling_broadcasts(lean)) == (0 if folded else variants)
  loaded = _as_loaded(lean)
  for image in _images([(65, 65), (97, 130), (40, 71)]):
    built_labels, built_probabilities = _run(built, image)
    for graph_def in (lean, loaded):
      labels, probabilities = _run(graph_def, image)
      np.testing.assert_array_equal(labels, built_labels)
      np.testing.assert_allclose(probabilities, built_probabilities, atol=1e-5)


def test_single_scale_labels_skip_the_softmax_and_a_static_size_keeps_them(tmp_path):
  prefix = _tiny_checkpoint(tmp_path, TINY)
  built = freeze.freeze(TINY, prefix, ExportConfig(), lean=False)
  lean = rewrites.lean_inference_graph(built)
  nodes = {node.name: node for node in lean.node}
  argmax = nodes[nodes[inference.PREDICTIONS_TENSOR].input[0]]
  assert argmax.op == 'ArgMax' and nodes[argmax.input[0]].op == 'ResizeBilinear'
  static = rewrites.lean_inference_graph(built, (97, 130))
  image = _images([(97, 130)])[0]
  np.testing.assert_array_equal(_run(static, image)[0], _run(built, image)[0])
  with pytest.raises(ValueError):  # the static graph takes only its size
    _run(static, _images([(65, 65)])[0])


def test_google_weights_keep_the_golden_mask_and_the_photos_labels(tmp_path):
  from tests.reference_model import reference_checkpoint_and_photos
  config, prefix, photos, reference = reference_checkpoint_and_photos(tmp_path)
  built = freeze.freeze(config, prefix, ExportConfig(), lean=False)
  lean = freeze.freeze(config, prefix, ExportConfig())
  assert _ops(built)['FusedBatchNormV3'] == 54
  horse = np.asarray(
      Image.open(reference.parent / 'segmentation_input_rotation0.jpg').convert('RGB'))
  golden = np.asarray(Image.open(reference.parent / 'segmentation_golden_rotation0.png')) // 10
  for graph_def in (lean, _as_loaded(lean)):
    assert (_run(graph_def, horse)[0] == golden).mean() == 1.0
    for photo in photos:
      np.testing.assert_array_equal(_run(graph_def, photo)[0], _run(built, photo)[0])


@pytest.mark.process
def test_a_tensorflow_whose_depthwise_kernel_takes_no_dilations_runs_the_file_as_exported(
    tmp_path):
  """Without oneDNN TensorFlow's CPU kernel refuses dilated depthwise convolutions: FrozenGraphPredictor
  then runs the portable graph of the file, with the same labels."""
  prefix = _tiny_checkpoint(tmp_path, TINY)
  path = str(tmp_path / inference.FROZEN_GRAPH)
  frozen_graph.write_frozen_graph(freeze.freeze(TINY, prefix, ExportConfig()), path)
  image = _images([(97, 130)])[0]
  np.save(tmp_path / 'image.npy', image)
  script = ('import sys, numpy as np; from deeplab import inference; from deeplab.export import rewrites; '
            'print(rewrites.takes_dilations("DepthwiseConv2dNative")); '
            'np.save(sys.argv[3], inference.FrozenGraphPredictor(sys.argv[1]).predict(np.load(sys.argv[2])))')
  completed = subprocess.run(
      [sys.executable, '-c', script, path, str(tmp_path / 'image.npy'), str(tmp_path / 'labels.npy')],
      env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2',
               TF_ENABLE_ONEDNN_OPTS='0'),
      capture_output=True, text=True, check=True)
  assert completed.stdout.split()[-1] == 'False'
  model = inference.FrozenGraphPredictor(path)
  np.testing.assert_array_equal(np.load(tmp_path / 'labels.npy'), model.predict(image))
  model.close()
