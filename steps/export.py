"""export: checkpoint -> model.tar.gz (frozen_inference_graph.pb + model.json)."""
import contextlib
import logging
import os

from steps import artifacts
from steps.evaluate import open_checkpoint
from steps.flags import FLAG, FLOAT, Parameter, Path, StepSpec, parse_flags

log = logging.getLogger('steps.export')

SPEC = StepSpec(
    name='export',
    description='Freeze a checkpoint into a graph: ImageTensor:0 -> SemanticPredictions:0, '
                'SemanticProbabilities:0.',
    inputs=(Path('checkpoint', 'checkpoint.tar.gz from train'),),
    outputs=(Path('output', 'the frozen graph + model.json', filename='model.tar.gz'),),
    parameters=(
        Parameter('inference_scales', FLOAT, (1.0,), 'image scales to average predictions over',
                  multiple=True, min=0.01),
        Parameter('add_flipped_images', FLAG, False, 'also average the left-right flipped image'),
    ),
)


def main():
  args = parse_flags(SPEC)
  checkpoint_path = artifacts.input_location('export', 'checkpoint', args.checkpoint)
  out_path = artifacts.output_location('export', 'output', args.output, 'model.tar.gz',
                                      {'checkpoint': checkpoint_path})
  from deeplab import checkpoint, export
  with contextlib.ExitStack() as stack:
    info, prefix = open_checkpoint(stack, checkpoint_path)
    graph_def = export.freeze(info['model'], prefix, args.inference_scales, args.add_flipped_images)
    with artifacts.scratch_dir('model') as staging:
      export.write_frozen_graph(graph_def, os.path.join(staging, export.FROZEN_GRAPH))
      sections = {k: v for k, v in info.items() if k not in ('format_version', 'model', 'dataset')}
      checkpoint.write_model_json(staging, info['model'], info['dataset'], **sections,
                                  export={'inference_scales': list(args.inference_scales),
                                          'add_flipped_images': args.add_flipped_images})
      artifacts.write_tarball(staging, out_path)
  artifacts.emit_metrics(graph_nodes=len(graph_def.node),
                         graph_bytes=graph_def.ByteSize())
  log.info('wrote %s', out_path)


if __name__ == '__main__':
  artifacts.run_step(main)
