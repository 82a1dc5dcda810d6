"""Training graphs convolve atrous layers with native dilated Conv2D ops where the runtime trains
them (deeplab/nets/layers.py `native_dilations`): the same variables, checkpoints and numbers as
the space-to-batch form that inference graphs keep.

A ResNet-18 at output stride 8 (block3 at rate 2, block4 at rate 4, both of its 3x3 convs
dilated) with plain 3x3 ASPP branches at rates 2 and 3, on a tiny batch.
"""
from unittest import mock

import numpy as np
import pytest

from deeplab import model, training
from deeplab.compat import tf
from deeplab.config import ModelConfig, TrainConfig
from deeplab.nets import layers

# Every test here builds, freezes, trains or converts whole networks (`make test`, not test-fast).
pytestmark = pytest.mark.heavy

CROP, BATCH, CLASSES = 33, 2, 3
# Dropout off: its random mask depends on how many ops a graph made before it.
MODEL = ModelConfig(model_variant='resnet_v1_18', num_classes=CLASSES, output_stride=8,
                    atrous_rates=(2, 3), aspp_with_separable_conv=False, dropout_keep_prob=1.0)
TRAIN = TrainConfig(train_batch_size=BATCH, train_crop_size=(CROP, CROP), base_learning_rate=0.01,
                    training_number_of_steps=2)
# Dilation rates the model's atrous convolutions have: block3, block4 (x multi-grid 1, 1), ASPP.
RATES = {2, 4, 3}


def _needs_native_kernels():
  if not layers.conv2d_trains_dilated('float32'):
    pytest.skip('this runtime has no dilated Conv2D gradients that agree with space-to-batch '
                '(TensorFlow without oneDNN): training keeps the space-to-batch form')


def _training_graph(native: bool):
  """(graph, ops) of a training step on a fixed batch, with native dilations or without."""
  random = np.random.default_rng(0)
  graph = tf.Graph()
  with graph.as_default(), mock.patch.object(layers, 'conv2d_trains_dilated',
                                             lambda *_: native):
    images = tf.constant(random.uniform(-1, 1, [BATCH, CROP, CROP, 3]), tf.float32)
    labels = tf.constant(random.integers(0, CLASSES, [BATCH, CROP, CROP]), tf.int32)
    ops = training.build_train_graph(MODEL, TRAIN, images, labels, ignore_label=255)
  return graph, ops


def _dilated_conv_rates(graph):
  return {op.get_attr('dilations')[1] for op in graph.get_operations()
          if op.type.startswith('Conv2D') and op.get_attr('dilations')[1] > 1}


def _op_types(graph):
  return {op.type for op in graph.get_operations()}


def test_training_graph_dilates_natively_with_the_same_variables():
  _needs_native_kernels()
  native_graph, _ = _training_graph(native=True)
  space_to_batch_graph, _ = _training_graph(native=False)
  # Forward and both gradients of every atrous layer are single dilated ops.
  assert 'SpaceToBatchND' not in _op_types(native_graph)
  assert {'Conv2D', 'Conv2DBackpropInput', 'Conv2DBackpropFilter'} <= _op_types(native_graph)
  assert _dilated_conv_rates(native_graph) == RATES
  assert 'SpaceToBatchND' in _op_types(space_to_batch_graph)
  assert _dilated_conv_rates(space_to_batch_graph) == set()

  def variables(graph):
    return [(v.op.name, v.shape.as_list()) for v in graph.get_collection('variables')]

  def regularized(graph):
    return [loss.op.name for loss in graph.get_collection('regularization_losses')]

  assert variables(native_graph) == variables(space_to_batch_graph)
  assert regularized(native_graph) == regularized(space_to_batch_graph)


