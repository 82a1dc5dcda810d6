"""train: tfrecords (+ optional checkpoint to resume / initial checkpoint) -> checkpoint.tar.gz."""
import contextlib
import logging
import os
import shutil
import sys
import time

from deeplab.errors import UserError
from steps import artifacts
from steps.flags import FLAG, FLOAT, INTEGER, STRING, Parameter, Path, StepSpec, parse_flags
from steps.model_flags import MODEL_PARAMETERS, model_config_from_flags

log = logging.getLogger('steps.train')

SPEC = StepSpec(
    name='train',
    description='Train a DeepLab model on TFRecords; resumable, prints a JSON metric line per log step.',
    inputs=(
        Path('tfrecords', 'TFRecords from build_data (or a folder of original DeepLab shards + --dataset)'),
        Path('checkpoint', 'a checkpoint.tar.gz of an earlier run to resume from', optional=True),
        Path('tf_initial_checkpoint', 'a checkpoint (TF prefix, folder or archive) to initialise the '
             'weights from, e.g. a model-zoo checkpoint', optional=True),
    ),
    outputs=(Path('output', 'the trained checkpoint + model.json + TensorBoard events',
                  filename='checkpoint.tar.gz'),),
    parameters=MODEL_PARAMETERS + (
        Parameter('dataset', STRING, '', 'the dataset name, needed only for TFRecords without dataset.json'),
        Parameter('train_split', STRING, 'train', 'the split to train on'),
        Parameter('training_number_of_steps', INTEGER, 30000, 'total training steps (a resumed run '
                  'continues to this total); 0 with tf_initial_checkpoint packages that checkpoint', min=0),
        Parameter('train_batch_size', INTEGER, 8, 'images per step', min=1),
        Parameter('train_crop_size', INTEGER, (513, 513), 'crop height,width', multiple=True, min=1),
        Parameter('base_learning_rate', FLOAT, 0.0001, 'initial learning rate', min=0),
        Parameter('learning_policy', STRING, 'poly', 'learning rate schedule', choices=('poly', 'step')),
        Parameter('learning_power', FLOAT, 0.9, 'poly: power'),
        Parameter('end_learning_rate', FLOAT, 0.0, 'poly: final learning rate', min=0),
        Parameter('learning_rate_decay_step', INTEGER, 2000, 'step: decay every this many steps', min=1),
        Parameter('learning_rate_decay_factor', FLOAT, 0.1, 'step: decay factor', min=0),
        Parameter('slow_start_step', INTEGER, 0, 'warm-up steps at slow_start_learning_rate', min=0),
        Parameter('slow_start_learning_rate', FLOAT, 0.0001, 'learning rate during warm-up', min=0),
        Parameter('momentum', FLOAT, 0.9, 'momentum of the optimizer', min=0),
        Parameter('weight_decay', FLOAT, 0.00004, 'L2 weight decay', min=0),
        Parameter('fine_tune_batch_norm', FLAG, True, 'update batch norm statistics and parameters '
                  '(needs a batch of about 12 or more)'),
        Parameter('min_scale_factor', FLOAT, 0.5, 'random scale augmentation: smallest factor', min=0.01),
        Parameter('max_scale_factor', FLOAT, 2.0, 'random scale augmentation: largest factor', min=0.01),
        Parameter('scale_factor_step_size', FLOAT, 0.25, 'random scale: step between factors (0 = any)',
                  min=0),
        Parameter('initialize_last_layer', FLAG, True, 'restore the logits layer from tf_initial_checkpoint '
                  '(false when the class count differs)'),
        Parameter('last_layers_contain_logits_only', FLAG, False, 'with initialize_last_layer=false: '
                  'only logits are new (else the ASPP/decoder layers are new too)'),
        Parameter('log_steps', INTEGER, 10, 'print a metric line every this many steps', min=1),
        Parameter('save_interval_steps', INTEGER, 1000, 'save a checkpoint every this many steps', min=1),
        Parameter('batch_norm_decay', FLOAT, 0.9997, 'decay of the batch norm moving averages '
                  '(lower it, e.g. 0.99, for short runs)', min=0, max=1),
        Parameter('seed', INTEGER, 0, 'random seed of initialisation and augmentation'),
        Parameter('train_logdir', STRING, '', 'folder for the checkpoints of runs in progress, so a '
                  'killed run resumes when started again (empty = .deeplab-train/ in the working '
                  'directory)'),
    ),
)

DEFAULT_TRAIN_LOGDIR = '.deeplab-train'
# Training options passed straight through from the flags of the same name.
_TRAIN_OPTIONS = ('training_number_of_steps', 'train_batch_size', 'train_split', 'base_learning_rate',
                  'learning_policy', 'learning_power', 'end_learning_rate', 'learning_rate_decay_step',
                  'learning_rate_decay_factor', 'slow_start_step', 'slow_start_learning_rate',
                  'momentum', 'fine_tune_batch_norm', 'min_scale_factor', 'max_scale_factor',
                  'scale_factor_step_size', 'initialize_last_layer', 'last_layers_contain_logits_only',
                  'log_steps', 'save_interval_steps', 'seed')


