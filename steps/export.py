"""export: checkpoint -> model.tar.gz (frozen_inference_graph.pb + model.json)."""
import contextlib
import dataclasses
import logging

from deeplab.config import ExportConfig
from steps import artifacts
from steps.flags import Path, StepSpec, parameters_from, parse_flags

log = logging.getLogger('steps.export')

SPEC = StepSpec(
    name='export',
    description='Freeze a checkpoint into a graph: ImageTensor:0 -> SemanticPredictions:0, '
                'SemanticProbabilities:0.',
    inputs=(Path('checkpoint', 'checkpoint.tar.gz from train'),),
    outputs=(Path('output', 'the frozen graph + model.json', filename=artifacts.Model.filename),),
    parameters=parameters_from(ExportConfig),
)


def main():
  args = parse_flags(SPEC)
  checkpoint_path = artifacts.input_location('export', 'checkpoint', args.checkpoint)
  out_path = artifacts.output_location('export', 'output', args.output, artifacts.Model.filename,
                                      {'checkpoint': checkpoint_path})
  config = ExportConfig.from_flags(args)
  from deeplab import export
  with contextlib.ExitStack() as stack:
    checkpoint = artifacts.Checkpoint.open(stack, checkpoint_path)
    graph_def = export.freeze(checkpoint.card.model, checkpoint.prefix, config)
    artifacts.Model.write(out_path, graph_def, dataclasses.replace(checkpoint.card, export=config))
  artifacts.emit_metrics(graph_nodes=len(graph_def.node), graph_bytes=graph_def.ByteSize())
  log.info('wrote %s', out_path)


if __name__ == '__main__':
  artifacts.run_step(main)
