"""evaluate: tfrecords + checkpoint -> metrics.json (mIoU, per-class IoU, pixel accuracy), and beside
it confusion_matrix.json, report/ (figures + report.html, see deeplab/report.py) and tensorboard/
(the same numbers for `tensorboard --logdir <that folder>`).

The four are written aside and moved in together once all are whole, metrics.json last: a failed
run (a full disk included) leaves none of them, and each replaces its earlier version whole."""
import contextlib
import dataclasses
import logging
import os
from typing import Dict, List, Optional, Tuple

from deeplab import lineage
from deeplab.config import EvalConfig
from deeplab.errors import UserError
from steps import archives, artifacts, files, locations, runtime
from steps.flags import DATASET_PARAMETER, Path, StepSpec, parameters_from, parse_flags

log = logging.getLogger('steps.evaluate')

SPEC = StepSpec(
    name='evaluate',
    description='Evaluate a checkpoint on a split in one pass over whole images; a report (figures '
    'and one HTML page) and the confusion matrix are written beside the metrics.',
    inputs=(
        Path('tfrecords', 'TFRecords from build_data (or original DeepLab shards + --dataset)'),
        Path('checkpoint', 'checkpoint.tar.gz from train; a folder of several (a sweep) evaluates '
             'each and reports the best'),
        Path('baseline', 'checkpoint.tar.gz of the model in production: evaluated too, on the same '
             'split with the same settings, into the "baseline" section the gate step compares with',
             optional=True),
    ),
    outputs=(Path('output', 'metrics JSON; confusion_matrix.json and the report/ folder are '
                  'written beside it', filename='metrics.json'),),
    parameters=(DATASET_PARAMETER,) + parameters_from(EvalConfig),
)

# Written in the folder of metrics.json: the confusion matrix (too large for a metrics table), the
# report of the best checkpoint and the TensorBoard events of every checkpoint.
CONFUSION_FILE = 'confusion_matrix.json'
REPORT_FOLDER = 'report'
TENSORBOARD_FOLDER = 'tensorboard'


@dataclasses.dataclass
class CheckpointEvaluation:
  """What evaluating one checkpoint gives: metrics.json's content and what the report draws."""
  result: dict
  training: Optional[dict]  # the checkpoint's training settings and global step, if recorded
  confusion: List[List[int]]
  worst: list  # report.ScoredImage, lowest per-image mIoU first
  best: list
  training_scalars: Dict[str, List[Tuple[int, float]]]


def sweep_checkpoints(path):
  """The checkpoint archives of a sweep when `path` is a folder holding several (how an
  orchestrator delivers the outputs of a sweep's runs to one input); else [path]."""
  if os.path.isdir(path):
    found = sorted(os.path.join(dirpath, name)
                   for dirpath, _, names in os.walk(path) for name in names
                   if archives.is_archive(os.path.join(dirpath, name)))
    if len(found) > 1:
      return found
  return [path]


def refuse_training_shards(path, card, data, config: EvalConfig) -> None:
  """Refuses to score a checkpoint on shards it was trained on (its lineage names them by
  sha256), unless --allow_train_split: such an mIoU says nothing about unseen images."""
  trained = card.lineage and card.lineage['data']
  shared = trained and not config.allow_train_split and lineage.shared_shards(trained, data)
  if shared:
    raise UserError(f'--checkpoint: {path} was trained on split {trained["split"]!r} of '
                    f'{trained["dataset"]!r}, which holds {len(shared)} of the shards of '
                    f'--eval_split={config.eval_split} (first: {shared[0]}, same sha256); evaluate '
                    'on a split it was not trained on, or pass --allow_train_split')


