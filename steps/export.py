"""export: checkpoint -> model.tar.gz (model.json + frozen graph, SavedModel and/or TFLite).

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
from steps import artifacts
from steps.flags import Path, StepSpec, parameters_from, parse_flags

log = logging.getLogger('steps.export')

SPEC = StepSpec(
    name='export',
    description='Export a checkpoint: the frozen graph (ImageTensor:0 -> SemanticPredictions:0, '
                'SemanticProbabilities:0), a SavedModel for TF Serving / KServe, a TFLite model.',
    inputs=(
        Path('checkpoint', 'checkpoint.tar.gz from train'),
        Path('tfrecords', 'TFRecords of the training data: calibrate int8 TFLite on its train '
             'split and compare the formats on its validation split', optional=True),
    ),
    outputs=(Path('output', 'the exported model + model.json', filename=artifacts.Model.filename),),
    parameters=parameters_from(ExportConfig),
)


def _write_formats(folder, config, checkpoint, graph_def, manifest):
  """Writes the formats of `config` into `folder`."""
  from deeplab import export
  from deeplab.images import tfrecord_images
  if export.FROZEN_GRAPH_FORMAT in config.export_formats:
    export.write_frozen_graph(graph_def, os.path.join(folder, export.FROZEN_GRAPH))
  if export.SAVED_MODEL_FORMAT in config.export_formats:
    export.write_saved_model(graph_def, os.path.join(folder, export.SAVED_MODEL_DIR))
  if export.TFLITE_FORMAT in config.export_formats:
    size = config.tflite_input_size or export.default_tflite_size(checkpoint.card)
    calibration = None
    if config.tflite_quantize != 'none':
      if manifest is None:
        raise UserError(f'--tflite_quantize={config.tflite_quantize} calibrates on training '
                        'images: pass --tfrecords')
      split = checkpoint.card.training.train_split if checkpoint.card.training else 'train'
      calibration = list(tfrecord_images(manifest.verified_shard_paths(split),
                                         config.calibration_images))
    export.write_tflite(checkpoint.card.model, checkpoint.prefix,
                        os.path.join(folder, export.TFLITE_FILE), size, config.tflite_quantize,
                        calibration)


def _format_agreement(folder, graph_def, manifest, config):
  """{format: {pixel_agreement, miou}} of every written format against the frozen graph."""
  from deeplab import export
  from deeplab.images import tfrecord_images
  split = 'val' if 'val' in manifest.splits else sorted(manifest.splits)[0]
  images = list(tfrecord_images(manifest.verified_shard_paths(split), config.format_check_images))
  with contextlib.ExitStack() as stack:
    reference = os.path.join(folder, export.FROZEN_GRAPH)
    if not os.path.exists(reference):  # not asked for, but the reference all the same
      export.write_frozen_graph(graph_def, reference)
      stack.callback(os.remove, reference)
    models = {}
    for name in (export.FROZEN_GRAPH_FORMAT,) + tuple(
        f for f in config.export_formats if f != export.FROZEN_GRAPH_FORMAT):
      models[name] = export.load_model(export.find_model(folder, name)[1], name)
      stack.callback(models[name].close)
    return export.compare_formats(models, images, manifest.num_classes)


def main(argv=None):
  args = parse_flags(SPEC, argv)
  checkpoint_path = artifacts.input_location('export', 'checkpoint', args.checkpoint)
  tfrecords = artifacts.input_location('export', 'tfrecords', args.tfrecords, optional=True)
  out_path = artifacts.output_location('export', 'output', args.output, artifacts.Model.filename,
                                      {'checkpoint': checkpoint_path, 'tfrecords': tfrecords})
  config = ExportConfig.from_flags(args)
  from deeplab import export
  with contextlib.ExitStack() as stack:
    checkpoint = artifacts.Checkpoint.open(stack, checkpoint_path)
    manifest = tfrecords and artifacts.TFRecords.open(stack, tfrecords)
    graph_def = export.freeze(checkpoint.card.model, checkpoint.prefix, config)
    agreement = {}

    def fill(folder):
      _write_formats(folder, config, checkpoint, graph_def, manifest)
      if manifest and config.format_check_images:
        agreement.update(_format_agreement(folder, graph_def, manifest, config))

    artifacts.Model.write(out_path, dataclasses.replace(checkpoint.card, export=config), fill)
  for name, result in agreement.items():
    artifacts.emit_metrics(**{f'{name}_pixel_agreement': result['pixel_agreement'],
                              f'{name}_miou': result['miou']})
  artifacts.emit_metrics(graph_nodes=len(graph_def.node), graph_bytes=graph_def.ByteSize())
  log.info('wrote %s (%s)', out_path, ', '.join(config.export_formats))


if __name__ == '__main__':
  artifacts.run_step(main)