def _install_stop_handler():
  """SIGTERM/SIGINT ask the trainer to save a checkpoint and stop after the current step."""
  import signal
  received = []

  def handler(signum, frame):
    if not received:
      print(f'received {signal.Signals(signum).name}: saving a checkpoint and stopping',
            file=sys.stderr, flush=True)
    received.append(signum)

  signal.signal(signal.SIGTERM, handler)
  signal.signal(signal.SIGINT, handler)
  return received


def _initial_checkpoint(stack, path):
  """A TF checkpoint prefix from --tf_initial_checkpoint: a prefix, a folder or an archive."""
  from deeplab.checkpoint import resolve_checkpoint_path
  if os.path.exists(path + '.index'):  # a prefix names no file of its own
    return path
  if not os.path.exists(path):
    raise UserError(f'--tf_initial_checkpoint: {path} is neither a checkpoint prefix, '
                    'a folder nor an archive')
  return resolve_checkpoint_path(stack.enter_context(artifacts.open_input(path)))


def _resume_checkpoint(stack, path, model_config):
  """The prefix in a checkpoint artifact of an earlier run, after checking it is the same model."""
  from deeplab import checkpoint
  folder = stack.enter_context(artifacts.open_input(path, marker=checkpoint.MODEL_JSON))
  saved = checkpoint.read_model_json(folder)['model']
  if saved != model_config:
    differences = [f'{k}={v!r} (flags: {model_config.to_json()[k]!r})'
                   for k, v in saved.to_json().items() if model_config.to_json()[k] != v]
    raise UserError(f'--checkpoint: {path} was trained with other model options: '
                    f'{", ".join(differences)}; pass the same flags to resume it')
  return checkpoint.resolve_checkpoint_path(folder)


def _package(prefix, work_dir, model_config, manifest, train_config, out_path):
  """checkpoint.tar.gz: the final checkpoint, a relative index, model.json and the events."""
  from deeplab import checkpoint
  with artifacts.scratch_dir('checkpoint') as staging:
    name = os.path.basename(prefix)
    for filename in os.listdir(work_dir):
      if filename.startswith(name + '.') or filename.startswith('events.out.tfevents'):
        shutil.copy2(os.path.join(work_dir, filename), staging)
    checkpoint.write_index(staging, name)
    global_step = int(name.rsplit('-', 1)[1])
    checkpoint.write_model_json(staging, model_config, manifest.describe(),
                                training=dict(train_config.to_json(), global_step=global_step),
                                checkpoint=name)
    return artifacts.write_tarball(staging, out_path), global_step


def main():
  args = parse_flags(SPEC)
  stop_signals = _install_stop_handler()
  tfrecords = artifacts.input_location('train', 'tfrecords', args.tfrecords)
  resume_path = artifacts.input_location('train', 'checkpoint', args.checkpoint, optional=True)
  # Not input_location's existence check when given: a checkpoint prefix names no file itself.
  initial_path = args.tf_initial_checkpoint or artifacts.input_location(
      'train', 'tf_initial_checkpoint', None, optional=True)
  out_path = artifacts.output_location(
      'train', 'output', args.output, 'checkpoint.tar.gz',
      {'tfrecords': tfrecords, 'checkpoint': resume_path, 'tf_initial_checkpoint': initial_path})

  from deeplab import training
  train_config = training.TrainConfig(
      train_crop_size=tuple(args.train_crop_size),
      **{name: getattr(args, name) for name in _TRAIN_OPTIONS})
  from deeplab.datasets.manifest import load_dataset
  with contextlib.ExitStack() as stack:
    data_dir = stack.enter_context(artifacts.open_input(tfrecords, marker='dataset.json'))
    manifest = load_dataset(data_dir, args.dataset)
    manifest.shard_paths(args.train_split)  # fail now, not after building the graph
    model_config = model_config_from_flags(args, manifest.num_classes,
                                           weight_decay=args.weight_decay,
                                           batch_norm_decay=args.batch_norm_decay)
    resume_from = resume_path and _resume_checkpoint(stack, resume_path, model_config)
    initial = initial_path and _initial_checkpoint(stack, initial_path)
    if not (resume_from or initial) and train_config.training_number_of_steps == 0:
      raise UserError('--training_number_of_steps=0 only packages a checkpoint: pass '
                      '--tf_initial_checkpoint or --checkpoint')
    work_dir = training.work_dir_for(args.train_logdir or DEFAULT_TRAIN_LOGDIR,
                                     training.fingerprint(model_config, train_config, manifest))
    log.info('training in %s (started again with the same flags, a run resumes from there)',
             work_dir)
    started = time.perf_counter()
    try:
      prefix = training.train(model_config, train_config, manifest, work_dir,
                              initial_checkpoint=initial, resume_from=resume_from,
                              report=lambda metrics: artifacts.emit_metrics(**metrics),
                              should_stop=lambda: bool(stop_signals))
    except training.TrainingInterrupted as e:
      print(f'error: {e}; run the same command again to resume', file=sys.stderr, flush=True)
      sys.exit(128 + stop_signals[0])
    path, global_step = _package(prefix, work_dir, model_config, manifest, train_config, out_path)
  shutil.rmtree(work_dir, ignore_errors=True)  # the run is complete: its result is the artifact
  artifacts.emit_metrics(global_step=global_step, train_seconds=time.perf_counter() - started)
  log.info('wrote %s', path)


if __name__ == '__main__':
  artifacts.run_step(main)