def evaluate_checkpoint(stack, path, manifest, config: EvalConfig, summary_dir: str, data: dict,
                        baseline_classes: Optional[Tuple[str, list]] = None) -> CheckpointEvaluation:
  """`data` is the evaluated split's fingerprint (deeplab.lineage.data_fingerprint).
  `baseline_classes`: (the baseline's path, its class names), which this checkpoint's must equal;
  checked before anything is evaluated."""
  from deeplab import evaluation, report
  checkpoint = artifacts.Checkpoint.open(stack, path)
  model_config = checkpoint.card.model
  if baseline_classes and list(baseline_classes[1]) != list(checkpoint.card.dataset.class_names):
    raise UserError(f'--baseline: {baseline_classes[0]} was trained for the classes '
                    f'{", ".join(baseline_classes[1])}; {path} for '
                    f'{", ".join(checkpoint.card.dataset.class_names)}; expected a baseline of the '
                    'same classes')
  if manifest.num_classes != model_config.num_classes:
    raise UserError(f'--tfrecords: the dataset {manifest.name!r} has {manifest.num_classes} '
                    f'classes but the checkpoint {path} was trained for {model_config.num_classes}')
  refuse_training_shards(path, checkpoint.card, data, config)
  extremes = report.ExtremesCollector(config.report_images)
  split = manifest.splits.get(config.eval_split)
  with runtime.progress_bar(split and split.num_examples, 'image',
                              f'evaluate {config.eval_split}') as bar:

    def each_example(name, image, label, prediction):
      score = report.per_image_miou(label, prediction, manifest.num_classes, manifest.ignore_label)
      extremes.add(score, name, image, label, prediction)
      bar.update()

    result = evaluation.evaluate(model_config, checkpoint.prefix, manifest, config, summary_dir,
                                 checkpoint.card.global_step or 0, each_example)
  confusion = result.pop('confusion_matrix')
  result.update(eval_scales=list(config.eval_scales), add_flipped_images=config.add_flipped_images,
                eval_crop_size=list(config.eval_crop_size), dataset=manifest.name,
                checkpoint_sha256=lineage.checkpoint_sha256(checkpoint.prefix), data=data)
  training = checkpoint.card.training
  # The training's TensorBoard events travel in the checkpoint artifact, beside its files.
  return CheckpointEvaluation(
      result, training and dict(training.to_json(), global_step=checkpoint.card.global_step),
      confusion, extremes.worst(), extremes.best(),
      report.read_event_scalars(os.path.dirname(checkpoint.prefix)))


# What metrics.json keeps of the baseline's evaluation (the gate reads its miou).
BASELINE_KEYS = ('miou', 'pixel_accuracy', 'per_class_iou', 'num_images', 'num_pixels',
                 'checkpoint_sha256')


def evaluate_baseline(stack, path, manifest, config: EvalConfig, summary_dir: str, data: dict) -> dict:
  """metrics.json's "baseline" section: the checkpoint at `path` evaluated as the candidates were
  (same shards, same settings, the same refusal of its training shards, this run), so the mIoUs
  compare like for like."""
  result = evaluate_checkpoint(stack, path, manifest, config, summary_dir, data).result
  return dict({key: result[key] for key in BASELINE_KEYS},
              checkpoint=os.path.basename(os.path.normpath(path)))


def write_report_files(outputs: contextlib.ExitStack, folder: str, evaluation: CheckpointEvaluation,
                       manifest) -> None:
  """confusion_matrix.json and report/ for `folder`, written aside: moved in when `outputs` closes."""
  from deeplab import report
  result = evaluation.result
  staging = outputs.enter_context(files.atomic_folder(os.path.join(folder, REPORT_FOLDER)))
  report.write_report(staging, miou=result['miou'], pixel_accuracy=result['pixel_accuracy'],
                      num_images=result['num_images'], per_class_iou=result['per_class_iou'],
                      confusion=evaluation.confusion, class_names=manifest.class_names,
                      colormap=manifest.colormap, ignore_label=manifest.ignore_label,
                      worst=evaluation.worst, best=evaluation.best,
                      training_scalars=evaluation.training_scalars)
  confusion = outputs.enter_context(files.atomic_output(os.path.join(folder, CONFUSION_FILE), 'w'))
  files.dump_json({'class_names': list(manifest.class_names), 'rows': 'ground-truth class',
                       'columns': 'predicted class', 'unit': 'pixels',
                       'matrix': evaluation.confusion}, confusion)
  confusion.flush()  # a full disk fails here, before anything is moved in


