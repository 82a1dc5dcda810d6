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


def gate_refusal(miou, min_miou, split='val'):
  """The gate's line for a model of `miou` below `min_miou` (steps/gate.py)."""
  return (f'error: mIoU {miou:.3f} on {split} is {min_miou - miou:.3f} below --min_miou={min_miou:.3f}; '
          'nothing deployed')


@pytest.mark.process
def test_valohai_local_runs_train_evaluate_export(raw_data, tmp_path):
  # A few steps make a weak model: the gate lets it through at min_miou 0, then refuses it in the
  # same runner at a threshold above its mIoU.
  assignments = [('-i', f'build-data.raw_data={raw_data}'), ('-i', f'predict.images={raw_data / "images"}'),
                 ('-p', 'build-data.dataset=folder'), ('-p', 'build-data.num_shards=1'), ('-p', 'min_miou=0'),
                 ('-p', f'train.train_logdir={tmp_path / "train"}')]  # else a repeated test resumes a done run
  assignments += [('-p', f'train.{k}={",".join(map(str, v)) if isinstance(v, list) else v}')
                  for k, v in TINY_TRAIN.items()]
  run_dir = tmp_path / 'run'
  run([sys.executable, '-m', 'pipelines.valohai.local', 'pipeline', 'train-evaluate-export',
       '--run-dir', str(run_dir), *[word for pair in assignments for word in pair]], ROOT)
  summary = json.loads((run_dir / 'summary.json').read_text())
  assert list(summary) == ['build-data', 'train', 'evaluate', 'export', 'gate', 'predict']
  assert summary['train']['outputs'] == ['checkpoint.tar.gz']
  assert [r['step'] for r in summary['train']['metadata'] if 'step' in r] == [2, 4]
  miou = next(r['miou'] for r in summary['evaluate']['metadata'] if 'miou' in r)
  assert 0 <= miou <= 1
  # The gate passed export's model on, byte for byte; predict segmented with the gate's copy.
  exported = run_dir / 'export' / 'outputs' / 'model.tar.gz'
  assert (run_dir / 'gate' / 'outputs' / 'model.tar.gz').read_bytes() == exported.read_bytes()
  assert summary['gate']['metadata'] == [{'miou': miou, 'baseline_miou': None, 'margin': pytest.approx(miou)}]
  assert os.listdir(run_dir / 'predict' / 'inputs' / 'model') == ['model.tar.gz']
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

  # The same model and evaluation at a bar above its mIoU: refused with the gate's line, the run
  # ends with the node's failure and the gate writes nothing for a deployment to take.
  bar = round(miou + 0.05, 3)
  refused = subprocess.run(
      [sys.executable, '-m', 'pipelines.valohai.local', 'step', 'gate', '--run-dir', str(tmp_path / 'weak'),
       '-i', f'evaluation={run_dir / "evaluate" / "outputs" / "metrics.json"}', '-i', f'model={exported}',
       '-p', f'min_miou={bar}'], cwd=ROOT, env=ENV, capture_output=True, text=True)
  assert refused.returncode == 1, refused.stderr[-3000:]
  errors = [line for line in refused.stderr.splitlines() if line.startswith('error:')]
  assert errors[0] == gate_refusal(miou, bar) and errors[1].startswith('error: gate: command failed'), errors
  assert os.listdir(tmp_path / 'weak' / 'gate' / 'outputs') == []


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
  params['gate']['min_miou'] = 0.0  # a few steps make a weak model: the gate lets it through
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
  assert (project / 'artifacts' / 'deployed' / 'model.tar.gz').read_bytes() == \
      (project / 'artifacts' / 'model.tar.gz').read_bytes()
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
                        depth_multiplier=0.5, log_steps=2, min_miou=0.0)
print(json.dumps({{"best_miou": task.output}}))
'''
  # Run from tmp_path: train keeps its resumable run folder (.deeplab-train/) in the working directory.
  result = run([sys.executable, '-c', script], tmp_path, timeout=1200)
  best = json.loads(result.stdout.strip().splitlines()[-1])['best_miou']
  assert 0 <= best <= 1
  # kfp.local keeps each task's artifacts in a folder named after the task.
  tasks_with_output = {}
  for folder, _, files in os.walk(tmp_path / 'root'):
    tasks_with_output.setdefault(os.path.basename(folder), []).extend(
        os.path.join(folder, name) for name in files if name in ('output', 'best_evaluation'))
  assert len(tasks_with_output['train']) == len(SWEEP_LEARNING_RATES)  # the default sweep
  assert tasks_with_output['predict'], 'predict wrote no output artifact'
  # The gate passed the exported model on as it was: the published model.
  (exported,), (published,) = tasks_with_output['export'], tasks_with_output['gate']
  with open(exported, 'rb') as a, open(published, 'rb') as b:
    assert a.read() == b.read()
  # The same model refused by the gate component in kfp.local at a bar above its mIoU: the best
  # point's evaluation and the exported model imported into a pipeline of the gate alone.
  (evaluation,) = tasks_with_output['select-best']
  bar = round(best + 0.05, 3)
  weak = f'''
from kfp import dsl, local
from pipelines.kubeflow import components
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root={str(tmp_path / "weak")!r})
@dsl.pipeline(name='gate-only')
def gate_only():
  evaluation = dsl.importer(artifact_uri={evaluation!r}, artifact_class=dsl.Artifact).output
  model = dsl.importer(artifact_uri={exported!r}, artifact_class=dsl.Model).output
  components.gate(evaluation=evaluation, model=model, min_miou={bar})
gate_only()
'''
  refused = subprocess.run([sys.executable, '-c', weak], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                           timeout=600)
  assert refused.returncode != 0 and 'FAILURE' in refused.stdout + refused.stderr, refused.stderr[-3000:]
  assert gate_refusal(best, bar) in refused.stdout + refused.stderr, refused.stderr[-3000:]
  assert not [files for folder, _, files in os.walk(tmp_path / 'weak') if 'output' in files]
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
