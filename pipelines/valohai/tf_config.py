"""TF_CONFIG for a Valohai distributed task: `eval "$(python -m pipelines.valohai.tf_config)"`.

Kubeflow's TFJob sets TF_CONFIG itself. A Valohai distributed task does not: it writes its members
(their ids and addresses) to /valohai/config/distributed.json, which valohai-utils reads; this
prints the shell line that exports it as TF_CONFIG, rank 0 (Valohai's master) being the chief, and
prints nothing outside a distributed task or when TF_CONFIG is set already. valohai.yaml's train
command runs it first, so the train step itself only knows TensorFlow's TF_CONFIG.
"""
import json
import os
import shlex

# The port each worker's TensorFlow server listens on; workers of a Valohai task share a network.
WORKER_PORT = 2222


def tf_config_from_valohai(distributed) -> dict:
  """TF_CONFIG of this member of a Valohai distributed task (`valohai.distributed`)."""
  members = sorted(distributed.members(), key=lambda member: member.rank)
  return {'cluster': {'worker': [f'{m.primary_local_ip}:{WORKER_PORT}' for m in members]},
          'task': {'type': 'worker', 'index': distributed.rank}}


def export_line() -> str:
  """`export TF_CONFIG='...'` in a Valohai distributed task without TF_CONFIG, else ''."""
  if os.environ.get('TF_CONFIG'):
    return ''
  import valohai
  if not valohai.distributed.is_distributed_task():
    return ''
  return f'export TF_CONFIG={shlex.quote(json.dumps(tf_config_from_valohai(valohai.distributed)))}'


if __name__ == '__main__':
  print(export_line())
