"""Benchmark: peak resident memory of training MobileNetV2 and ResNet-50 at 513x513, batch 4.

    python -m bench.train_memory [--rounds=1] [--train_steps=1] [--crop=513] [--batch=4]

Each model trains `train_steps` steps (bench/train_resnet.py's step: the DeepLabv3 configuration, a
fixed in-memory batch, so the input pipeline is not counted) in a fresh process; its peak RSS
is its VmHWM (harness.peak_rss_mib). The first step allocates what every step needs, so one
step is enough. The baseline is the demo's MobileNetV2 (depth multiplier
0.5); the ratio says how much more ResNet-50 needs.
"""
import argparse
import statistics

from bench import harness
from bench.predict_memory import ENV

MODEL_VARIANTS = ('mobilenet_v2', 'resnet_v1_50_beta')


def train_in_this_process(model_variant, crop, batch, steps):
  """Runs `steps` training steps in this process (what the child does)."""
  from bench.train_resnet import build_train_step
  from deeplab.compat import tf
  ops, _ = build_train_step(model_variant, crop, batch)
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    for _ in range(steps):
      session.run(ops['step'])


def measure(args) -> harness.Measurement:
  seconds = {}

  def train_with(model_variant):
    def run():
      peak, took = harness.peak_rss_mib(
          'bench.train_memory', [f'--child={model_variant}', f'--train_steps={args.train_steps}',
                                 f'--crop={args.crop}', f'--batch={args.batch}'], ENV)
      seconds.setdefault(model_variant, []).append(took)
      return peak
    return run

  values = harness.interleave({name: train_with(name) for name in MODEL_VARIANTS}, args.rounds)
  return harness.Measurement(
      'train_memory', 'peak MiB', MODEL_VARIANTS[0], values, higher_is_better=False,
      target=f'{args.train_steps} steps at {args.crop}x{args.crop}, batch {args.batch}',
      notes={f'{name}_seconds': statistics.median(took) for name, took in seconds.items()})


def add_arguments(parser):
  parser.add_argument('--rounds', type=int, default=1)
  parser.add_argument('--train_steps', type=int, default=1)
  parser.add_argument('--crop', type=int, default=513)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--child', choices=MODEL_VARIANTS, help='train this model (internal)')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_arguments(parser)
  args = parser.parse_args()
  if args.child:
    train_in_this_process(args.child, args.crop, args.batch, args.train_steps)
  else:
    harness.report(measure(args))


if __name__ == '__main__':
  main()
