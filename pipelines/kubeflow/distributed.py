"""A Kubeflow pipeline that trains on several machines: one task starts a TFJob and waits for it.

Compiled to pipelines/kubeflow/distributed_pipeline.yaml by `python -m pipelines.kubeflow`.

The TFJob (pipelines/kubeflow/tfjob.py) runs the train step on `workers` pods of `gpus_per_worker`
GPUs each; they share the PersistentVolumeClaim `volume_claim`, which holds the TFRecords and
receives the checkpoint. The pipeline's service account needs the right to create TFJobs.
"""
# No `from __future__ import annotations`: kfp reads the component annotations as types.

import os
from typing import List

from kfp import dsl

from pipelines.shared import PROJECT_IMAGE

COMPILED_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'distributed_pipeline.yaml')


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def train_on_tfjob(name: str, image: str, workers: int, gpus_per_worker: int, volume_claim: str,
                   tfrecords: str, output: str, training_flags: List[str], namespace: str,
                   timeout_seconds: int) -> str:
  """Creates the TFJob, waits until it succeeds (fails with its last condition otherwise) and
  returns the checkpoint path on the volume. Paths are relative to the volume."""
  from kubeflow.training import TrainingClient, constants
  from kubernetes import client, config
  from pipelines.kubeflow import tfjob
  arguments = [f'--tfrecords={tfjob.MOUNT_PATH}/{tfrecords}', f'--output={tfjob.MOUNT_PATH}/{output}',
               f'--train_logdir={tfjob.MOUNT_PATH}/.deeplab-train', *training_flags]
  job = tfjob.manifest(name, image, workers, gpus_per_worker, volume_claim, arguments, namespace)
  config.load_incluster_config()
  client.CustomObjectsApi().create_namespaced_custom_object(
      constants.GROUP, constants.VERSION, namespace, constants.TFJOB_PLURAL, job)
  TrainingClient(namespace=namespace, job_kind=constants.TFJOB_KIND).wait_for_job_conditions(
      name, namespace, timeout=timeout_seconds)
  return f'{tfjob.MOUNT_PATH}/{output}'


@dsl.pipeline(name='deeplab-distributed-train', description=__doc__.split('\n')[0])
def deeplab_distributed_pipeline(
    volume_claim: str,
    tfrecords: str = 'tfrecords.tar.gz',
    output: str = 'checkpoint.tar.gz',
    job_name: str = 'deeplab-train',
    image: str = PROJECT_IMAGE,
    workers: int = 2,
    gpus_per_worker: int = 1,
    training_flags: List[str] = ['--training_number_of_steps=30000', '--train_batch_size=16'],
    namespace: str = 'kubeflow',
    timeout_seconds: int = 7 * 24 * 3600,
) -> str:
  """Returns the checkpoint's path on the volume."""
  launch = train_on_tfjob(name=job_name, image=image, workers=workers,
                          gpus_per_worker=gpus_per_worker, volume_claim=volume_claim,
                          tfrecords=tfrecords, output=output, training_flags=training_flags,
                          namespace=namespace, timeout_seconds=timeout_seconds)
  launch.set_container_image(image)
  launch.set_cpu_request('1').set_memory_request('1G')
  return launch.output
