"""Training on several machines from Kubeflow: a TFJob of the Kubeflow Training Operator (v1).

The operator starts a Chief pod and `workers - 1` Worker pods of the train step and gives each its
TF_CONFIG, which steps.train reads (deeplab/distribute.py). The job is built from the SDK's own
model classes (`kubeflow-training`, the Training Operator v1 SDK) and the step's SPEC. Kubeflow's
newer Trainer (v2) has no TensorFlow runtime, so the v1 operator is the one that runs this.

All pods mount one volume (a PersistentVolumeClaim): the TFRecords are read from it, the chief
keeps its resumable run folder and writes the checkpoint artifact there.
"""
from __future__ import annotations

from typing import List

from kubeflow.training import constants, models
from kubernetes import client

from pipelines.graph import SPECS

MOUNT_PATH = '/data'
# A failed pod is started again by the operator; the job resumes from the chief's checkpoint.
RESTARTS = 3


def check_train_flags(flags: List[str]) -> List[str]:
  """`flags` (`--name=value`) when the train step takes every name; refused here, not in a pod."""
  spec = SPECS['train']
  known = {p.name for p in spec.parameters} | {p.name for p in spec.inputs + spec.outputs}
  unknown = [flag for flag in flags if flag.split('=', 1)[0].lstrip('-') not in known]
  if unknown:
    raise ValueError(f'the train step takes no {", ".join(unknown)}')
  return flags


def manifest(name: str, image: str, workers: int, gpus_per_worker: int, volume_claim: str,
             arguments: List[str], namespace: str = 'kubeflow') -> dict:
  """The TFJob (a Kubernetes object as a dict) running `python -m steps.train arguments...`."""
  container = client.V1Container(
      name=constants.TFJOB_CONTAINER, image=image,
      command=['python', '-m', f'steps.{SPECS["train"].name}', *check_train_flags(arguments)],
      resources=client.V1ResourceRequirements(limits={'nvidia.com/gpu': str(gpus_per_worker)})
      if gpus_per_worker else None,
      volume_mounts=[client.V1VolumeMount(name='data', mount_path=MOUNT_PATH)])
  template = client.V1PodTemplateSpec(spec=client.V1PodSpec(
      containers=[container],
      volumes=[client.V1Volume(name='data', persistent_volume_claim=(
          client.V1PersistentVolumeClaimVolumeSource(claim_name=volume_claim)))]))
  replica_specs = {'Chief': models.KubeflowOrgV1ReplicaSpec(
      replicas=1, restart_policy='OnFailure', template=template)}
  if workers > 1:
    replica_specs['Worker'] = models.KubeflowOrgV1ReplicaSpec(
        replicas=workers - 1, restart_policy='OnFailure', template=template)
  job = models.KubeflowOrgV1TFJob(
      api_version=constants.API_VERSION, kind=constants.TFJOB_KIND,
      metadata=client.V1ObjectMeta(name=name, namespace=namespace),
      spec=models.KubeflowOrgV1TFJobSpec(
          tf_replica_specs=replica_specs,
          run_policy=models.KubeflowOrgV1RunPolicy(backoff_limit=RESTARTS,
                                                   clean_pod_policy='None')))
  return client.ApiClient().sanitize_for_serialization(job)
