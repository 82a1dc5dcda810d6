"""Batch prediction for Kubeflow Pipelines (kfp 2): predict over shards of an image set at once, then
merge them into one predictions artifact.

Compiled to pipelines/kubeflow/batch_pipeline.yaml by `python -m pipelines.kubeflow`.

model (importer), images (importer) -> ParallelFor(shard_indices(num_shards)): predict shard i of n
  -> merge_predictions (all the shards, dsl.Collected)

The tasks are the batch graph's (pipelines/graph.py BATCH_NODES, fanned out as BATCH says): the
predict component of components.py, generated from its SPEC, once per shard index, and
merge_predictions, which takes the list of shard artifacts. `num_shards` is a pipeline argument: the
loop iterates the indices a small task lists from it. Inputs come in by URI, as in pipeline.py.
"""
# No `from __future__ import annotations`: kfp reads the component annotations as types.

import os
from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from pipelines import graph
from pipelines.graph import BATCH, IMAGES, MODEL
from pipelines.kubeflow import components
from pipelines.kubeflow.pipeline import _imported
from pipelines.shared import PROJECT_IMAGE

COMPILED_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'batch_pipeline.yaml')
# What each task asks of a cluster (kfp.local ignores it): CPU and memory requests.
REQUESTS = {'predict': ('2', '8G'), 'merge_predictions': ('1', '2G'), 'shard_indices': ('1', '256M')}
# Shards running at once: a cluster's share for one batch job.
SHARD_PARALLELISM = 16


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def shard_indices(num_shards: int) -> List[int]:
  """0 .. num_shards - 1: the items of the fan-out."""
  return list(range(num_shards))


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def merge_predictions(shards: Input[List[Dataset]], output: Output[Dataset], metrics: Output[Metrics]):
  """Merge the predictions of predict shards into the predictions of one run."""
  import os
  import shutil
  import tempfile
  from pipelines.kubeflow.step_component import run_step
  # The step reads the shard artifacts from one folder: links (or copies) of KFP's files, named by
  # position since KFP names every one `output`.
  with tempfile.TemporaryDirectory() as folder:
    for i, shard in enumerate(shards):
      target = os.path.join(folder, f'shard-{i:05d}')
      try:
        os.link(shard.path, target)
      except OSError:  # another file system
        shutil.copyfile(shard.path, target)
    run_step('merge_predictions', {'shards': folder, 'output': output, 'metrics': metrics})


def _on_cluster(task, step: str, image):
  task.set_container_image(image)
  cpu, memory = REQUESTS[step]
  return task.set_cpu_request(cpu).set_memory_request(memory)


@dsl.pipeline(name='deeplab-batch-predict', description=__doc__.split('\n')[0])
def deeplab_batch_pipeline(
    model_uri: str,
    images_uri: str,
    num_shards: int = BATCH.shards,
    image: str = PROJECT_IMAGE,
    images_mount: str = '',
):
  """`images_mount`: predict's --images_mount (comma-separated), for a list file of URLs."""
  given = {MODEL: _imported(model_uri, 'model', dsl.Model), IMAGES: _imported(images_uri, 'images')}
  fanned = next(node for node in graph.BATCH_NODES if node.step == BATCH.node)
  indices = _on_cluster(shard_indices(num_shards=num_shards), 'shard_indices', image)
  with dsl.ParallelFor(indices.output, parallelism=SHARD_PARALLELISM) as index:
    inputs = {name: given[source] for name, source in fanned.inputs.items()}
    shard = _on_cluster(getattr(components, BATCH.node)(
        **inputs, num_shards=num_shards, shard_index=index, images_mount=images_mount),
        BATCH.node, image)
  _on_cluster(merge_predictions(**{BATCH.into: dsl.Collected(shard.outputs['output'])}),
              BATCH.merged_by, image)
