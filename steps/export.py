"""export: checkpoint -> model.tar.gz (model.json + frozen graph, SavedModel and/or TFLite).

model.json keeps the checkpoint's lineage and training metrics and, with --evaluation (evaluate's
metrics.json of this very checkpoint), its evaluation.

With --tfrecords, int8 TFLite quantisation is calibrated on training images, and every format is
compared with the frozen graph on validation images: one metric line per format,
`<format>_pixel_agreement` and `<format>_miou` (the frozen graph's labels taken as the truth).
"""
import contextlib
import dataclasses
import logging
import os

from deeplab.config import ExportConfig
from deeplab.errors import UserError
from steps import artifacts, locations, runtime
from steps.flags import Path, StepSpec, parameters_from, parse_flags

log = logging.getLogger('steps.export')

SPEC = StepSpec(
    name='export',
    description='Export a checkpoint: the frozen graph (ImageTensor:0 -> SemanticPredictions:0, '
                'SemanticProbabilities:0), a SavedModel for TensorFlow Serving, a TFLite model.',
    inputs=(
        Path('checkpoint', 'checkpoint.tar.gz from train'),
        Path('tfrecords', 'TFRecords of the training data: calibrate int8 TFLite on its train '
             'split and compare the formats on its validation split', optional=True),
        Path('evaluation', "evaluate's metrics.json of this checkpoint (or a folder holding it): "
             "recorded in model.json", optional=True),
    ),
    outputs=(Path('output', 'the exported model + model.json', filename=artifacts.Model.filename),),
    parameters=parameters_from(ExportConfig),
)


def _evaluation(path, checkpoint):
  """The model card's "evaluation" from evaluate's metrics.json at `path`, refused unless it
  scored `checkpoint` itself (the same checkpoint_sha256)."""
  from deeplab.lineage import checkpoint_sha256
  evaluation = artifacts.Evaluation.open(path).card_section()
  exported = checkpoint_sha256(checkpoint.prefix)
  if evaluation['checkpoint_sha256'] != exported:
    raise UserError(f'--evaluation: {path} evaluated a different checkpoint (sha256 '
                    f'{evaluation["checkpoint_sha256"][:12]}...) than --checkpoint '
                    f'({exported[:12]}...); pass the metrics.json of the checkpoint exported')
  return evaluation


def _calibration_images(manifest, card, count):
  """Reads `count` training images of `manifest` to calibrate int8 quantisation on, or None."""
  if manifest is None:
    return None
  from deeplab.images import tfrecord_images
  split = card.training.train_split if card.training else 'train'
  return lambda: list(tfrecord_images(manifest.verified_shard_paths(split), count))


def _format_agreement(folder, job, manifest):
  """{format: {pixel_agreement, miou}} of every written format against the frozen graph."""
  from deeplab import inference
  from deeplab.export.agreement import compare_formats
  from deeplab.images import tfrecord_images
  split = 'val' if 'val' in manifest.splits else sorted(manifest.splits)[0]
  images = list(tfrecord_images(manifest.verified_shard_paths(split), job.options.format_check_images))
  reference_format = inference.FORMATS[inference.FROZEN_GRAPH_FORMAT]
  with contextlib.ExitStack() as stack:
    reference = os.path.join(folder, reference_format.filename)
    if not os.path.exists(reference):  # not asked for, but the reference all the same
      reference_format.write(job, reference)
      stack.callback(os.remove, reference)
    models = {}
    for name in (reference_format.name,) + tuple(
        f for f in job.options.export_formats if f != reference_format.name):
      models[name] = inference.load_model(inference.find_model(folder, name)[1], name)
      stack.callback(models[name].close)
    return compare_formats(models, images, manifest.num_classes)


def main(argv=None):
  args = parse_flags(SPEC, argv)
  checkpoint_path = locations.input_location('checkpoint', args.checkpoint)
  tfrecords = locations.input_location('tfrecords', args.tfrecords, optional=True)
  evaluation_path = locations.input_location('evaluation', args.evaluation, optional=True)
  out_path = locations.output_location('output', args.output, artifacts.Model.filename,
                                      {'checkpoint': checkpoint_path, 'tfrecords': tfrecords,
                                       'evaluation': evaluation_path})
  config = ExportConfig.from_flags(args)
  from deeplab import inference
  from deeplab.export import ExportJob
  from deeplab.export.freeze import freeze
  with contextlib.ExitStack() as stack:
    checkpoint = artifacts.Checkpoint.open(stack, checkpoint_path)
    evaluation = evaluation_path and _evaluation(evaluation_path, checkpoint)
    manifest = tfrecords and artifacts.TFRecords.open(stack, tfrecords).manifest
    graph_def = freeze(checkpoint.card.model, checkpoint.prefix, config)
    job = ExportJob(checkpoint.card, checkpoint.prefix, config, graph_def,
                    _calibration_images(manifest, checkpoint.card, config.calibration_images))
    model = artifacts.Model.new(stack, dataclasses.replace(checkpoint.card, export=config,
                                                           evaluation=evaluation or None))
    for name in config.export_formats:
      model_format = inference.FORMATS[name]
      model_format.write(job, os.path.join(model.folder, model_format.filename))
    agreement = (_format_agreement(model.folder, job, manifest)
                 if manifest and config.format_check_images else {})
    model.write(out_path)
  for name, result in agreement.items():
    runtime.emit_metrics(**{f'{name}_pixel_agreement': result['pixel_agreement'],
                              f'{name}_miou': result['miou']})
  runtime.emit_metrics(graph_nodes=len(graph_def.node), graph_bytes=graph_def.ByteSize())
  log.info('wrote %s (%s)', out_path, ', '.join(config.export_formats))


if __name__ == '__main__':
  runtime.run_step(main)
