"""The same tiny pipeline run end to end by each orchestrator's local runner.

The Valohai and Kubeflow runs (one to two minutes each) are part of the default suite; the DVC run with
its queued sweep takes several minutes and is marked slow (`pytest -m slow`).

A tiny synthetic dataset (8 train + 4 val images of 65x65) and a few training steps: these check the
wiring (artifacts, flags, metrics, exit codes), not the model's quality.
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import pytest
import yaml

from pipelines.graph import SWEEP_LEARNING_RATES
from tests.conftest import REPO

ROOT = str(REPO)
SYNTHETIC_FLAGS = ['--layout=folder', '--seed=0', '--num_train=8', '--num_val=4', '--image_size=65,65']
TINY_TRAIN = {'training_number_of_steps': 4, 'train_batch_size': 2, 'train_crop_size': [65, 65],
              'depth_multiplier': 0.5, 'log_steps': 2, 'save_interval_steps': 4}
# Commands rendered by the orchestrators call `python` (and `dvc`): this interpreter's.
ENV = dict(os.environ, DVC_NO_ANALYTICS='1', TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT,
           PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get('PATH', '')]))


@pytest.fixture(scope='module')
def raw_data(tmp_path_factory):
  folder = tmp_path_factory.mktemp('synthetic') / 'raw'
  subprocess.run([sys.executable, '-m', 'deeplab.datasets.synthetic', f'--output={folder}', *SYNTHETIC_FLAGS],
                 cwd=ROOT, env=ENV, check=True)
  return folder


def run(command, cwd, **kwargs):
  result = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, **kwargs)
  assert result.returncode == 0, f'{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}'
  return result


@pytest.mark.process
def test_valohai_local_runs_train_evaluate_export(raw_data, tmp_path):
  assignments = [('-i', f'build-data.raw_data={raw_data}'), ('-i', f'predict.images={raw_data / "images"}'),
                 ('-p', 'build-data.dataset=folder'), ('-p', 'build-data.num_shards=1'),
                 ('-p', f'train.train_logdir={tmp_path / "train"}')]  # else a repeated test resumes a done run
  assignments += [('-p', f'train.{k}={",".join(map(str, v)) if isinstance(v, list) else v}')
                  for k, v in TINY_TRAIN.items()]
  run_dir = tmp_path / 'run'
  run([sys.executable, '-m', 'pipelines.valohai.local', 'pipeline', 'train-evaluate-export',
       '--run-dir', str(run_dir), *[word for pair in assignments for word in pair]], ROOT)
  summary = json.loads((run_dir / 'summary.json').read_text())
  assert list(summary) == ['build-data', 'train', 'evaluate', 'export', 'predict']
  assert summary['train']['outputs'] == ['checkpoint.tar.gz']
  assert [r['step'] for r in summary['train']['metadata'] if 'step' in r] == [2, 4]
  assert 0 <= next(r['miou'] for r in summary['evaluate']['metadata'] if 'miou' in r) <= 1
  # Valohai previews the PNG outputs; the report page and the confusion matrix are downloadable.
  assert {'metrics.json', 'confusion_matrix.json', 'report/report.html', 'report/per_class_iou.png',
          'report/worst_images.png'} <= set(summary['evaluate']['outputs'])
  assert next(r['images'] for r in summary['predict']['metadata'] if 'images' in r) == 12
  assert summary['predict']['outputs'] == ['predictions.tar.gz']
  # export was handed evaluate's metrics.json: the model's card carries that evaluation.
  with tarfile.open(run_dir / 'export' / 'outputs' / 'model.tar.gz') as tar:
    card = json.load(tar.extractfile('model.json'))
  evaluated = json.loads((run_dir / 'evaluate' / 'outputs' / 'metrics.json').read_text())
  assert card['evaluation']['miou'] == evaluated['miou'] and card['lineage']['data']['split'] == 'train'


def _dvc_project(tmp_path):
  """A git + DVC copy of the project with the tiny dataset and training settings."""
  project = tmp_path / 'project'
  for name in ('deeplab', 'steps', 'pipelines', '.dvc', 'dvc.yaml', 'params.yaml', '.dvcignore', 'requirements.txt'):
    source = os.path.join(ROOT, name)
    if os.path.isdir(source):
      shutil.copytree(source, project / name, ignore=shutil.ignore_patterns('__pycache__', 'cache', 'tmp'))
    else:
      shutil.copy(source, project / name)
  dvc_yaml = (project / 'dvc.yaml').read_text()
  synthetic_cmd = '--layout=folder --output=data/synthetic --seed=0'
  assert synthetic_cmd in dvc_yaml
  (project / 'dvc.yaml').write_text(dvc_yaml.replace(synthetic_cmd, f'--output=data/synthetic {" ".join(SYNTHETIC_FLAGS)}'))
  params = yaml.safe_load((project / 'params.yaml').read_text())
  params['train'].update(TINY_TRAIN)
  params['build_data']['num_shards'] = 1
  (project / 'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
  (project / '.gitignore').write_text('__pycache__/\n.deeplab-train/\n')
  for command in (['git', 'init', '-q'], ['git', 'add', '-A'],
                  ['git', '-c', 'user.name=test', '-c', 'user.email=test@example.com', 'commit', '-q', '-m', 'tiny']):
    run(command, project)
  return project


def dvc(*args):
  return [os.path.join(os.path.dirname(sys.executable), 'dvc'), *args]


@pytest.mark.slow
def test_dvc_repro_then_nothing_to_do_then_a_queued_sweep(tmp_path):
  project = _dvc_project(tmp_path)
  run(dvc('repro'), project)
  metrics = json.loads((project / 'artifacts' / 'metrics.json').read_text())
  assert 0 <= metrics['miou'] <= 1
  assert [r['step'] for r in json.loads((project / 'artifacts' / 'train_log.json').read_text())] == [2, 4]
  assert json.loads((project / 'artifacts' / 'per_class_iou.json').read_text())
  assert len(json.loads((project / 'artifacts' / 'confusion.json').read_text())) % 100 == 0
  assert (project / 'artifacts' / 'report' / 'worst_images.png').exists()
  second = run(dvc('repro'), project)
  assert 'Running stage' not in second.stdout, second.stdout  # deterministic artifacts: nothing re-runs
  run(dvc('plots', 'show', '--json'), project)

  run(['git', 'add', '-A'], project)
  run(['git', '-c', 'user.name=test', '-c', 'user.email=test@example.com', 'commit', '-q', '-m', 'repro'], project)
  run(dvc('exp', 'run', '--queue', '-S', 'train.base_learning_rate=0.01,0.05'), project)
  run(dvc('queue', 'start', '-j', '1'), project)
  deadline = time.time() + 900
  while time.time() < deadline:
    status = run(dvc('queue', 'status'), project).stdout
    if 'Queued' not in status and 'Running' not in status:
      break
    time.sleep(5)
  assert 'Failed' not in status, status
  shown = json.loads(run(dvc('exp', 'show', '--json'), project).stdout)
  rates = {}
  for baseline in shown:
    for experiment in baseline.get('experiments') or []:
      for revision in experiment['revs']:
        data = revision['data']
        rate = data['params']['params.yaml']['data']['train']['base_learning_rate']
        rates[rate] = data['metrics']['artifacts/metrics.json']['data']['miou']
  assert set(rates) == {0.01, 0.05}, shown
  assert all(0 <= miou <= 1 for miou in rates.values())


@pytest.mark.process
def test_kubeflow_pipeline_runs_locally_over_the_shared_sweep(raw_data, tmp_path):
  script = f'''
import json, sys
from kfp import local
from pipelines.kubeflow.pipeline import deeplab_pipeline
from tests.conftest import REPO
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root={str(tmp_path / "root")!r},
           workspace_root={str(tmp_path / "workspace")!r})
task = deeplab_pipeline(raw_data_uri={str(raw_data)!r}, images_uri={str(raw_data / "images")!r},
                        training_number_of_steps=4, train_batch_size=2, train_crop_size='65,65',
                        depth_multiplier=0.5, log_steps=2)
print(json.dumps({{"best_miou": task.output}}))
'''
  # Run from tmp_path: train keeps its resumable run folder (.deeplab-train/) in the working directory.
  result = run([sys.executable, '-c', script], tmp_path, timeout=1200)
  best = json.loads(result.stdout.strip().splitlines()[-1])['best_miou']
  assert 0 <= best <= 1
  # kfp.local keeps each task's artifacts in a folder named after the task.
  tasks_with_output = [os.path.basename(d) for d, _, files in os.walk(tmp_path / 'root') if 'output' in files]
  assert tasks_with_output.count('train') == len(SWEEP_LEARNING_RATES)  # the default sweep
  assert 'predict' in tasks_with_output, 'predict wrote no output artifact'
  # Each evaluation's confusion matrix and report page, recorded as the KFP UI reads them.
  evaluations = [d for d, _, files in os.walk(tmp_path / 'root')
                 if os.path.basename(d) == 'evaluate' and 'executor_output.json' in files]
  assert len(evaluations) == len(SWEEP_LEARNING_RATES)
  for folder in evaluations:
    with open(os.path.join(folder, 'executor_output.json')) as f:
      recorded = {name: output['artifacts'][0] for name, output in json.load(f)['artifacts'].items()}
    confusion = recorded['confusion_matrix']['metadata']['confusionMatrix']
    assert len(confusion['annotationSpecs']) == len(confusion['rows']) == 4  # the synthetic classes
    with open(recorded['html_report']['uri']) as f:
      assert '<title>Evaluation report</title>' in f.read()
  # export recorded the evaluation of the checkpoint select_best kept: the best mIoU, that digest.
  (model,) = [os.path.join(d, 'output') for d, _, files in os.walk(tmp_path / 'root')
              if os.path.basename(d) == 'export' and 'output' in files]
  with tarfile.open(model) as tar:
    evaluation = json.load(tar.extractfile('model.json'))['evaluation']
  (kept,) = [os.path.join(d, 'best_evaluation') for d, _, files in os.walk(tmp_path / 'root')
             if 'best_evaluation' in files]
  with open(kept) as f:
    assert evaluation['checkpoint_sha256'] == json.load(f)['checkpoint_sha256']
  assert evaluation['miou'] == best
