"""Benchmark: the ResNet-50 DeepLabv3 training step in GFLOP/s against this machine's float32
matmul peak, measured in the same run.

    python -m bench.train_resnet [--rounds=2] [--train_steps=1] [--crop=257] [--batch=4]

The step is `deeplab.training.build_train_graph` on resnet_v1_50_beta (output stride 16, ASPP rates
6/12/18, batch norm trained) on a fixed in-memory batch. Its FLOPs: TensorFlow's profiler counts
the forward pass (convolutions, matmuls, element-wise ops of static shape); the backward pass
costs twice the forward (a gradient for the inputs and one for the weights per layer), so a step
is 3 x forward. The peak is tf.linalg.matmul of two 2048 x 2048 float32 matrices, the kernel
TensorFlow runs fastest. Session settings tried: TensorFlow's defaults, and one intra-op pool over
every core with ops run one at a time (inter_op_parallelism_threads=1: no two ops split the cores).
oneDNN is on by default on x86 (TF_ENABLE_ONEDNN_OPTS), as the log line at start-up says.
Target: the step >= 50% of the matmul peak. One traced step says where the time goes: the
convolution kernels' share of it, and so the fraction of the peak those kernels reach alone, the
ceiling of the step if every other op were free.
"""
import collections
import os
import re
import statistics
import time

import numpy as np

from bench import harness

MATMUL_SIZE = 2048
NUM_CLASSES = 21


def model_config(model_variant):
  """DeepLabv3 as the model zoo trains it: ResNet at output stride 16 with ASPP 6/12/18, or the
  demo's MobileNetV2."""
  from deeplab.config import ModelConfig
  if model_variant == 'mobilenet_v2':
    return ModelConfig(num_classes=NUM_CLASSES, depth_multiplier=0.5)
  return ModelConfig(model_variant=model_variant, num_classes=NUM_CLASSES, output_stride=16,
                     atrous_rates=(6, 12, 18), aspp_with_separable_conv=False)


def build_train_step(model_variant, crop, batch, precision='float32', strategy=None):
  """(train ops, forward FLOPs) of one training step on a fixed random batch, built in the
  default graph (replicated by `strategy`, a tf.distribute strategy, when given)."""
  from deeplab import model, training
  from deeplab.compat import tf
  from deeplab.config import TrainConfig
  config = model_config(model_variant)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(-1, 1, (batch, crop, crop, 3)).astype(np.float32))
  labels = tf.constant(rng.integers(0, NUM_CLASSES, (batch, crop, crop)).astype(np.int32))
  with tf.Graph().as_default() as forward_graph:
    model.logits(tf.zeros([batch, crop, crop, 3]), config, training=TrainConfig())
    options = tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    forward_flops = tf.compat.v1.profiler.profile(forward_graph, options=options).total_float_ops
  train_config = TrainConfig(train_batch_size=batch, train_crop_size=(crop, crop),
                             precision=precision)
  ops = training.build_train_graph(config, train_config, images, labels, ignore_label=255,
                                   strategy=strategy)
  return ops, forward_flops


def _session(settings):
  from deeplab.compat import tf
  session = tf.compat.v1.Session(config=tf.compat.v1.ConfigProto(**settings))
  session.run(tf.compat.v1.global_variables_initializer())
  return session


def _warm(session, fetch):
  session.run(fetch)  # kernel set-up, Grappler's rewrite, memory pools: not part of a step
  return session


def _gflops(session, fetch, flops, repeats):
  """GFLOP/s of `repeats` runs of `fetch` (the session has run it once before)."""
  started = time.perf_counter()
  for _ in range(repeats):
    session.run(fetch)
  return flops * repeats / (time.perf_counter() - started) / 1e9


# oneDNN's convolution kernels of a training step (forward, input gradient, filter gradient).
CONVOLUTION_KERNELS = re.compile(r'Conv2D(BackpropInput|BackpropFilter)?$')


def _seconds_by_op_type(session, fetch):
  """Kernel seconds per op type of one traced run of `fetch` (ops that overlap both count)."""
  from deeplab.compat import tf
  metadata = tf.compat.v1.RunMetadata()
  session.run(fetch, options=tf.compat.v1.RunOptions(
      trace_level=tf.compat.v1.RunOptions.FULL_TRACE), run_metadata=metadata)
  seconds = collections.Counter()
  for device in metadata.step_stats.dev_stats:
    for node in device.node_stats:
      op_type = re.match(r'[^=]*= (\w+)', node.timeline_label)  # 'name = Type(inputs)'
      if op_type:
        seconds[op_type.group(1)] += (node.op_end_rel_micros - node.op_start_rel_micros) / 1e6
  return seconds


SESSION_SETTINGS = {
    'train_step_default': {},
    'train_step_one_op_pool': dict(intra_op_parallelism_threads=os.cpu_count(),
                                   inter_op_parallelism_threads=1),
}


def measure(args) -> harness.Measurement:
  from deeplab.compat import tf
  contenders = {}
  with tf.Graph().as_default():
    rng = np.random.default_rng(0)
    # Variables: Grappler would fold a product of constants before the first run.
    shape = (MATMUL_SIZE, MATMUL_SIZE)
    a, b = (tf.compat.v1.Variable(rng.standard_normal(shape).astype(np.float32)) for _ in range(2))
    # A reduction keeps the fetch small: the product itself would be copied out every run.
    product = tf.reduce_sum(tf.linalg.matmul(a, b))
    matmul_session = _warm(_session({}), product)
    contenders['matmul_peak'] = lambda: _gflops(matmul_session, product, 2 * MATMUL_SIZE ** 3, 10)
  with tf.Graph().as_default():
    ops, forward_flops = build_train_step('resnet_v1_50_beta', args.crop, args.batch)
    sessions = {name: _warm(_session(settings), ops['train_op'])
                for name, settings in SESSION_SETTINGS.items()}
    for name, session in sessions.items():
      contenders[name] = (lambda session=session: _gflops(
          session, ops['train_op'], 3 * forward_flops, args.train_steps))
    values = harness.interleave(contenders, args.rounds)
    # Where the step's time goes: if the convolution kernels alone run at a fraction f of the
    # matmul peak, the step cannot beat f whatever the ops around them cost. Traced with one op
    # at a time, so that kernel times add up to the step instead of overlapping.
    seconds = _seconds_by_op_type(sessions['train_step_one_op_pool'], ops['train_op'])
  convolution_share = (sum(t for op, t in seconds.items() if CONVOLUTION_KERNELS.search(op)) /
                       sum(seconds.values()))
  measurement = harness.Measurement(
      'train_resnet', 'GFLOP/s', 'matmul_peak', values,
      target=f'ResNet-50 DeepLabv3 {args.crop}x{args.crop} batch {args.batch}: >= 0.5 x matmul')
  # Nearly every FLOP of the step is a convolution's, so the convolutions alone run at the step's
  # fraction of the peak divided by their share of the time (the trace's share; tracing slows
  # every kernel alike, the interleaved rounds give the rate).
  step_fraction = statistics.median(measurement.ratios('train_step_one_op_pool'))
  measurement.notes = {'train_step_gflop': 3 * forward_flops / 1e9,
                       'convolution_share_of_kernel_time': convolution_share,
                       'convolution_kernels_vs_matmul_peak': step_fraction / convolution_share}
  return measurement


def add_arguments(parser):
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--train_steps', type=int, default=1)
  parser.add_argument('--crop', type=int, default=257)
  parser.add_argument('--batch', type=int, default=4)


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
