"""Regenerates the Kubeflow files from the step SPECs: components.py, then pipeline.yaml compiled with it,
distributed_pipeline.yaml (training on several machines through a TFJob) and batch_pipeline.yaml
(batch prediction over shards).

    python -m pipelines.kubeflow            # rewrite them all
    python -m pipelines.kubeflow --check    # exit 1 if one is out of date
"""
import argparse
import sys

from pipelines.kubeflow.step_component import COMPONENTS_PATH, components_source
from pipelines.graph import SPECS
from pipelines.shared import write_or_check

REGENERATE = 'python -m pipelines.kubeflow'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.split('\n')[0])
  parser.add_argument('--check', action='store_true', help='only check that the files are up to date')
  args = parser.parse_args(argv)
  status = write_or_check(COMPONENTS_PATH, components_source(SPECS.values()), args.check, REGENERATE)
  if status:
    return status
  # Imported only now, so that the pipeline is built from the components just written (and a
  # components.py that no longer imports cannot stop its own regeneration).
  from pipelines.kubeflow import batch, distributed, pipeline
  return (write_or_check(pipeline.COMPILED_PATH, pipeline.compile_text(), args.check, REGENERATE)
          or write_or_check(distributed.COMPILED_PATH,
                            pipeline.compile_text(distributed.deeplab_distributed_pipeline),
                            args.check, REGENERATE)
          or write_or_check(batch.COMPILED_PATH, pipeline.compile_text(batch.deeplab_batch_pipeline),
                            args.check, REGENERATE))


if __name__ == '__main__':
  sys.exit(main())
