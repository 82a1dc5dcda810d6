"""evaluate: tfrecords + checkpoint -> metrics.json (mIoU, per-class IoU, pixel accuracy, confusion)."""
import contextlib
import logging
import os

from deeplab.errors import UserError
from steps import artifacts
from steps.flags import FLAG, FLOAT, STRING, Parameter, Path, StepSpec, parse_flags

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
    parameters=(
        Parameter('dataset', STRING, '', 'the dataset name, needed only for TFRecords without dataset.json'),
        Parameter('eval_split', STRING, 'val', 'the split to evaluate'),
        Parameter('eval_scales', FLOAT, (1.0,), 'image scales to average predictions over',
                  multiple=True, min=0.01),
        Parameter('add_flipped_images', FLAG, False, 'also average the left-right flipped image'),
    ),
)


def open_checkpoint(stack, path):
  """(model.json dict, checkpoint prefix) of a checkpoint input; shared by evaluate and export."""
  from deeplab import checkpoint
  folder = stack.enter_context(artifacts.open_input(path, marker=checkpoint.MODEL_JSON))
  return checkpoint.read_model_json(folder), checkpoint.resolve_checkpoint_path(folder)


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


def evaluate_checkpoint(stack, path, manifest, args):
  from deeplab import evaluation
  info, prefix = open_checkpoint(stack, path)
  config = info['model']
  if manifest.num_classes != config.num_classes:
    raise UserError(f'--tfrecords: the dataset {manifest.name!r} has {manifest.num_classes} '
                    f'classes but the checkpoint {path} was trained for {config.num_classes}')
  result = evaluation.evaluate(config, prefix, manifest, args.eval_split, args.eval_scales,
                               args.add_flipped_images)
  result.update(eval_scales=list(args.eval_scales), add_flipped_images=args.add_flipped_images,
                dataset=manifest.name)
  return result, info.get('training')


def main():
  args = parse_flags(SPEC)
  tfrecords = artifacts.input_location('evaluate', 'tfrecords', args.tfrecords)
  checkpoint_path = artifacts.input_location('evaluate', 'checkpoint', args.checkpoint)
  out_path = artifacts.output_location('evaluate', 'output', args.output, 'metrics.json',
                                      {'tfrecords': tfrecords, 'checkpoint': checkpoint_path})
  with contextlib.ExitStack() as stack:
    from deeplab.datasets.manifest import load_dataset
    data_dir = stack.enter_context(artifacts.open_input(tfrecords, marker='dataset.json'))
    manifest = load_dataset(data_dir, args.dataset)
    candidates = sweep_checkpoints(checkpoint_path)
    results, summaries = [], []
    for index, path in enumerate(candidates):
      result, training = evaluate_checkpoint(stack, path, manifest, args)
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
           best['num_images'], args.eval_split, best['checkpoint'], out_path)


if __name__ == '__main__':
  artifacts.run_step(main)
