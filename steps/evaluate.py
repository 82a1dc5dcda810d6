"""evaluate: tfrecords + checkpoint -> metrics.json (mIoU, per-class IoU, pixel accuracy, confusion),
and the same for TensorBoard in tensorboard/ beside it (`tensorboard --logdir <that folder>`)."""
import contextlib
import logging
import os

from deeplab.config import EvalConfig
from deeplab.errors import UserError
from steps import artifacts
from steps.flags import DATASET_PARAMETER, Path, StepSpec, parameters_from, parse_flags

log = logging.getLogger('steps.evaluate')

SPEC = StepSpec(
    name='evaluate',
    description='Evaluate a checkpoint on a split in one pass over whole images.',
    inputs=(
        Path('tfrecords', 'TFRecords from build_data (or original DeepLab shards + --dataset)'),
        Path('checkpoint', 'checkpoint.tar.gz from train; a folder of several (a sweep) evaluates '
             'each and reports the best'),
    ),
    outputs=(Path('output', 'metrics JSON', filename='metrics.json'),),
    parameters=(DATASET_PARAMETER,) + parameters_from(EvalConfig),
)


def sweep_checkpoints(path):
  """The checkpoint archives of a sweep when `path` is a folder holding several (how Valohai
  delivers the outputs of a task's executions to one input); else [path]."""
  if os.path.isdir(path):
    archives = sorted(os.path.join(dirpath, name)
                      for dirpath, _, names in os.walk(path) for name in names
                      if artifacts.is_archive(os.path.join(dirpath, name)))
    if len(archives) > 1:
      return archives
  return [path]


def evaluate_checkpoint(stack, path, manifest, config: EvalConfig, summary_dir):
  from deeplab import evaluation
  checkpoint = artifacts.Checkpoint.open(stack, path)
  model_config = checkpoint.card.model
  if manifest.num_classes != model_config.num_classes:
    raise UserError(f'--tfrecords: the dataset {manifest.name!r} has {manifest.num_classes} '
                    f'classes but the checkpoint {path} was trained for {model_config.num_classes}')
  result = evaluation.evaluate(model_config, checkpoint.prefix, manifest, config, summary_dir,
                               checkpoint.card.global_step or 0)
  result.update(eval_scales=list(config.eval_scales), add_flipped_images=config.add_flipped_images,
                eval_crop_size=list(config.eval_crop_size), dataset=manifest.name)
  training = checkpoint.card.training
  return result, training and dict(training.to_json(), global_step=checkpoint.card.global_step)


def main():
  args = parse_flags(SPEC)
  tfrecords = artifacts.input_location('evaluate', 'tfrecords', args.tfrecords)
  checkpoint_path = artifacts.input_location('evaluate', 'checkpoint', args.checkpoint)
  out_path = artifacts.output_location('evaluate', 'output', args.output, 'metrics.json',
                                      {'tfrecords': tfrecords, 'checkpoint': checkpoint_path})
  config = EvalConfig.from_flags(args)
  with contextlib.ExitStack() as stack:
    manifest = artifacts.TFRecords.open(stack, tfrecords, args.dataset)
    candidates = sweep_checkpoints(checkpoint_path)
    results, summaries = [], []
    board = os.path.join(os.path.dirname(os.path.abspath(out_path)), 'tensorboard')
    for index, path in enumerate(candidates):
      # One TensorBoard run per checkpoint of a sweep.
      summary_dir = os.path.join(board, f'checkpoint_{index}') if len(candidates) > 1 else board
      result, training = evaluate_checkpoint(stack, path, manifest, config, summary_dir)
      result['checkpoint'] = (os.path.relpath(path, checkpoint_path) if len(candidates) > 1
                              else os.path.basename(os.path.normpath(path)))
      results.append(result)
      summaries.append({key: result[key] for key in ('checkpoint', 'miou', 'pixel_accuracy')})
      summaries[-1]['training'] = training
      if len(candidates) > 1:
        artifacts.emit_metrics(checkpoint_index=index, miou=result['miou'],
                               pixel_accuracy=result['pixel_accuracy'])
  # Several checkpoints: the best by mIoU is reported at the top level, all of them under
  # "checkpoints", so one metrics.json shape serves a single run and a sweep.
  from deeplab.metrics import best_index
  best = results[best_index([r['miou'] for r in results])]
  if len(results) > 1:
    best = dict(best, checkpoints=summaries)
  artifacts.write_json_atomic(best, out_path)
  artifacts.emit_metrics(miou=best['miou'], pixel_accuracy=best['pixel_accuracy'],
                         num_images=best['num_images'], images_per_sec=best['images_per_sec'],
                         **{f'iou_{name}': value for name, value in best['per_class_iou'].items()})
  log.info('mIoU %.4f on %d images of split %r (%s); wrote %s', best['miou'] or 0.0,
           best['num_images'], config.eval_split, best['checkpoint'], out_path)


if __name__ == '__main__':
  artifacts.run_step(main)
