"""TF_CONFIG for a training on several machines, from the orchestrator that started them.

Kubeflow's TFJob sets TF_CONFIG itself. A Valohai distributed task does not: it writes its members
(their ids and addresses) to /valohai/config/distributed.json, which valohai-utils reads; this
module turns that into TF_CONFIG, rank 0 (Valohai's master) being the chief.
"""
import json
import logging
import os

log = logging.getLogger(__name__)

# The port each worker's TensorFlow server listens on; workers of a Valohai task share a network.
WORKER_PORT = 2222


def tf_config_from_valohai(distributed) -> dict:
  """TF_CONFIG of this member of a Valohai distributed task (`valohai.distributed`)."""
  members = sorted(distributed.members(), key=lambda member: member.rank)
  return {'cluster': {'worker': [f'{m.primary_local_ip}:{WORKER_PORT}' for m in members]},
          'task': {'type': 'worker', 'index': distributed.rank}}


def set_tf_config_from_orchestrator() -> None:
  """Sets TF_CONFIG for a Valohai distributed task, unless TF_CONFIG is set already."""
  if os.environ.get('TF_CONFIG'):
    return
  import valohai
  if not valohai.distributed.is_distributed_task():
    return
  config = tf_config_from_valohai(valohai.distributed)
  os.environ['TF_CONFIG'] = json.dumps(config)
  log.info('Valohai distributed task %s: TF_CONFIG=%s', valohai.distributed.group_name,
           os.environ['TF_CONFIG'])
