"""Replicated training: two logical CPU devices train as one device does; two worker processes too;
mixed precision; the cluster descriptions Valohai and Kubeflow get."""
import json
import os
import signal
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import REPO

# Tiny, so that a graph of two replicas builds in seconds on two cores.
CROP = 33
BATCH = 8
STEPS = 2


def _batch():
  rng = np.random.RandomState(0)
  images = rng.uniform(-1, 1, (BATCH, CROP, CROP, 3)).astype(np.float32)
  labels = rng.randint(0, 4, (BATCH, CROP, CROP)).astype(np.int32)
  return images, labels


def _configs(**train):
  from deeplab.config import ModelConfig, TrainConfig
  # No dropout: its random masks differ between one device and two replicas.
  return (ModelConfig(num_classes=4, depth_multiplier=0.25, dropout_keep_prob=1.0),
          TrainConfig(train_batch_size=BATCH, train_crop_size=(CROP, CROP), base_learning_rate=0.01,
                      batch_norm_decay=0.9, **train))


def _train_in_memory(devices, start_from, steps=STEPS, **train):
  """Trains on the same in-memory batch from the checkpoint `start_from` (saved there when absent);
  returns the losses of `steps` steps and the variables by name after the first step."""
  from deeplab import distribute, training
  from deeplab.compat import tf
  model_config, train_config = _configs(**train)
  images, labels = _batch()
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(0)  # the same start weights in every run of the tests
    strategy = distribute.strategy_for(devices, None)
    ops = training.build_train_graph(model_config, train_config, tf.constant(images),
                                     tf.constant(labels), 255, strategy=strategy)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session(config=distribute.session_config(devices)) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      if os.path.exists(start_from + '.index'):
        saver.restore(session, start_from)
      else:
        saver.save(session, start_from)
      return _train_steps(session, ops, steps,
                          {v.op.name: v for v in tf.compat.v1.global_variables()})


def _train_steps(session, ops, steps, variables):
  """The losses of `steps` training steps and the values of `variables` (a dict of them) after the
  first. Updates are compared after one step only: on this tiny network a change of 1e-4 to the
  weights changes the next step's update by about 5% (measured), so the rounding differences of
  the first step make any later update a poor measure of the replicas' arithmetic; the losses of
  the later steps still show a wrong update."""
  losses, first = [], None
  for _ in range(steps):
    losses.append(float(session.run([ops['step'], ops['total_loss']])[1]))
    # One run for all: each new fetch of a session prunes and optimises the graph again.
    first = first or session.run(variables)
  return losses, first


def _assert_same_updates(start_from, expected, actual):
  """The variables moved from their values in the checkpoint `start_from` as in `expected`.

  Compared as one vector of every variable's change (relative L2), and the moving variances one
  by one: single elements are no measure, since some gradients are zero up to rounding (the beta
  of a batch norm whose output another batch norm normalises) and a change of 1e-6 to a weight
  near 1 is below float32's resolution. Measured after one step of 2 synchronised replicas: 0.1% at
  most over several start weights (0.0006% with the tests' seed); without synchronised batch
  norm: 53%.
  """
  from deeplab.compat import tf
  reader = tf.compat.v1.train.NewCheckpointReader(start_from)
  changes = {name: (value - reader.get_tensor(name), actual[name] - reader.get_tensor(name))
             for name, value in expected.items() if name != 'global_step'}
  error = np.sqrt(sum(np.sum((e - a) ** 2) for e, a in changes.values()) /
                  sum(np.sum(e ** 2) for e, _ in changes.values()))
  assert error < 0.01, f'the updates differ by {error:.2%}'
  for name, (e, a) in changes.items():
    if name.endswith('moving_variance'):
      assert np.linalg.norm(e - a) <= 0.01 * np.linalg.norm(e), name


@pytest.fixture(scope='module')
def one_device(tmp_path_factory):
  start = str(tmp_path_factory.mktemp('start') / 'model.ckpt')
  return start, _train_in_memory(['/cpu:0'], start)


@pytest.mark.heavy
def test_two_replicas_train_like_one_device_with_the_whole_batch(one_device):
  start, (losses, weights) = one_device
  mirrored_losses, mirrored_weights = _train_in_memory(['/cpu:0', '/cpu:1'], start)
  assert sorted(mirrored_weights) == sorted(weights)  # plain names: checkpoints interchange
  np.testing.assert_allclose(mirrored_losses, losses, rtol=1e-4)
  # Synchronised batch norm: the moving statistics are those of the whole batch.
  _assert_same_updates(start, weights, mirrored_weights)


