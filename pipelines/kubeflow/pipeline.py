"""The DeepLab pipeline for Kubeflow Pipelines (kfp 2): build data, sweep the learning rate, keep the best.

Compiled to pipelines/kubeflow/pipeline.yaml by `python -m pipelines.kubeflow`.

raw data (importer) -> build_data -> ParallelFor(base_learning_rates): train -> evaluate
  -> select_best (highest mIoU) -> export -> gate -> predict on the images (importer)

The gate's output is the pipeline's published model: a model below `min_miou` (or, given
`baseline_uri`, more than `max_miou_drop` below the baseline's mIoU) fails the gate task, which ends
the run before predict, so nothing is published.

The tasks and what feeds them are the pipeline graph's (pipelines/graph.py): its nodes in order, the
sweep's node and judge inside the ParallelFor, and the best point's artifact (select_best) to the
nodes after it; the graph's Givens are the imported URIs. Every task runs the step components (pipelines/kubeflow/components.py, generated from the SPECs) in
the project image, which the `image` argument names at run time. Artifacts travel as KFP artifacts;
the steps take their suffix-less paths. Each step's JSON metric lines are logged as KFP metrics. Inputs
come in by URI (`raw_data_uri`, `images_uri`: a local path with kfp.local, an object store URI on a
cluster) because pipeline-level input artifacts cannot be given to a local run.
"""
# No `from __future__ import annotations`: kfp reads the component annotations as types.

import os
import tempfile
from typing import List

from kfp import compiler, dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from pipelines import graph
from pipelines.graph import IMAGES, RAW_DATA, SPECS, SWEEP, Given
from pipelines.kubeflow import components
from pipelines.kubeflow.step_component import input_default
from pipelines.shared import PROJECT_IMAGE

COMPILED_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pipeline.yaml')
# The ParallelFor iterates the sweep's first parameter; the others are one value per run.
SWEPT_PARAMETER = next(iter(SWEEP.grid))


def _train_default(name: str):
  return input_default(SPECS['train'].parameter(name))


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def select_best(
    checkpoints: Input[List[Model]],
    evaluations: Input[List[Artifact]],
    learning_rates: List[float],
    best: Output[Model],
    best_evaluation: Output[Artifact],
    metrics: Output[Metrics],
) -> float:
  """Copies the checkpoint whose evaluation has the highest mIoU (evaluate's rule), and that
  evaluation (export records it in model.json, checked against the checkpoint, and the gate reads
  it); returns that mIoU.

  The three lists are in sweep order (dsl.Collected keeps the ParallelFor order). KFP metrics and
  outputs are numbers: a missing mIoU (no pixel evaluated) is reported as -1.
  """
  import json
  import shutil
  from deeplab.metrics import best_index
  mious = []
  for evaluation in evaluations:
    with open(evaluation.path) as f:
      mious.append(json.load(f)['miou'])
  index = best_index(mious)
  scores = [-1.0 if miou is None else miou for miou in mious]
  shutil.copyfile(checkpoints[index].path, best.path)
  shutil.copyfile(evaluations[index].path, best_evaluation.path)
  metrics.log_metric('best_miou', scores[index])
  metrics.log_metric('best_base_learning_rate', learning_rates[index])
  for learning_rate, score in zip(learning_rates, scores):
    metrics.log_metric(f'miou_at_lr_{learning_rate}', score)
  return scores[index]


# What each task asks of a cluster (kfp.local ignores it): CPU and memory requests by step; train
# also a GPU, a memory limit and retries.
REQUESTS = {'build_data': ('2', '4G'), 'train': ('4', '16G'), 'evaluate': ('2', '8G'), 'select_best': ('1', '1G'),
            'export': ('2', '8G'), 'gate': ('1', '2G'), 'predict': ('2', '8G')}
SWEEP_PARALLELISM = 4


def _on_cluster(task, step: str, image):
  task.set_container_image(image)
  cpu, memory = REQUESTS[step]
  task.set_cpu_request(cpu).set_memory_request(memory)
  if step == 'train':
    task.set_accelerator_type('nvidia.com/gpu').set_accelerator_limit(1).set_memory_limit('32G')
    # Preemptible GPU nodes and transient storage errors: retry rather than fail the sweep.
    task.set_retry(num_retries=2, backoff_duration='60s', backoff_factor=2)
  return task


