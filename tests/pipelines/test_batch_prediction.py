"""Batch prediction on the orchestrators: the Valohai batch-predict pipeline and the Kubeflow batch
pipeline are generated from the batch graph, and each, run locally (the local Valohai runner,
kfp.local), merges its shards into the predictions of one unsharded predict run, byte for byte."""
import fnmatch
import os
import subprocess
import sys

import numpy as np
import pytest
import valohai_yaml
import yaml
from PIL import Image

from conftest import REPO, run_step
from pipelines import graph
from pipelines.graph import BATCH
from pipelines.kubeflow import batch as kubeflow_batch
from pipelines.valohai import config as valohai_config
from pipelines.valohai import local
from pipelines.valohai.local import task_points
from steps import artifacts


@pytest.fixture(scope='module')
def batch(tiny_model, tmp_path_factory):
  """Six small images and the predictions of one unsharded run over them."""
  root = tmp_path_factory.mktemp('batch') / 'images'
  root.mkdir()
  rng = np.random.default_rng(1)
  for i in range(6):
    Image.fromarray(rng.integers(0, 255, (36 + i, 44, 3), dtype=np.uint8)).save(root / f'p{i}.png')
  whole = root.parent / 'whole' / 'predictions.tar.gz'
  run_step('predict', f'--model={tiny_model}', f'--images={root}', f'--output={whole}')
  return {'images': root, 'whole': whole, 'model': tiny_model}


def _run(command, cwd):
  # The runners start `python` from PATH: this interpreter's.
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2',
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
  result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_valohai_batch_pipeline_is_a_task_node_over_the_shards_then_a_merge():
  with open(valohai_config.CONFIG_PATH) as f:
    config = valohai_yaml.parse(f)
  pipeline = config.pipelines[valohai_config.BATCH_PIPELINE]
  predict, merge = pipeline.nodes
  assert (predict.type, merge.type, merge.step) == ('task', 'execution', 'merge-predictions')
  task = config.tasks[predict.task]
  assert task.step == 'predict'
  assert task_points(task) == [{'num_shards': BATCH.shards, 'shard_index': i}
                               for i in range(BATCH.shards)]
  (edge,) = pipeline.edges
  assert edge.target == 'merge-predictions.input.shards'
  # Every shard's file, with its own name (Valohai keeps one file of a name in an input folder).
  names = {artifacts.Predictions.shard_filename(i, BATCH.shards) for i in range(BATCH.shards)}
  assert len(names) == BATCH.shards and all(fnmatch.fnmatch(n, edge.source_key) for n in names)
  assert valohai_config.main(['--check']) == 0


@pytest.mark.process
def test_valohai_batch_pipeline_runs_locally_and_merges_to_one_run(batch, tmp_path):
  run_dir = tmp_path / 'run'
  _run([sys.executable, '-m', 'pipelines.valohai.local', 'pipeline', valohai_config.BATCH_PIPELINE,
        '-i', f'predict.model={batch["model"]}', '-i', f'predict.images={batch["images"]}',
        f'--run-dir={run_dir}'], REPO)
  for i in range(BATCH.shards):
    assert os.listdir(run_dir / 'predict' / str(i) / 'outputs') == [
        artifacts.Predictions.shard_filename(i, BATCH.shards)]
  merged = run_dir / 'merge-predictions' / 'outputs' / 'predictions.tar.gz'
  assert merged.read_bytes() == batch['whole'].read_bytes()


def test_kubeflow_batch_pipeline_fans_out_over_num_shards_then_merges():
  with open(kubeflow_batch.COMPILED_PATH) as f:
    ir = yaml.safe_load(f)
  dags = [ir['root']['dag']] + [c['dag'] for c in ir['components'].values() if 'dag' in c]
  tasks = {name: task for dag in dags for name, task in dag['tasks'].items()}
  assert {'shard-indices', 'predict', 'merge-predictions'} <= set(tasks)
  loop = next(t for t in tasks.values() if 'parameterIterator' in t)
  assert loop['parameterIterator']['items']['inputParameter'].endswith('shard-indices-Output')
  predict = tasks['predict']['inputs']['parameters']
  assert predict['shard_index']['componentInputParameter'].endswith('loop-item')
  assert predict['num_shards']['componentInputParameter'].endswith('num_shards')
  assert ir['root']['inputDefinitions']['parameters']['num_shards']['defaultValue'] == BATCH.shards
  assert graph.BATCH_NODES[-1].step == BATCH.merged_by


@pytest.mark.process
def test_kubeflow_batch_pipeline_runs_locally_and_merges_to_one_run(batch, tmp_path):
  root = tmp_path / 'root'
  script = f'''
from kfp import local
from pipelines.kubeflow.batch import deeplab_batch_pipeline
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root={str(root)!r},
           workspace_root={str(tmp_path / "workspace")!r})
deeplab_batch_pipeline(model_uri={str(batch["model"])!r}, images_uri={str(batch["images"])!r})
'''
  _run([sys.executable, '-c', script], tmp_path)
  outputs = {os.path.basename(d): os.path.join(d, 'output') for d, _, files in os.walk(root)
             if 'output' in files}
  with open(outputs['merge-predictions'], 'rb') as f:
    assert f.read() == batch['whole'].read_bytes()
  shards = [d for d, _, files in os.walk(root) if os.path.basename(d) == 'predict' and 'output' in files]
  assert len(shards) == BATCH.shards


def test_the_local_runner_refuses_two_files_of_one_name_for_one_input(tmp_path):
  """As Valohai would keep one of them: the shards' files must be named apart."""
  for shard in ('a', 'b'):
    (tmp_path / shard).mkdir()
    (tmp_path / shard / 'predictions.tar.gz').write_text(shard)
  local._place(str(tmp_path / 'a' / 'predictions.tar.gz'), str(tmp_path / 'inputs'))
  with pytest.raises(local.RunError, match='two files named predictions.tar.gz'):
    local._place(str(tmp_path / 'b' / 'predictions.tar.gz'), str(tmp_path / 'inputs'))
  assert (tmp_path / 'inputs' / 'predictions.tar.gz').read_text() == 'a'
