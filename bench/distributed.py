"""Benchmark: training images/s replicated over two devices and in bfloat16, against float32 on
one device, in the same run.

    python -m bench.distributed [--rounds=3] [--train_steps=3] [--crop=257] [--batch=4]

The step is `deeplab.training.build_train_graph` on one fixed in-memory batch (no input pipeline),
for MobileNetV2 (the demo's, depth multiplier 0.5) and ResNet-50 DeepLabv3 (bench/train_resnet.py).
Contenders: float32 on one device (the baseline); float32 mirrored over two logical CPU devices
with synchronised batch norm (the same two cores: this measures the replication's overhead, so
expect a ratio near 1 at best, not a speed-up); bfloat16 compute on one device (variables stay
float32; fast on CPUs with AVX512-BF16 or AMX, as this one has). Two replicas are measured on
MobileNetV2 only: their ResNet-50 graph takes minutes to build on two cores.
"""
import time

from bench import harness
from bench.train_resnet import build_train_step

VARIANTS = ('mobilenet_v2', 'resnet_v1_50_beta')
CONTENDERS = {  # name: (devices, precision)
    'float32': (['/cpu:0'], 'float32'),
    'float32_2_replicas': (['/cpu:0', '/cpu:1'], 'float32'),
    'bfloat16': (['/cpu:0'], 'bfloat16'),
}


def _images_per_sec(session, train_op, steps, batch):
  started = time.perf_counter()
  for _ in range(steps):
    session.run(train_op)
  return steps * batch / (time.perf_counter() - started)


def _contender(variant, devices, precision, args):
  """A function measuring images/s of one configuration (its graph built and warmed up)."""
  from deeplab import distribute
  from deeplab.compat import tf
  graph = tf.Graph()
  with graph.as_default():
    ops, _ = build_train_step(variant, args.crop, args.batch, precision,
                              distribute.strategy_for(devices, None))
    session = tf.compat.v1.Session(config=distribute.session_config(devices))
    session.run(tf.compat.v1.global_variables_initializer())
    session.run(ops['step'])  # kernel set-up and Grappler's rewrite: not part of a step
  return lambda: _images_per_sec(session, ops['step'], args.train_steps, args.batch)


def measure(args):
  measurements = []
  for variant in VARIANTS:
    contenders = {name: _contender(variant, devices, precision, args)
                  for name, (devices, precision) in CONTENDERS.items()
                  if len(devices) == 1 or variant == 'mobilenet_v2'}
    measurements.append(harness.Measurement(
        f'train_{variant}_{args.crop}', 'images/s', 'float32',
        harness.interleave(contenders, args.rounds),
        target='2 replicas on the same 2 cores ~1 x float32 (overhead only); bfloat16 measured'))
  return measurements


def add_arguments(parser):
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--train_steps', type=int, default=3)
  parser.add_argument('--crop', type=int, default=257)
  parser.add_argument('--batch', type=int, default=4)


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