@pytest.mark.heavy
def test_bfloat16_trains_close_to_float32_with_float32_variables(one_device):
  start, (losses, weights) = one_device
  bf16_losses, bf16_weights = _train_in_memory(['/cpu:0'], start, precision='bfloat16')
  assert {name: w.dtype for name, w in bf16_weights.items()} == {
      name: w.dtype for name, w in weights.items()}
  assert all(np.isfinite(bf16_losses))
  np.testing.assert_allclose(bf16_losses, losses, rtol=0.02)


@pytest.mark.process
def test_valohai_distributed_config_becomes_tf_config(tmp_path, monkeypatch):
  """The file a Valohai distributed task of two members gets (the format valohai-utils reads)."""
  members = [{'announce_time': '2026-01-01T00:00:0%dZ' % i, 'identity': f'worker-{i}',
              'job_id': f'job-{i}', 'member_id': str(i),
              'network': {'exposed_ports': {}, 'local_ips': [f'10.0.0.{10 + i}'],
                          'public_ips': [f'1.2.3.{i}']}} for i in (1, 0)]
  (tmp_path / 'distributed.json').write_text(json.dumps({
      'config': {'group_name': 'task-123', 'member_id': '1', 'required_count': 2},
      'members': members}))
  monkeypatch.setenv('VH_CONFIG_DIR', str(tmp_path))
  monkeypatch.delenv('TF_CONFIG', raising=False)
  import valohai
  valohai.distributed.flush_state()
  from pipelines.valohai import tf_config as valohai_tf_config
  line = valohai_tf_config.export_line()
  valohai.distributed.flush_state()
  # What valohai.yaml's `eval "$(...)"` does with the line, in a shell.
  exported = subprocess.run(['sh', '-c', line + ' && printf %s "$TF_CONFIG"'], capture_output=True,
                            text=True, check=True).stdout
  tf_config = json.loads(exported)
  monkeypatch.setenv('TF_CONFIG', exported)
  assert tf_config == {'cluster': {'worker': ['10.0.0.10:2222', '10.0.0.11:2222']},
                       'task': {'type': 'worker', 'index': 1}}
  from deeplab.distribute import Cluster
  assert Cluster.from_environment().rank == 1 and not Cluster.from_environment().is_chief


def test_tf_config_with_a_chief_ranks_it_first(monkeypatch):
  from deeplab.distribute import Cluster
  monkeypatch.setenv('TF_CONFIG', json.dumps({
      'cluster': {'chief': ['a:1'], 'worker': ['b:1', 'c:1']}, 'task': {'type': 'worker', 'index': 1}}))
  cluster = Cluster.from_environment()
  assert cluster.workers == ['a:1', 'b:1', 'c:1'] and cluster.rank == 2
  monkeypatch.setenv('TF_CONFIG', json.dumps({'cluster': {'worker': ['a:1']},
                                              'task': {'type': 'worker', 'index': 0}}))
  assert Cluster.from_environment() is None  # one worker: trains as a single process


def test_kubeflow_tfjob_manifest_validates_with_the_training_sdk():
  pytest.importorskip('kubeflow.training')
  from kubeflow.training import models
  from kubeflow.training.api_client import ApiClient
  from pipelines.kubeflow import tfjob
  manifest = tfjob.manifest('deeplab-train', image='deeplab-pipelines:1', workers=3,
                            gpus_per_worker=2, volume_claim='deeplab-data',
                            arguments=['--tfrecords=/data/tfrecords.tar.gz',
                                       '--output=/data/checkpoint.tar.gz', '--num_replicas=2'])
  # The SDK's own reading of a TFJob from the API server's JSON (its model classes check types).
  job = ApiClient().deserialize(SimpleNamespace(data=json.dumps(manifest)), 'KubeflowOrgV1TFJob')
  assert isinstance(job, models.KubeflowOrgV1TFJob)
  assert ApiClient().sanitize_for_serialization(job) == manifest  # nothing unknown was dropped
  specs = job.spec.tf_replica_specs
  assert set(specs) == {'Chief', 'Worker'} and specs['Worker'].replicas == 2
  container = specs['Chief'].template.spec.containers[0]
  assert container.name == 'tensorflow'  # the TFJob operator's required container name
  assert container.command[:3] == ['python', '-m', 'steps.train']
  assert container.resources.limits == {'nvidia.com/gpu': '2'}
  with pytest.raises(ValueError, match='--num_gpus=2'):
    tfjob.check_train_flags(['--num_gpus=2'])


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _tf_configs(workers):
  addresses = [f'127.0.0.1:{port}' for port in _free_ports(workers)]
  return [json.dumps({'cluster': {'worker': addresses}, 'task': {'type': 'worker', 'index': i}})
          for i in range(workers)]