def main(argv=None):
  args = parse_flags(SPEC, argv)
  tfrecords = locations.input_location('tfrecords', args.tfrecords)
  checkpoint_path = locations.input_location('checkpoint', args.checkpoint)
  baseline_path = locations.input_location('baseline', args.baseline, optional=True)
  out_path = locations.output_location('output', args.output, 'metrics.json',
                                      {'tfrecords': tfrecords, 'checkpoint': checkpoint_path,
                                       'baseline': baseline_path})
  config = EvalConfig.from_flags(args)
  folder = os.path.dirname(os.path.abspath(out_path))
  # Every output is written aside and moved in once all are whole: the others as `outputs`
  # closes, metrics.json after them (`last`), so whoever finds it finds the rest of the same run.
  with contextlib.ExitStack() as last, contextlib.ExitStack() as outputs:
    board = outputs.enter_context(files.atomic_folder(os.path.join(folder, TENSORBOARD_FOLDER)))
    with contextlib.ExitStack() as stack:
      manifest = artifacts.TFRecords.open(stack, tfrecords, args.dataset).manifest
      data = lineage.data_fingerprint(manifest, config.eval_split)
      candidates = sweep_checkpoints(checkpoint_path)
      # Its card first, so that a baseline of other classes is refused before anything is evaluated.
      baseline_classes = baseline_path and (
          baseline_path, artifacts.Checkpoint.open(stack, baseline_path).card.dataset.class_names)
      evaluations, summaries = [], []
      for index, path in enumerate(candidates):
        # One TensorBoard run per checkpoint of a sweep.
        summary_dir = os.path.join(board, f'checkpoint_{index}') if len(candidates) > 1 else board
        evaluation = evaluate_checkpoint(stack, path, manifest, config, summary_dir, data,
                                         baseline_classes)
        result = evaluation.result
        result['checkpoint'] = (os.path.relpath(path, checkpoint_path) if len(candidates) > 1
                                else os.path.basename(os.path.normpath(path)))
        evaluations.append(evaluation)
        summaries.append({key: result[key] for key in ('checkpoint', 'checkpoint_sha256', 'miou',
                                                        'pixel_accuracy')})
        summaries[-1]['training'] = evaluation.training
        if len(candidates) > 1:
          runtime.emit_metrics(checkpoint_index=index, miou=result['miou'],
                                 pixel_accuracy=result['pixel_accuracy'])
      from deeplab.metrics import best_index
      chosen = evaluations[best_index([e.result['miou'] for e in evaluations])]
      baseline = baseline_path and evaluate_baseline(stack, baseline_path, manifest, config,
                                                     os.path.join(board, 'baseline'), data)
    # Several checkpoints: the best by mIoU is reported at the top level, all of them under
    # "checkpoints", so one metrics.json shape serves a single run and a sweep; the report and the
    # confusion matrix are the best one's.
    best = chosen.result
    if len(evaluations) > 1:
      best = dict(best, checkpoints=summaries)
    if baseline:
      best = dict(best, baseline=baseline)
    write_report_files(outputs, folder, chosen, manifest)
    metrics_file = last.enter_context(files.atomic_output(out_path, 'w'))
    files.dump_json(best, metrics_file)
    metrics_file.flush()  # a full disk fails here, before anything is moved in
  runtime.emit_metrics(miou=best['miou'], pixel_accuracy=best['pixel_accuracy'],
                         num_images=best['num_images'], images_per_sec=best['images_per_sec'],
                         **({'baseline_miou': baseline['miou']} if baseline else {}),
                         **{f'iou_{name}': value for name, value in best['per_class_iou'].items()})
  log.info('mIoU %.4f on %d images of split %r (%s); wrote %s and, beside it, %s, %s/ and %s/',
           best['miou'] or 0.0, best['num_images'], config.eval_split, best['checkpoint'],
           out_path, CONFUSION_FILE, REPORT_FOLDER, TENSORBOARD_FOLDER)


if __name__ == '__main__':
  runtime.run_step(main)
