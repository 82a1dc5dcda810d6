"""What a training step costs beyond its train op (deeplab/training.py STEP_FETCHES, LOG_FETCHES):
the guards computed on every step are the loss and counts the step has anyway; the gradient norm
and the regularization sum only on log steps. Their speed is measured by bench/train_step.py;
these tests hold the structure and the divergence guard between log steps.
"""
import os

import numpy as np
import pytest

from deeplab import training
from deeplab.compat import tf
from deeplab.config import ModelConfig, TrainConfig
from tests.conftest import TINY_TRAIN_FLAGS, assert_one_error_line, run_step


def _kernel_types(session, fetches):
  """{node name: op type} of the kernels one traced run of `fetches` executes."""
  metadata = tf.compat.v1.RunMetadata()
  session.run(fetches, options=tf.compat.v1.RunOptions(
      trace_level=tf.compat.v1.RunOptions.FULL_TRACE), run_metadata=metadata)
  return {node.node_name: node.timeline_label.split('= ')[-1].split('(')[0]
          for device in metadata.step_stats.dev_stats for node in device.node_stats}


@pytest.mark.heavy
def test_only_log_steps_pay_for_the_gradient_norm_and_the_regularization():
  random = np.random.default_rng(0)
  labels = random.integers(0, 5, [2, 33, 33])
  with tf.Graph().as_default():
    ops = training.build_train_graph(
        ModelConfig(num_classes=3, depth_multiplier=0.25),
        TrainConfig(train_batch_size=2, train_crop_size=(33, 33)),
        tf.constant(random.uniform(-1, 1, [2, 33, 33, 3]), tf.float32),
        tf.constant(labels, tf.int32), ignore_label=255)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      bare = _kernel_types(session, ops['step'])
      every_step = _kernel_types(session, {name: ops[name] for name in training.STEP_FETCHES})
      log_step = _kernel_types(session, {name: ops[name] for name in
                                         training.STEP_FETCHES + training.LOG_FETCHES})
      counted = session.run(ops['out_of_range_label_pixels'])
  # One L2Loss per gradient for the norm, one per regularized weight: log steps only.
  assert 'L2Loss' not in {bare[name] for name in bare}
  assert 'L2Loss' not in {every_step[name] for name in set(every_step) - set(bare)}
  assert sum(kind == 'L2Loss' for kind in log_step.values()) > 50
  # Beyond the train op, a step that does not log runs a handful of scalar kernels.
  assert len(set(every_step) - set(bare)) < 20
  # Labels 3 and 4 are outside the 3 classes: counted from the batch when no pipeline counts.
  assert counted == np.count_nonzero(labels >= 3) > 0


@pytest.mark.heavy
def test_divergence_between_log_steps_stops_training_before_a_non_finite_checkpoint(
    tmp_path, tiny_tfrecords):
  """Log steps far apart: the loss checked on every step still stops a diverging run, and no
  checkpoint saved on the way holds a non-finite weight."""
  out = tmp_path / 'checkpoint.tar.gz'
  result = run_step('train', f'--tfrecords={tiny_tfrecords}', f'--output={out}',
                    '--training_number_of_steps=30', *TINY_TRAIN_FLAGS, '--log_steps=1000',
                    '--base_learning_rate=1e6', '--save_interval_steps=1',
                    f'--train_logdir={tmp_path / "logs"}', check=False)
  error = assert_one_error_line(result, 'training diverged at step',
                                'try a lower --base_learning_rate (now 1e+06)')
  assert int(error.split('at step ')[1].split()[0]) < 30
  assert not out.exists()
  assert not [m for m in result.metrics if 'step' in m]  # no log step was reached
  for dirpath, _, names in os.walk(tmp_path / 'logs'):
    for name in names:
      if name.endswith('.index'):
        reader = tf.train.load_checkpoint(os.path.join(dirpath, name[:-len('.index')]))
        for variable in reader.get_variable_to_shape_map():
          value = np.asarray(reader.get_tensor(variable))
          if np.issubdtype(value.dtype, np.floating):
            assert np.isfinite(value).all(), f'{name}: {variable} is not finite'
