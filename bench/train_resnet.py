"""Benchmark: the ResNet-50 DeepLabv3 training step in GFLOP/s against this machine's float32
matmul peak measured in the same run, with native dilated convolutions and without.

    python -m bench.train_resnet [--rounds=5] [--train_steps=1] [--crop=257] [--batch=4]
                                 [--pytorch_images_per_sec=N]

The step is `deeplab.training.build_train_graph` on resnet_v1_50_beta (output stride 16, block4's
multi-grid 1,2,4 at rates 2/4/8, ASPP plain 3x3 branches at rates 6/12/18, batch norm trained) on
a fixed in-memory batch. Its FLOPs: TensorFlow's profiler counts the forward pass of the dilated
form (convolutions, matmuls, element-wise ops of static shape); the backward pass costs twice the forward (a gradient
for the inputs and one for the weights per layer), so a step is 3 x forward. The peak is
tf.linalg.matmul of two 2048 x 2048 float32 matrices, the kernel TensorFlow runs fastest.
Contenders, interleaved: the step as the trainer builds it (atrous layers as dilated Conv2D where
the runtime trains them, deeplab/nets/layers.py) in TensorFlow's default session and in one
intra-op pool over every core with ops run one at a time; and the same step in the space-to-batch
form every atrous layer had before (SpaceToBatchND -> Conv2D -> BatchToSpaceND, forward and
backward). oneDNN is on by default on x86 (TF_ENABLE_ONEDNN_OPTS), as the log line at start-up says.

Targets, each judged met or missed: the step >= 50% of the matmul peak; on a CPU with AVX-512, no
slower than the space-to-batch form (>= 1.0); on AVX2, within 2x of PyTorch, judged when
--pytorch_images_per_sec gives PyTorch's figure for the same model on this machine (PyTorch is no
dependency of this project: measure it in an environment of its own). The CPU's name and vector
extensions are printed; ONEDNN_MAX_CPU_ISA=AVX2 in the environment limits oneDNN's kernels to
what an AVX2-only CPU runs, and the AVX2 target then applies. A traced step of each form splits the kernel time by op type: the
convolution kernels' share, and so the fraction of the peak they reach alone (the ceiling of the
step if every other op were free), and the share of SpaceToBatchND / BatchToSpaceND.
"""
import collections
import contextlib
import json
import os
import re
import statistics
import time
from unittest import mock

import numpy as np

from bench import harness

MATMUL_SIZE = 2048
NUM_CLASSES = 21
# Flags of /proc/cpuinfo that name vector extensions the kernels may use.
VECTOR_EXTENSIONS = re.compile(r'^(sse4_2|avx.*|fma|amx.*)$')


def onednn_isa_limit() -> str:
  """The instruction set oneDNN (TensorFlow's x86 kernels) is limited to by ONEDNN_MAX_CPU_ISA,
  upper case, or '' (the CPU's best). ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 CPU runs the kernels
  an AVX2-only CPU would."""
  return os.environ.get('ONEDNN_MAX_CPU_ISA', '').upper()


def kernels_use_avx512() -> bool:
  """Whether the CPU has AVX-512 and oneDNN may use it."""
  limit = onednn_isa_limit()
  return 'avx512f' in cpu_description()[1] and (not limit or limit.startswith(('AVX512', 'AMX'))
                                                or limit == 'ALL')


def cpu_description():
  """(the CPU's model name, its vector extensions in /proc/cpuinfo's order); ('unknown', ())
  where /proc/cpuinfo is absent."""
  try:
    with open('/proc/cpuinfo') as cpuinfo:
      fields = dict(line.split(':', 1) for line in cpuinfo if ':' in line)
  except OSError:
    return 'unknown', ()
  name = fields.get('model name\t', 'unknown').strip()
  flags = fields.get('flags\t\t', fields.get('flags\t', '')).split()
  return name, tuple(flag for flag in flags if VECTOR_EXTENSIONS.match(flag))


def model_config(model_variant):
  """DeepLabv3 as the model zoo trains it: ResNet at output stride 16 with ASPP 6/12/18, or the
  demo's MobileNetV2."""
  from deeplab.config import ModelConfig
  if model_variant == 'mobilenet_v2':
    return ModelConfig(num_classes=NUM_CLASSES, depth_multiplier=0.5)
  return ModelConfig(model_variant=model_variant, num_classes=NUM_CLASSES, output_stride=16,
                     atrous_rates=(6, 12, 18), aspp_with_separable_conv=False)


def build_train_step(model_variant, crop, batch, precision='float32', strategy=None,
                     space_to_batch=False):
  """(train ops, forward FLOPs) of one training step on a fixed random batch, built in the
  default graph (replicated by `strategy`, a tf.distribute strategy, when given). With
  `space_to_batch`, atrous layers keep the space-to-batch form, as if the runtime had no dilated
  kernels."""
  from deeplab import model, training
  from deeplab.compat import tf
  from deeplab.config import TrainConfig
  from deeplab.nets import layers
  config = model_config(model_variant)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(-1, 1, (batch, crop, crop, 3)).astype(np.float32))
  labels = tf.constant(rng.integers(0, NUM_CLASSES, (batch, crop, crop)).astype(np.int32))
  # The model's FLOPs are those of its dilated form (k x k taps per output pixel, as a plain
  # convolution): the space-to-batch form computes more, as its blocks pad each side to a
  # multiple of the rate (at 257x257, 17x17 features at rate 12 become 24x24 outputs).
  with tf.Graph().as_default() as forward_graph, \
       mock.patch.object(layers, 'conv2d_trains_dilated', lambda *_: True), \
       layers.native_dilations():
    model.logits(tf.zeros([batch, crop, crop, 3]), config, training=TrainConfig())
    options = tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    forward_flops = tf.compat.v1.profiler.profile(forward_graph, options=options).total_float_ops
  train_config = TrainConfig(train_batch_size=batch, train_crop_size=(crop, crop),
                             precision=precision)
  with (mock.patch.object(layers, 'conv2d_trains_dilated', lambda *_: False) if space_to_batch
        else contextlib.nullcontext()):
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
SPACE_TO_BATCH_OPS = ('SpaceToBatchND', 'BatchToSpaceND')