def _worker_in_memory(start_from, result_path):
  """One worker of a two-worker job (TF_CONFIG) on its half of the in-memory batch."""
  from deeplab import distribute, training
  from deeplab.compat import tf
  cluster = distribute.Cluster.from_environment()
  model_config, train_config = _configs()
  images, labels = _batch()
  half = slice(cluster.rank * BATCH // 2, (cluster.rank + 1) * BATCH // 2)
  with tf.Graph().as_default():
    devices = distribute.local_devices(1)
    strategy = distribute.strategy_for(devices, cluster)
    ops = training.build_train_graph(model_config, train_config, tf.constant(images[half]),
                                     tf.constant(labels[half]), 255, strategy=strategy)
    copy = distribute.copy_from_chief(strategy, tf.compat.v1.global_variables())
    saver = tf.compat.v1.train.Saver()
    config = distribute.session_config(devices)
    server = distribute.start_server(strategy, cluster, config, 120)
    with tf.compat.v1.Session(server.target,
                              config=strategy.update_config_proto(config)) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      if cluster.is_chief:
        saver.restore(session, start_from)  # only the chief has it; the copy brings it to all
      session.run(copy)
      losses, weights = _train_steps(
          session, ops, STEPS,
          {v.op.name.replace('/', '|'): v for v in tf.compat.v1.global_variables()})
      np.savez(result_path, losses=losses, **weights)


def _environment(**extra):
  return dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2', **extra)


@pytest.mark.process
def test_two_worker_processes_train_like_one_device(one_device, tmp_path):
  start, (losses, weights) = one_device
  script = ('import sys; from tests.deeplab.test_distribute import _worker_in_memory; '
            '_worker_in_memory(sys.argv[1], sys.argv[2])')
  workers = [subprocess.Popen([sys.executable, '-c', script, start, str(tmp_path / f'{i}.npz')],
                              cwd=REPO, env=_environment(TF_CONFIG=config),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, config in enumerate(_tf_configs(2))]
  for worker in workers:
    output = worker.communicate(timeout=600)[0]
    assert worker.returncode == 0, output[-3000:]
  for i in range(2):
    result = np.load(tmp_path / f'{i}.npz')
    np.testing.assert_allclose(result['losses'], losses, rtol=1e-4)
    _assert_same_updates(start, weights, {name: result[name.replace('/', '|')] for name in weights})


def _start_workers(tfrecords, folder, configs, total, timeout=30):
  return [subprocess.Popen(
      [sys.executable, '-m', 'steps.train', f'--tfrecords={tfrecords}',
       f'--output={folder / f"checkpoint-{i}.tar.gz"}', f'--train_logdir={folder / "runs"}',
       f'--training_number_of_steps={total}', '--save_interval_steps=3', f'--worker_timeout={timeout}',
       '--depth_multiplier=0.25', f'--train_crop_size={CROP},{CROP}', '--train_batch_size=4',
       '--log_steps=1', '--min_scale_factor=1', '--max_scale_factor=1'],
      cwd=folder, env=_environment(TF_CONFIG=config), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i, config in enumerate(configs)]


def _metric_lines(output):
  return [json.loads(line) for line in output.splitlines() if line.startswith('{')]


def _wait_for_step(chief, step):
  """Reads the chief's metric lines until one reports `step` (or later); returns that step."""
  for line in chief.stdout:
    if line.startswith('{') and json.loads(line).get('step', 0) >= step:
      return json.loads(line)['step']
  raise AssertionError(f'the chief ended before step {step}: {chief.stderr.read()[-2000:]}')


# Four training processes, a minute and a half of two cores: CI runs it with the other slow runs
# (make test-slow), which keeps make test under 8 minutes.
@pytest.mark.slow
def test_a_killed_worker_fails_the_job_clearly_and_a_restart_resumes(tiny_tfrecords, tmp_path):
  configs = _tf_configs(2)
  # The chief notices the lost worker when its step times out: --worker_timeout, shorter here than
  # the 30 s of the other runs (the machine starts both workers at once, well within it).
  chief, worker = _start_workers(tiny_tfrecords, tmp_path, configs, total=9, timeout=15)
  _wait_for_step(chief, 4)  # past the step-3 checkpoint
  worker.kill()
  worker.wait()
  chief.wait(timeout=300)
  stderr = chief.stderr.read()
  assert chief.returncode != 0
  assert 'did not finish on all 2 workers' in stderr and 'start the job again' in stderr, stderr[-2000:]

  chief, worker = _start_workers(tiny_tfrecords, tmp_path, configs, total=9, timeout=15)
  chief_out, chief_err = chief.communicate(timeout=600)
  worker_out, worker_err = worker.communicate(timeout=60)
  assert chief.returncode == 0 and worker.returncode == 0, (chief_err + worker_err)[-3000:]
  metrics = _metric_lines(chief_out)
  assert metrics[0]['resumed_from_step'] >= 3
  assert metrics[-1]['global_step'] == 9
  assert (tmp_path / 'checkpoint-0.tar.gz').exists()
  assert not (tmp_path / 'checkpoint-1.tar.gz').exists()  # only the chief writes the artifact
  assert 'worker 1 of 2' in worker_err and not _metric_lines(worker_out)


@pytest.mark.process
def test_a_worker_that_never_starts_is_named_after_the_timeout(tiny_tfrecords, tmp_path):
  configs = _tf_configs(2)
  chief = _start_workers(tiny_tfrecords, tmp_path, configs[:1], total=12, timeout=3)[0]
  stderr = chief.communicate(timeout=300)[1]
  worker_address = json.loads(configs[1])['cluster']['worker'][1]
  assert chief.returncode != 0
  assert (f'error: worker 1 of 2 ({worker_address}) did not start within 3 s' in stderr), stderr[-2000:]
  assert not list(tmp_path.glob('checkpoint-*'))


@pytest.mark.slow
def test_a_sigterm_to_a_worker_stops_every_worker_with_a_checkpoint_of_the_chief(tiny_tfrecords,
                                                                                tmp_path):
  chief, worker = _start_workers(tiny_tfrecords, tmp_path, _tf_configs(2), total=100)
  _wait_for_step(chief, 2)
  worker.send_signal(signal.SIGTERM)
  chief_err = chief.communicate(timeout=300)[1]
  worker_err = worker.communicate(timeout=60)[1]
  assert chief.returncode == worker.returncode == 128 + signal.SIGTERM, (chief_err + worker_err)[-3000:]
  assert 'training stopped at step' in chief_err and 'training stopped at step' in worker_err
  stopped_at = int(chief_err.split('training stopped at step ')[1].split(';')[0])
  from deeplab import checkpoint
  run_folder, = (tmp_path / 'runs').iterdir()
  assert checkpoint.latest_prefix(str(run_folder)).endswith(f'-{stopped_at}')
  assert not list(tmp_path.glob('checkpoint-*'))  # a stopped run leaves no artifact


def test_valohai_has_a_distributed_train_task_in_a_pipeline():
  import valohai_yaml
  with open(REPO / 'valohai.yaml') as f:
    config = valohai_yaml.parse(f)
  task = config.tasks['train-distributed']
  assert task.type.value == 'distributed' and task.step == 'train' and task.execution_count >= 2
  nodes = {node.name: node for node in config.pipelines['distributed-train-evaluate-export'].nodes}
  assert nodes['train'].type == 'task' and nodes['train'].task == 'train-distributed'


def _demo_flags(section):
  """The demo's flags of one step, from params.yaml (as `dvc repro` passes them)."""
  import yaml
  with open(REPO / 'params.yaml') as f:
    values = yaml.safe_load(f)[section]
  return [f'--{key}=' + (','.join(map(str, value)) if isinstance(value, list)
                         else str(value).lower() if isinstance(value, bool) else str(value))
          for key, value in values.items()]


@pytest.mark.slow
def test_bfloat16_trains_the_demo_to_the_miou_of_float32(tmp_path):
  """The issue's bound: bfloat16 compute within 0.03 val mIoU of float32 on the demo (measured
  0.750 against 0.744)."""
  from tests.conftest import run_module, run_step
  run_module('deeplab.datasets.synthetic', '--layout=folder', f'--output={tmp_path / "raw"}',
             '--seed=0')
  tfrecords = tmp_path / 'tfrecords.tar.gz'
  run_step('build_data', *_demo_flags('build_data'), f'--raw_data={tmp_path / "raw"}',
           f'--output={tfrecords}')
  miou = {}
  for precision in ('float32', 'bfloat16'):
    checkpoint = tmp_path / f'{precision}.tar.gz'
    run_step('train', *_demo_flags('train'), f'--precision={precision}', f'--tfrecords={tfrecords}',
             f'--output={checkpoint}', cwd=tmp_path, timeout=1800)
    run_step('evaluate', *_demo_flags('evaluate'), f'--tfrecords={tfrecords}',
             f'--checkpoint={checkpoint}', f'--output={tmp_path / precision}.json', cwd=tmp_path)
    with open(tmp_path / f'{precision}.json') as f:
      miou[precision] = json.load(f)['miou']
  assert miou['float32'] > 0.5  # it learned
  assert abs(miou['bfloat16'] - miou['float32']) <= 0.03, miou
