"""train: tfrecords (+ optional checkpoint to resume / initial checkpoint) -> checkpoint.tar.gz."""
import contextlib
import logging
import os
import shutil
import signal
import sys
import time

from deeplab.config import ModelConfig, TrainConfig
from deeplab.errors import UserError
from steps import archives, artifacts, locations, runtime
from steps.flags import (DATASET_PARAMETER, STRING, Parameter, Path, StepSpec, parameters_from,
                         parse_flags)

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
                  filename=artifacts.Checkpoint.filename),),
    parameters=parameters_from(ModelConfig) + (DATASET_PARAMETER,) + parameters_from(TrainConfig) + (
        Parameter('train_logdir', STRING, '', 'folder for the checkpoints of runs in progress, so a '
                  'killed run resumes when started again (empty = .deeplab-train/ in the working '
                  'directory)'),
    ),
)

DEFAULT_TRAIN_LOGDIR = '.deeplab-train'


def _install_stop_handler():
  """SIGTERM/SIGINT ask the trainer to save a checkpoint and stop after the current step (on
  several machines: every worker, with the checkpoint saved by the chief)."""
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
  return resolve_checkpoint_path(stack.enter_context(archives.open_input(path)))


def _resume_checkpoint(stack, path, model_config):
  """The prefix in a checkpoint artifact of an earlier run, after checking it is the same model."""
  saved = artifacts.Checkpoint.open(stack, path)
  if saved.card.model != model_config:
    ours = model_config.to_json()
    differences = [f'{k}={v!r} (flags: {ours[k]!r})'
                   for k, v in saved.card.model.to_json().items() if ours[k] != v]
    raise UserError(f'--checkpoint: {path} was trained with other model options: '
                    f'{", ".join(differences)}; pass the same flags to resume it')
  return saved.prefix


class TrainProgress:
  """Training's report callback: prints each metric line and, on a terminal, keeps a progress line
  on stderr under them (steps done, images/s, loss, ETA). Use as a context manager."""

  def __init__(self, total_steps: int):
    self.bar = runtime.progress_bar(total_steps, 'step', 'train')
    self.last_step_metrics = {}  # the last line with a step's loss: the checkpoint's training_metrics

  def __enter__(self) -> 'TrainProgress':
    return self

  def __exit__(self, *exc_info) -> None:
    self.bar.close()

  def __call__(self, metrics: dict) -> None:
    with self.bar.external_write_mode():
      runtime.emit_metrics(**metrics)
    if 'resumed_from_step' in metrics:
      # Counted from where this run starts, so the rate and the ETA are this run's.
      self.bar.initial = self.bar.n = metrics['resumed_from_step']
    if 'step' in metrics:
      self.last_step_metrics = metrics
      self.bar.set_postfix({'loss': f'{metrics["loss"]:.4f}',
                            'images/s': f'{metrics["images_per_sec"]:.1f}'}, refresh=False)
      self.bar.update(metrics['step'] - self.bar.n)


def _initial_weights(resume_from, initial):
  """The lineage's "initial_checkpoint": the weights training starts from (a resumed checkpoint
  wins over --tf_initial_checkpoint, as in training), or None from scratch."""
  from deeplab.lineage import checkpoint_sha256
  for name, prefix in (('checkpoint', resume_from), ('tf_initial_checkpoint', initial)):
    if prefix:
      return {'input': name, 'sha256': checkpoint_sha256(prefix)}
  return None


def main(argv=None):
  args = parse_flags(SPEC, argv)
  stop_signals = _install_stop_handler()
  tfrecords = locations.input_location('tfrecords', args.tfrecords)
  resume_path = locations.input_location('checkpoint', args.checkpoint, optional=True)
  # Not input_location's existence check when given: a checkpoint prefix names no file itself.
  initial_path = args.tf_initial_checkpoint or locations.input_location('tf_initial_checkpoint', None, optional=True)
  out_path = locations.output_location('output', args.output, artifacts.Checkpoint.filename,
      {'tfrecords': tfrecords, 'checkpoint': resume_path, 'tf_initial_checkpoint': initial_path})
  train_config = TrainConfig.from_flags(args)

  from deeplab import checkpoint, distribute, lineage, training
  tf_cluster = distribute.Cluster.from_environment()
  with contextlib.ExitStack() as stack:
    manifest = artifacts.TFRecords.open(stack, tfrecords, args.dataset).manifest
    manifest.shard_paths(train_config.train_split)  # fail now, not after building the graph
    model_config = ModelConfig.from_flags(args, num_classes=manifest.num_classes)
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
      with TrainProgress(train_config.training_number_of_steps) as progress:
        prefix = training.train(model_config, train_config, manifest, work_dir,
                                initial_checkpoint=initial, resume_from=resume_from,
                                report=progress, should_stop=lambda: bool(stop_signals),
                                cluster=tf_cluster)
    except training.TrainingInterrupted as e:
      print(f'error: {e}; run the same command again to resume', file=sys.stderr, flush=True)
      sys.exit(128 + (stop_signals[0] if stop_signals else signal.SIGTERM))
    if prefix is None:
      log.info('worker %d of %d: training done; the chief (worker 0) writes the checkpoint',
               tf_cluster.rank, len(tf_cluster.workers))
      return
    global_step = training.global_step_of(prefix)
    final = dict(global_step=global_step, train_seconds=time.perf_counter() - started)
    card = checkpoint.ModelCard(
        model_config, manifest.describe(), training=train_config, global_step=global_step,
        lineage=lineage.lineage(manifest, train_config.train_split,
                                _initial_weights(resume_from, initial)),
        training_metrics=dict(progress.last_step_metrics, **final))
    path = artifacts.Checkpoint.new(stack, prefix, work_dir, card).write(out_path)
  shutil.rmtree(work_dir, ignore_errors=True)  # the run is complete: its result is the artifact
  runtime.emit_metrics(**final)
  log.info('wrote %s', path)


if __name__ == '__main__':
  runtime.run_step(main)