def test_native_dilations_train_like_space_to_batch(tmp_path):
  """Same start (a checkpoint of one graph restored into the other), same losses, gradient norms,
  weights and batch norm statistics after two steps, within float32 tolerance."""
  _needs_native_kernels()
  prefix = str(tmp_path / 'start.ckpt')
  results = {}
  for native in (False, True):
    graph, ops = _training_graph(native)
    with graph.as_default(), tf.compat.v1.Session() as session:
      saver = tf.compat.v1.train.Saver()
      if native:
        saver.restore(session, prefix)
      else:
        session.run(tf.compat.v1.global_variables_initializer())
        saver.save(session, prefix, write_meta_graph=False)
      logged = [session.run({name: ops[name] for name in
                             ('step', 'loss', 'total_loss', 'gradient_norm')})
                for _ in range(TRAIN.training_number_of_steps)]
      weights = session.run({v.op.name: v for v in tf.compat.v1.global_variables()})  # one run
    results[native] = logged, weights
  (space_to_batch_steps, space_to_batch_weights), (native_steps, native_weights) = \
      results[False], results[True]
  for expected, actual in zip(space_to_batch_steps, native_steps):
    assert actual['step'] == expected['step']
    # float32 sums in another order (oneDNN picks its algorithm per run and thread count): losses
    # a few 1e-4 apart after several steps, gradient norms up to 1.2e-3 (measured with another
    # test process on the same cores); a wrong dilation is off by far more.
    for name, rel in (('loss', 1e-3), ('total_loss', 1e-3), ('gradient_norm', 5e-3)):
      assert actual[name] == pytest.approx(expected[name], rel=rel), name
  assert native_weights.keys() == space_to_batch_weights.keys()
  moved = 0
  for name, expected in space_to_batch_weights.items():
    if name.endswith('/Momentum'):
      # Accumulated gradients: each element a sum with cancellations, so one element is no measure
      # (conv1's measured 1.7% apart with another test process on the cores); the tensor is, as a
      # whole: a wrong dilation moves it by about its own size.
      error = np.linalg.norm(native_weights[name] - expected) / max(np.linalg.norm(expected), 1e-12)
      assert error < 5e-2, (name, error)
      continue
    np.testing.assert_allclose(native_weights[name], expected, rtol=1e-4,
                               atol=1e-5 * max(1.0, float(np.abs(expected).max())), err_msg=name)
    moved += name.endswith('/weights') and '/block4/' in name
  assert moved  # the dilated block's weights are among those compared


def test_inference_graphs_keep_the_space_to_batch_form():
  """Outside a training graph nothing changes: export, evaluate and the TFLite converter get the
  form every runtime runs (the exporter dilates where the runtime can, at load time)."""
  with tf.Graph().as_default() as graph:
    model.logits(tf.compat.v1.placeholder(tf.float32, [1, CROP, CROP, 3]), MODEL)
  assert 'SpaceToBatchND' in _op_types(graph)
  assert _dilated_conv_rates(graph) == set()


def _atrous_layer(native: bool, rate: int):
  """(graph, variable names) of one atrous_conv2d built within native_dilations, the probe's
  answer being `native`."""
  with tf.Graph().as_default() as graph, \
       mock.patch.object(layers, 'conv2d_trains_dilated', lambda *_: native), \
       layers.native_dilations(tf.float32):
    layers.atrous_conv2d(tf.compat.v1.placeholder(tf.float32, [1, 9, 9, 2]), 4, 3, rate,
                         scope='atrous')
  return graph, [v.op.name for v in graph.get_collection('variables')]


@pytest.mark.parametrize('native', [True, False])
def test_atrous_conv2d_follows_the_probe(native):
  """Where the probe says no (TensorFlow's own CPU kernels refuse a dilated input gradient;
  oneDNN's dilated depthwise gradients run and are wrong) the layer keeps space-to-batch."""
  graph, names = _atrous_layer(native, rate=2)
  assert ('SpaceToBatchND' in _op_types(graph)) != native
  assert _dilated_conv_rates(graph) == ({2} if native else set())
  assert names == ['atrous/weights', 'atrous/biases'] == _atrous_layer(native, rate=1)[1]
  undilated, _ = _atrous_layer(native, rate=1)
  assert 'SpaceToBatchND' not in _op_types(undilated) and not _dilated_conv_rates(undilated)