def _imported(uri, name: str, artifact_class=dsl.Dataset):
  importer = dsl.importer(artifact_uri=uri, artifact_class=artifact_class, reimport=False)
  importer.set_display_name(name)
  return importer.output


@dsl.pipeline(name='deeplab-train-sweep', description=__doc__.split('\n')[0])
def deeplab_pipeline(
    raw_data_uri: str,
    images_uri: str,
    image: str = PROJECT_IMAGE,
    dataset: str = SPECS['build_data'].parameter('dataset').default,
    base_learning_rates: List[float] = list(SWEEP.grid[SWEPT_PARAMETER]),
    model_variant: str = _train_default('model_variant'),
    depth_multiplier: float = _train_default('depth_multiplier'),
    training_number_of_steps: int = _train_default('training_number_of_steps'),
    train_batch_size: int = _train_default('train_batch_size'),
    train_crop_size: str = _train_default('train_crop_size'),
    log_steps: int = _train_default('log_steps'),
    min_miou: float = SPECS['gate'].parameter('min_miou').default,
    max_miou_drop: float = SPECS['gate'].parameter('max_miou_drop').default,
    baseline_uri: str = '',
) -> float:
  """Returns the mIoU of the checkpoint that was exported."""
  given = {RAW_DATA: _imported(raw_data_uri, 'raw data'), IMAGES: _imported(images_uri, 'images')}
  # The step parameters a node takes from the pipeline's arguments.
  settings = {'build_data': {'dataset': dataset},
              'train': {'model_variant': model_variant, 'depth_multiplier': depth_multiplier,
                        'training_number_of_steps': training_number_of_steps,
                        'train_batch_size': train_batch_size, 'train_crop_size': train_crop_size,
                        'log_steps': log_steps},
              'gate': {'min_miou': min_miou, 'max_miou_drop': max_miou_drop}}
  artifacts = {}  # node -> the artifact the nodes downstream get

  def run(node, **extra):
    """The node's task; `extra`: arguments besides its inputs and settings (a sweep point, a baseline)."""
    inputs = {name: given[source] if isinstance(source, Given) else artifacts[source]
              for name, source in node.inputs.items()}
    task = getattr(components, node.step)(**inputs, **settings.get(node.step, {}), **extra)
    artifacts[node.step] = task.outputs['output']
    return _on_cluster(task, node.step, image)

  start = graph.NODES.index(graph.NODE[SWEEP.node])
  for node in graph.NODES[:start]:
    run(node)
  with dsl.ParallelFor(base_learning_rates, parallelism=SWEEP_PARALLELISM) as point:
    swept = run(graph.NODE[SWEEP.node], **{SWEPT_PARAMETER: point})
    judged = run(graph.NODE[SWEEP.judged_by])
  best = _on_cluster(select_best(checkpoints=dsl.Collected(swept.outputs['output']),
                                 evaluations=dsl.Collected(judged.outputs['output']),
                                 learning_rates=base_learning_rates), 'select_best', image)
  artifacts[SWEEP.node] = best.outputs['best']
  judge = graph.NODE[SWEEP.judged_by]
  # What reads the evaluation, and what follows: export (model.json records the evaluation the gate
  # then checks against), the gate, predict; in each branch below, on that branch's evaluation.
  verdict = graph.downstream(judge.step)
  for node in graph.NODES[graph.NODES.index(judge) + 1:]:
    if node not in verdict:
      run(node)
  # Without a baseline they read the sweep's evaluation of the best point; with one, that of the best
  # checkpoint and the baseline evaluated together (the same shards and settings, one task).
  with dsl.If(baseline_uri == '', 'without a baseline'):
    artifacts[judge.step] = best.outputs['best_evaluation']
    for node in verdict:
      run(node)
  with dsl.Else('with a baseline'):
    run(judge, baseline=_imported(baseline_uri, 'baseline', dsl.Model))
    for node in verdict:
      run(node)
  return best.outputs['Output']


def compile_text(pipeline_function=deeplab_pipeline) -> str:
  """The compiled pipeline (IR YAML) of a @dsl.pipeline function."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'pipeline.yaml')
    compiler.Compiler().compile(pipeline_function, path)
    with open(path) as f:
      return f.read()

