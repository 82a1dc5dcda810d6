"""Where a training step runs: its replicas on this machine's devices and on other machines.

One process trains on every visible GPU (or one CPU device) with `tf.compat.v1.distribute`'s
MirroredStrategy; with a cluster in the `TF_CONFIG` environment variable (TensorFlow's format,
which the orchestrators set: pipelines/) it trains with the other processes of
the cluster through MultiWorkerMirroredStrategy. Variables keep their plain names either way, so a
checkpoint is the same as one saved by a single device.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from typing import Dict, List, Optional

from deeplab.compat import tf
from deeplab.errors import UserError

log = logging.getLogger(__name__)

# Task types that train (TF_CONFIG may also name an evaluator or parameter servers; they do not).
TRAINING_TASK_TYPES = ('chief', 'worker')


@dataclasses.dataclass(frozen=True)
class Cluster:
  """This process's place in a multi-machine training job.

  `workers` lists the training tasks' host:port in rank order (the `chief` task first when there
  is one); `rank` is this process's index in it, and rank 0 is the chief: it restores, saves and
  reports for the whole job.
  """
  spec: Dict[str, List[str]]
  task_type: str
  task_index: int

  @property
  def workers(self) -> List[str]:
    return [address for task in TRAINING_TASK_TYPES for address in self.spec.get(task, ())]

  @property
  def rank(self) -> int:
    if self.task_type == 'chief':
      return self.task_index
    return len(self.spec.get('chief', ())) + self.task_index

  @property
  def is_chief(self) -> bool:
    return self.rank == 0

  @classmethod
  def from_environment(cls) -> Optional['Cluster']:
    """The cluster of `TF_CONFIG`, or None when it names no cluster of more than one worker."""
    text = os.environ.get('TF_CONFIG', '').strip()
    if not text:
      return None
    try:
      config = json.loads(text)
      cluster = cls({task: list(addresses) for task, addresses in config['cluster'].items()},
                    config['task']['type'], int(config['task']['index']))
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f'TF_CONFIG is not a cluster description ({e}): {text[:200]}') from None
    if cluster.task_type not in TRAINING_TASK_TYPES:
      raise UserError(f'TF_CONFIG: task type {cluster.task_type!r} does not train; this step runs '
                      f'as one of {", ".join(TRAINING_TASK_TYPES)}')
    if not 0 <= cluster.task_index < len(cluster.spec.get(cluster.task_type, ())):
      raise UserError(f'TF_CONFIG: task {cluster.task_type} {cluster.task_index} is not in the '
                      f'cluster {cluster.spec}')
    return cluster if len(cluster.workers) > 1 else None


def local_devices(num_replicas: int) -> List[str]:
  """The devices of this process's replicas: `num_replicas` GPUs (0 = every visible GPU).

  Without GPUs, one CPU device; a number above 1 then means that many logical CPU devices (see
  `session_config`), which trains slower than one and is there to test and measure the
  replication itself.
  """
  # The physical listing: it allocates no GPU memory, as a session built later will.
  gpus = [f'/gpu:{i}' for i in range(len(tf.config.list_physical_devices('GPU')))]
  if gpus:
    if num_replicas > len(gpus):
      raise UserError(f'--num_replicas={num_replicas}: this machine has {len(gpus)} GPU(s)')
    return gpus[:num_replicas or len(gpus)]
  return [f'/cpu:{i}' for i in range(max(num_replicas, 1))]


def session_config(devices: List[str]) -> tf.compat.v1.ConfigProto:
  """A session that sees one logical CPU device per CPU replica."""
  cpus = sum(d.startswith('/cpu') for d in devices)
  config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
  if cpus > 1:
    config.device_count['CPU'] = cpus
  return config


def strategy_for(devices: List[str], cluster: Optional[Cluster]):
  """The tf.distribute strategy of a training graph (build it inside that graph).

  One device and no cluster: TensorFlow's default strategy, so the graph is exactly the
  single-device graph. Else mirrored over `devices`, and over the cluster's workers with one.
  """
  if cluster:
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster.spec), task_type=cluster.task_type,
        task_id=cluster.task_index,
        num_accelerators={'GPU': sum(d.startswith('/gpu') for d in devices)})
    return tf.compat.v1.distribute.experimental.MultiWorkerMirroredStrategy(
        cluster_resolver=resolver)
  if len(devices) == 1:
    return tf.distribute.get_strategy()
  return tf.compat.v1.distribute.MirroredStrategy(devices)


def start_server(strategy, cluster: Cluster, config, startup_timeout: float):
  """Starts this worker's server and waits until every other worker's accepts connections.

  Returns the server (its `target` is the session's; keep it while training). A worker that is not up within `startup_timeout` seconds ends the
  start with a UserError naming it, instead of collective ops waiting for it forever.
  """
  server = tf.distribute.Server(tf.train.ClusterSpec(cluster.spec), job_name=cluster.task_type,
                                task_index=cluster.task_index,
                                config=strategy.update_config_proto(config), start=True)
  deadline = time.monotonic() + startup_timeout
  for rank, address in enumerate(cluster.workers):
    if rank == cluster.rank:
      continue
    host, port = address.rsplit(':', 1)
    while True:
      try:
        socket.create_connection((host, int(port)), timeout=5).close()
        break
      except OSError:
        if time.monotonic() > deadline:
          raise UserError(f'worker {rank} of {len(cluster.workers)} ({address}) did not start '
                          f'within {startup_timeout:g} s; check that its machine is up and '
                          'reachable from this one') from None
        time.sleep(1)
  log.info('all %d workers are up', len(cluster.workers))
  return server


def all_reduce(reduce_op, value):
  """`value` (a tensor) reduced over all replicas, in a replica context; no gradient.

  Not `ReplicaContext.all_reduce`: its gradient wrapper (tf.custom_gradient) fails in graph mode
  when the other replicas read variables while it waits for them, as a model's layers do.
  """
  return tf.distribute.get_replica_context().merge_call(
      lambda strategy, v: strategy.extended.reduce_to(reduce_op, v, destinations=v), args=(value,))


def replica_id(context) -> int:
  """The replica's index in its sync group as a Python int.

  `ReplicaContext.replica_id_in_sync_group` is a constant Tensor, and in graph mode a Tensor's
  `==` and `!=` compare identities, never values: `id != 0` is True on every replica.
  """
  value = tf.get_static_value(context.replica_id_in_sync_group)
  if value is None:
    raise RuntimeError('the replica id is not a constant in this strategy')
  return int(value)


def copy_from_chief(strategy, variables):
  """An op that sets every replica's copy of `variables` to the chief's first replica's.

  After the chief alone restored a checkpoint, this gives every worker the same weights (one
  all-reduce in which the other replicas contribute zeros). Numeric variables only; integers
  (the step count) travel as float32, exact below 2**24.
  """
  def replica_values():
    context = tf.distribute.get_replica_context()
    flat = tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in variables], 0)
    if replica_id(context) != 0:
      flat = tf.zeros_like(flat)
    return all_reduce(tf.distribute.ReduceOp.SUM, flat)

  with strategy.scope():
    per_replica = strategy.extended.call_for_each_replica(replica_values)
  sizes = [v.shape.num_elements() for v in variables]
  assignments = []
  for replica, flat in enumerate(strategy.experimental_local_results(per_replica)):
    for variable, value in zip(variables, tf.split(flat, sizes)):
      copy = strategy.experimental_local_results(variable)[replica]
      assignments.append(copy.assign(tf.cast(tf.reshape(value, variable.shape), variable.dtype)))
  return tf.group(assignments)