def _share(seconds, matches):
  return sum(t for op, t in seconds.items() if matches(op)) / sum(seconds.values())


def measure(args):
  from deeplab.compat import tf
  cpu, extensions = cpu_description()
  avx512 = kernels_use_avx512()
  print(json.dumps({'benchmark': 'train_resnet', 'cpu': cpu,
                    'vector_extensions': ' '.join(extensions),
                    'onednn_isa_limit': onednn_isa_limit() or 'none'}), flush=True)
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
  seconds = {}
  for form in ('dilated', 'space_to_batch'):
    with tf.Graph().as_default():
      ops, forward_flops = build_train_step('resnet_v1_50_beta', args.crop, args.batch,
                                            space_to_batch=form == 'space_to_batch')
      names = (SESSION_SETTINGS if form == 'dilated' else
               {'train_step_space_to_batch': SESSION_SETTINGS['train_step_default']})
      for name, settings in names.items():
        session = _warm(_session(settings), ops['step'])
        contenders[name] = (lambda session=session, ops=ops: _gflops(
            session, ops['step'], 3 * forward_flops, args.train_steps))
      # Where the time goes, traced with one op at a time, so that kernel times add up to the
      # step instead of overlapping.
      with _warm(_session(SESSION_SETTINGS['train_step_one_op_pool']), ops['step']) as traced:
        seconds[form] = _seconds_by_op_type(traced, ops['step'])
  values = harness.interleave(contenders, args.rounds)
  for form, by_type in seconds.items():
    total = sum(by_type.values())
    print(json.dumps({'benchmark': 'train_resnet', 'traced_step': form,
                      'kernel_seconds': round(total, 3),
                      'share_by_op_type': {op: round(t / total, 3)
                                           for op, t in by_type.most_common(8)}}), flush=True)
  model = f'ResNet-50 DeepLabv3 {args.crop}x{args.crop} batch {args.batch}'
  peak = harness.Measurement(
      'train_resnet', 'GFLOP/s', 'matmul_peak',
      {name: values[name] for name in ('matmul_peak', *SESSION_SETTINGS)},
      target=f'{model}: train_step_default >= 0.5 x matmul')
  # Nearly every FLOP of the step is a convolution's, so the convolutions alone run at the step's
  # fraction of the peak divided by their share of the time (the trace's share; tracing slows
  # every kernel alike, the interleaved rounds give the rate).
  convolution_share = _share(seconds['dilated'], CONVOLUTION_KERNELS.search)
  step_fraction = statistics.median(peak.ratios('train_step_one_op_pool'))
  images_per_sec = (statistics.median(values['train_step_default']) * 1e9 /
                    (3 * forward_flops) * args.batch)
  peak.notes = {'train_step_gflop': 3 * forward_flops / 1e9,
                'train_step_images_per_sec': images_per_sec,
                'convolution_share_of_kernel_time': convolution_share,
                'convolution_kernels_vs_matmul_peak': step_fraction / convolution_share}
  dilation = harness.Measurement(
      'train_resnet_atrous', 'GFLOP/s', 'train_step_space_to_batch',
      {name: values[name] for name in ('train_step_space_to_batch', 'train_step_default')},
      target=f'{model}, AVX-512: dilated >= 1.0 x space-to-batch',
      notes={'space_to_batch_share_of_kernel_time':
                 _share(seconds['space_to_batch'], lambda op: op in SPACE_TO_BATCH_OPS),
             'kernel_seconds_space_to_batch_over_dilated':
                 sum(seconds['space_to_batch'].values()) / sum(seconds['dilated'].values())})
  measurements = [harness.judged(peak, 'train_step_default', 0.5),
                  harness.judged(dilation, 'train_step_default', 1.0, applies=avx512)]
  if args.pytorch_images_per_sec:
    # Not interleaved (PyTorch runs elsewhere): the figure is compared with this run's median.
    within = images_per_sec >= 0.5 * args.pytorch_images_per_sec
    verdict = ('met' if within else 'missed') if not avx512 else 'not this CPU\'s target'
    print(f'train_resnet: {images_per_sec:.2f} images/s against PyTorch\'s '
          f'{args.pytorch_images_per_sec:.2f} (given): '
          f'{images_per_sec / args.pytorch_images_per_sec:.2f} x, AVX2 target >= 0.5: {verdict}',
          flush=True)
  return measurements


def add_arguments(parser):
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--train_steps', type=int, default=1)
  parser.add_argument('--crop', type=int, default=257)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--pytorch_images_per_sec', type=float, default=0.0,
                      help='PyTorch images/s of the same step on this machine, measured apart')


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
