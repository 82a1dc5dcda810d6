"""Benchmark: training images/s with the real tf.data input pipeline vs. in-memory tensors.

    python -m bench.train_input [--steps=40] [--rounds=5] [--crop=129] [--batch=8]

Both graphs are the same training step (model, loss, optimizer); one reads the synthetic dataset's
TFRecords through `deeplab.input.train_dataset` (decode, resize, random scale, crop, flip), the
other is fed one fixed batch held in memory. They run interleaved, `rounds` times, in one process
(bench/harness.py), so machine noise hits both; the per-round ratio pipeline / in-memory is
reported as median [min, max]. The target is that the input pipeline costs under 10% (ratio >= 0.9).
"""
import os
import subprocess
import sys
import tempfile
import time

from bench import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def _make_tfrecords(folder):
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')
  raw, out = os.path.join(folder, 'raw'), os.path.join(folder, 'tfrecords')
  subprocess.run([sys.executable, '-m', 'deeplab.datasets.synthetic', '--layout=folder',
                  f'--output={raw}', '--seed=0'], check=True, env=env, capture_output=True)
  subprocess.run([sys.executable, '-m', 'steps.build_data', '--dataset=folder', f'--raw_data={raw}',
                  f'--output={out}.tar.gz', '--num_shards=2'], check=True, env=env,
                 capture_output=True)
  subprocess.run(['tar', 'xzf', f'{out}.tar.gz', '-C', folder], check=True)
  return folder

class _Session:
  """A built training graph and its session, timed per round."""

  def __init__(self, model_config, train_config, images, labels, ignore_label):
    from deeplab.compat import tf
    from deeplab import training
    self.ops = training.build_train_graph(model_config, train_config, images, labels, ignore_label)
    self.session = tf.compat.v1.Session()
    self.session.run(tf.compat.v1.global_variables_initializer())

  def images_per_sec(self, steps, batch):
    self.session.run(self.ops['step'])  # warm-up of this round
    started = time.perf_counter()
    for _ in range(steps):
      self.session.run(self.ops['step'])
    return steps * batch / (time.perf_counter() - started)

def measure(args) -> harness.Measurement:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from deeplab.compat import tf
  from deeplab import input as model_input
  from deeplab.config import ModelConfig, TrainConfig
  from deeplab.datasets.manifest import read_manifest

  with tempfile.TemporaryDirectory() as folder:
    manifest = read_manifest(_make_tfrecords(folder))
    model_config = ModelConfig(num_classes=manifest.num_classes, depth_multiplier=0.5)
    train_config = TrainConfig(train_batch_size=args.batch, train_crop_size=(args.crop, args.crop),
                               min_scale_factor=0.75, max_scale_factor=1.25)
    with tf.Graph().as_default():
      dataset = model_input.train_dataset(manifest.shard_paths('train'), model_config, train_config,
                                          manifest.ignore_label)
      images, labels, _ = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
      pipeline = _Session(model_config, train_config, images, labels, manifest.ignore_label)
      batch = pipeline.session.run([images, labels])
    with tf.Graph().as_default():
      in_memory = _Session(model_config, train_config, tf.constant(batch[0]),
                           tf.constant(batch[1]), manifest.ignore_label)
    values = harness.interleave({
        'in_memory': lambda: in_memory.images_per_sec(args.steps, args.batch),
        'pipeline': lambda: pipeline.images_per_sec(args.steps, args.batch)}, args.rounds)
  return harness.Measurement('train_input', 'images/s', 'in_memory', values,
                             target='pipeline >= 0.9 x in_memory')


def add_arguments(parser):
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--crop', type=int, default=129)
  parser.add_argument('--batch', type=int, default=8)


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
