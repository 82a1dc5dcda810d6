"""Benchmark: training images/s of replicated training and of bfloat16, in one process.

    python -m bench.distributed [--variant=mobilenet_v2] [--crop=257] [--batch=4] [--steps=5] [--rounds=2]

Three training graphs of the same step on one fixed in-memory batch (no input pipeline): float32 on
one device; float32 mirrored over two logical CPU devices (the same cores: this measures the
replication's overhead, so expect a ratio near 1, not a speed-up); bfloat16 on one device (fast on
CPUs with AVX512-BF16 or AMX). They run alternately, `rounds` times, so machine noise hits all; the
JSON line has the median of each and the ratios to float32 on one device.
"""
import argparse
import json
import os
import statistics
import time

import numpy as np

CONFIGURATIONS = {  # name: (devices, precision)
    'float32': (['/cpu:0'], 'float32'),
    'float32_2_replicas': (['/cpu:0', '/cpu:1'], 'float32'),
    'bfloat16': (['/cpu:0'], 'bfloat16'),
}


class _Training:
  """One configuration's training graph and session."""

  def __init__(self, devices, precision, args):
    from deeplab import distribute, training
    from deeplab.compat import tf
    from deeplab.config import ModelConfig, TrainConfig
    rng = np.random.RandomState(0)
    images = rng.uniform(-1, 1, (args.batch, args.crop, args.crop, 3)).astype(np.float32)
    labels = rng.randint(0, 21, (args.batch, args.crop, args.crop)).astype(np.int32)
    self.graph = tf.Graph()
    with self.graph.as_default():
      ops = training.build_train_graph(
          ModelConfig(num_classes=21, model_variant=args.variant),
          TrainConfig(train_batch_size=args.batch, train_crop_size=(args.crop, args.crop),
                      precision=precision),
          tf.constant(images), tf.constant(labels), 255,
          strategy=distribute.strategy_for(devices, None))
      self.train_op = ops['train_op']
      self.session = tf.compat.v1.Session(config=distribute.session_config(devices))
      self.session.run(tf.compat.v1.global_variables_initializer())

  def images_per_sec(self, steps, batch):
    self.session.run(self.train_op)  # warm-up of this round
    started = time.perf_counter()
    for _ in range(steps):
      self.session.run(self.train_op)
    return steps * batch / (time.perf_counter() - started)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variant', default='mobilenet_v2')
  parser.add_argument('--crop', type=int, default=257)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--rounds', type=int, default=2)
  args = parser.parse_args()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  trainings = {name: _Training(devices, precision, args)
               for name, (devices, precision) in CONFIGURATIONS.items()}
  rates = {name: [] for name in trainings}
  for _ in range(args.rounds):
    for name, training in trainings.items():
      rates[name].append(training.images_per_sec(args.steps, args.batch))
  medians = {name: statistics.median(values) for name, values in rates.items()}
  print(json.dumps({
      'benchmark': 'distributed', 'variant': args.variant, 'crop': args.crop, 'batch': args.batch,
      **{f'{name}_images_per_sec': round(rate, 2) for name, rate in medians.items()},
      **{f'{name}_ratio': round(rate / medians['float32'], 3)
         for name, rate in medians.items() if name != 'float32'}}), flush=True)


if __name__ == '__main__':
  main()
