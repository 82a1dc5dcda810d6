"""evaluate: tfrecords + checkpoint -> metrics.json (mIoU, per-class IoU, pixel accuracy, confusion)."""
import contextlib
import logging

from deeplab.errors import UserError
from steps import artifacts
from steps.flags import FLAG, FLOAT, STRING, Parameter, Path, StepSpec, parse_flags

log = logging.getLogger('steps.evaluate')

SPEC = StepSpec(
    name='evaluate',
    description='Evaluate a checkpoint on a split in one pass over whole images.',
    inputs=(
        Path('tfrecords', 'TFRecords from build_data (or original DeepLab shards + --dataset)'),
        Path('checkpoint', 'checkpoint.tar.gz from train'),
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


def open_checkpoint(stack, step, flag):
  """(model.json dict, checkpoint prefix) of the checkpoint input; shared by evaluate and export."""
  from deeplab import checkpoint
  path = artifacts.input_location(step, 'checkpoint', flag)
  folder = stack.enter_context(artifacts.open_input(path, marker=checkpoint.MODEL_JSON))
  return checkpoint.read_model_json(folder), checkpoint.resolve_checkpoint_path(folder)


def main():
  args = parse_flags(SPEC)
  tfrecords = artifacts.input_location('evaluate', 'tfrecords', args.tfrecords)
  out_path = artifacts.output_location('evaluate', 'output', args.output, 'metrics.json')
  from deeplab import evaluation
  from deeplab.datasets.manifest import load_dataset
  with contextlib.ExitStack() as stack:
    info, prefix = open_checkpoint(stack, 'evaluate', args.checkpoint)
    config = info['model']
    data_dir = stack.enter_context(artifacts.open_input(tfrecords, marker='dataset.json'))
    manifest = load_dataset(data_dir, args.dataset)
    if manifest.num_classes != config.num_classes:
      raise UserError(f'--tfrecords: the dataset {manifest.name!r} has {manifest.num_classes} '
                      f'classes but the checkpoint was trained for {config.num_classes}')
    result = evaluation.evaluate(config, prefix, manifest, args.eval_split, args.eval_scales,
                                 args.add_flipped_images)
  result.update(eval_scales=list(args.eval_scales), add_flipped_images=args.add_flipped_images,
                dataset=manifest.name)
  artifacts.write_json_atomic(result, out_path)
  artifacts.emit_metrics(miou=result['miou'], pixel_accuracy=result['pixel_accuracy'],
                         num_images=result['num_images'], images_per_sec=result['images_per_sec'],
                         **{f'iou_{name}': value for name, value in result['per_class_iou'].items()})
  log.info('mIoU %.4f on %d images of split %r; wrote %s', result['miou'] or 0.0,
           result['num_images'], args.eval_split, out_path)


if __name__ == '__main__':
  artifacts.run_step(main)
