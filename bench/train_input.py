"""Benchmark: training images/s with the real tf.data input pipeline vs. in-memory tensors.

    python -m bench.train_input [--steps=40] [--rounds=3] [--crop=129] [--batch=8]

Both graphs are the same training step (model, loss, optimizer); one reads the synthetic dataset's
TFRecords through `deeplab.input.train_dataset` (decode, resize, random scale, crop, flip), the
other is fed one fixed batch held in memory. They run alternately, `rounds` times, in one process,
so machine noise hits both; the JSON line reports the median of each and their ratio. The target is
that the input pipeline costs under 10% (ratio >= 0.9).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

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
    self.session.run(self.ops['train_op'])  # warm-up of this round
    started = time.perf_counter()
    for _ in range(steps):
      self.session.run(self.ops['train_op'])
    return steps * batch / (time.perf_counter() - started)

def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--crop', type=int, default=129)
  parser.add_argument('--batch', type=int, default=8)
  args = parser.parse_args()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from deeplab.compat import tf
  from deeplab import input as model_input, training
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
      images, labels = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
      pipeline = _Session(model_config, train_config, images, labels, manifest.ignore_label)
      batch = pipeline.session.run([images, labels])
    with tf.Graph().as_default():
      in_memory = _Session(model_config, train_config, tf.constant(batch[0]),
                           tf.constant(batch[1]), manifest.ignore_label)
    results = {'pipeline': [], 'in_memory': []}
    for _ in range(args.rounds):
      results['pipeline'].append(pipeline.images_per_sec(args.steps, args.batch))
      results['in_memory'].append(in_memory.images_per_sec(args.steps, args.batch))
  pipeline_rate = statistics.median(results['pipeline'])
  memory_rate = statistics.median(results['in_memory'])
  print(json.dumps({'benchmark': 'train_input', 'crop': args.crop, 'batch': args.batch,
                    'pipeline_images_per_sec': round(pipeline_rate, 2),
                    'in_memory_images_per_sec': round(memory_rate, 2),
                    'ratio': round(pipeline_rate / memory_rate, 3),
                    'pipeline_cost': round(1 - pipeline_rate / memory_rate, 3)}), flush=True)

if __name__ == '__main__':
  main()
