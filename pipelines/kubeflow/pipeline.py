"""The DeepLab pipeline for Kubeflow Pipelines (kfp 2): build data, sweep the learning rate, keep the best.

Compiled to pipelines/kubeflow/pipeline.yaml by `python -m pipelines.kubeflow`.

raw data (importer) -> build_data -> ParallelFor(base_learning_rates): train -> evaluate
  -> select_best (highest mIoU) -> export -> predict on the images (importer)

Every task runs the step components (pipelines/kubeflow/components.py, generated from the SPECs) in
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

from pipelines.kubeflow import components
from pipelines.kubeflow.step_component import input_default
from pipelines.shared import PROJECT_IMAGE, SPECS, SWEEP_LEARNING_RATES

COMPILED_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pipeline.yaml')


def _train_default(name: str):
  return input_default(SPECS['train'].parameter(name))


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def select_best(
    checkpoints: Input[List[Model]],
    evaluations: Input[List[Artifact]],
    learning_rates: List[float],
    best: Output[Model],
    metrics: Output[Metrics],
) -> float:
  """Copies the checkpoint whose evaluation has the highest mIoU (evaluate's rule); returns that mIoU.

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
  metrics.log_metric('best_miou', scores[index])
  metrics.log_metric('best_base_learning_rate', learning_rates[index])
  for learning_rate, score in zip(learning_rates, scores):
    metrics.log_metric(f'miou_at_lr_{learning_rate}', score)
  return scores[index]


def _in_image(task, image):
  task.set_container_image(image)
  return task


@dsl.pipeline(name='deeplab-train-sweep', description=__doc__.split('\n')[0])
def deeplab_pipeline(
    raw_data_uri: str,
    images_uri: str,
    image: str = PROJECT_IMAGE,
    dataset: str = SPECS['build_data'].parameter('dataset').default,
    base_learning_rates: List[float] = list(SWEEP_LEARNING_RATES),
    model_variant: str = _train_default('model_variant'),
    depth_multiplier: float = _train_default('depth_multiplier'),
    training_number_of_steps: int = _train_default('training_number_of_steps'),
    train_batch_size: int = _train_default('train_batch_size'),
    train_crop_size: str = _train_default('train_crop_size'),
    log_steps: int = _train_default('log_steps'),
) -> float:
  """Returns the mIoU of the checkpoint that was exported."""
  raw_data = dsl.importer(artifact_uri=raw_data_uri, artifact_class=dsl.Dataset, reimport=False)
  raw_data.set_display_name('raw data')
  images = dsl.importer(artifact_uri=images_uri, artifact_class=dsl.Dataset, reimport=False)
  images.set_display_name('images')
  build = _in_image(components.build_data(raw_data=raw_data.output, dataset=dataset), image)
  build.set_cpu_request('2').set_memory_request('4G')
  with dsl.ParallelFor(base_learning_rates, parallelism=4) as learning_rate:
    train = _in_image(components.train(
        tfrecords=build.outputs['output'], base_learning_rate=learning_rate, model_variant=model_variant,
        depth_multiplier=depth_multiplier, training_number_of_steps=training_number_of_steps,
        train_batch_size=train_batch_size, train_crop_size=train_crop_size, log_steps=log_steps), image)
    train.set_accelerator_type('nvidia.com/gpu').set_accelerator_limit(1)
    train.set_cpu_request('4').set_memory_request('16G').set_memory_limit('32G')
    # Preemptible GPU nodes and transient storage errors: retry rather than fail the sweep.
    train.set_retry(num_retries=2, backoff_duration='60s', backoff_factor=2)
    evaluate = _in_image(components.evaluate(tfrecords=build.outputs['output'],
                                             checkpoint=train.outputs['output']), image)
    evaluate.set_cpu_request('2').set_memory_request('8G')
  best = _in_image(select_best(checkpoints=dsl.Collected(train.outputs['output']),
                               evaluations=dsl.Collected(evaluate.outputs['output']),
                               learning_rates=base_learning_rates), image)
  best.set_cpu_request('1').set_memory_request('1G')
  export = _in_image(components.export(checkpoint=best.outputs['best']), image)
  export.set_cpu_request('2').set_memory_request('8G')
  predict = _in_image(components.predict(model=export.outputs['output'], images=images.output), image)
  predict.set_cpu_request('2').set_memory_request('8G')
  return best.outputs['Output']


def compile_text(pipeline_function=deeplab_pipeline) -> str:
  """The compiled pipeline (IR YAML) of a @dsl.pipeline function."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'pipeline.yaml')
    compiler.Compiler().compile(pipeline_function, path)
    with open(path) as f:
      return f.read()

