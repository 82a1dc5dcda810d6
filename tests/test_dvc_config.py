"""dvc.yaml and params.yaml agree with the step SPECs, and DVC renders flags the steps parse.

The commands are resolved by DVC itself (its interpolation and the [parsing] settings of
.dvc/config), then parsed by the step's own flag parser.
"""
import collections
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml
from dvc.parsing.interpolate import to_str
from dvc.repo import Repo
from PIL import Image

from pipelines.dvc import plots
from pipelines.graph import SPECS
from steps import evaluate
from steps.flags import FLAG, cast_value, parse_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('DVC_NO_ANALYTICS', '1')


@pytest.fixture(scope='module')
def repo():
  with Repo(ROOT) as dvc_repo:
    yield dvc_repo


@pytest.fixture(scope='module')
def params():
  with open(os.path.join(ROOT, 'params.yaml')) as f:
    return yaml.safe_load(f)


def step_argv(command: str, step: str) -> list:
  """The arguments given to `python -m steps.<step>` inside a stage command."""
  words = shlex.split(command)
  start = words.index(f'steps.{step}') + 1
  end = next((i for i in range(start, len(words)) if words[i] in ('&&', '|', ';')), len(words))
  return words[start:end]


def test_params_sections_are_steps_and_keys_are_valid_flag_values(params):
  assert set(params) == set(SPECS)
  for step, section in params.items():
    for key, value in section.items():
      param = SPECS[step].parameter(key)  # KeyError: not a flag of the step
      if param.multiple:
        assert isinstance(value, list), (step, key)
      cast_value(param, ','.join(map(str, value)) if param.multiple else str(value).lower())


def test_every_step_is_a_stage_with_its_section_artifact_and_parsed_flags(repo, params):
  stages = {stage.name: stage for stage in repo.index.stages}
  for step, spec in SPECS.items():
    stage = stages[step]
    commands = stage.cmd if isinstance(stage.cmd, list) else [stage.cmd]
    (command,) = [c for c in commands if f'steps.{step}' in c]
    args = parse_flags(spec, step_argv(command, step))
    assert {p.name: getattr(args, p.name) for p in spec.parameters} == dict(
        spec.defaults(), **{k: tuple(v) if isinstance(v, list) else v for k, v in params[step].items()}), step
    (output,) = spec.outputs
    written = getattr(args, output.name)
    assert os.path.basename(written) == output.filename, step
    declared = {str(o.def_path) for o in stage.outs} | {str(m.def_path) for m in stage.metrics}
    assert written in declared, (step, written)
    assert step in {p for dep in stage.deps if hasattr(dep, 'params') for p in dep.params}, step


def test_stage_inputs_are_upstream_outputs(repo):
  stages = {stage.name: stage for stage in repo.index.stages}
  produced = {str(o.def_path) for s in stages.values() for o in s.outs}
  for step, spec in SPECS.items():
    (command,) = [c for c in (stages[step].cmd if isinstance(stages[step].cmd, list) else [stages[step].cmd])
                  if f'steps.{step}' in c]
    args = parse_flags(spec, step_argv(command, step))
    deps = {str(d.def_path) for d in stages[step].deps}
    for path in spec.inputs:
      value = getattr(args, path.name)
      if value:
        assert any(value == p or value.startswith(p + '/') for p in produced), (step, path.name, value)
        assert any(value == d or value.startswith(d + '/') for d in deps), (step, path.name, value)


def _negated_flags(section: dict, spec) -> dict:
  return dict(section, **{p.name: not p.default for p in spec.parameters if p.type == FLAG})


def test_false_booleans_render_to_flags_the_steps_parse(repo, params):
  """[parsing] bool = boolean_optional renders false as --no-<flag>; plain store_true would drop it."""
  parsing = repo.config['parsing']
  for step, spec in SPECS.items():
    section = _negated_flags(params[step], spec)
    args = parse_flags(spec, shlex.split(to_str(section, config=parsing)))
    for param in spec.parameters:
      if param.type == FLAG:
        assert getattr(args, param.name) is (not param.default), (step, param.name)


def test_lists_render_as_repeated_flags_the_steps_parse(repo):
  rendered = to_str({'train_crop_size': [129, 97], 'atrous_rates': [6, 12, 18]}, config=repo.config['parsing'])
  args = parse_flags(SPECS['train'], shlex.split(rendered))
  assert args.train_crop_size == (129, 97) and args.atrous_rates == (6, 12, 18)


def test_record_keeps_the_exit_code_and_the_metric_lines(tmp_path):
  script = ('import json, sys\n'
            'print("log line")\n'
            'print(json.dumps({"step": 1, "loss": 0.5}))\n'
            'print(json.dumps({"final": True}))\n'
            'print(json.dumps({"step": 2, "loss": 0.25}))\n'
            'sys.exit(4)\n')
  to = tmp_path / 'sub' / 'log.json'
  run = subprocess.run([sys.executable, '-m', 'pipelines.dvc.plots', 'record', f'--to={to}', '--',
                        sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True)
  assert run.returncode == 4
  assert 'log line' in run.stdout  # passed through
  assert json.loads(to.read_text()) == [{'step': 1, 'loss': 0.5}, {'step': 2, 'loss': 0.25}]
  assert plots.main(['record', f'--to={to}', '--only-with=', '--', sys.executable, '-c', script]) == 4
  assert len(json.loads(to.read_text())) == 3


def test_per_class_iou_records_leave_out_absent_classes(tmp_path):
  metrics = tmp_path / 'metrics.json'
  metrics.write_text(json.dumps({'miou': 0.5, 'per_class_iou': {'background': 0.9, 'cat': None, 'dog': 0.1}}))
  out = tmp_path / 'iou.json'
  assert plots.main(['per-class-iou', str(metrics), f'--to={out}']) == 0
  assert json.loads(out.read_text()) == [{'class': 'background', 'iou': 0.9}, {'class': 'dog', 'iou': 0.1}]
  assert plots.main(['per-class-iou', str(tmp_path / 'missing.json'), f'--to={out}']) == 1


def test_confusion_records_are_the_percent_of_each_ground_truth_class():
  confusion = {'class_names': ['a', 'b', 'c'], 'matrix': [[1, 1, 1], [0, 0, 0], [5, 0, 995]]}
  counts = collections.Counter((r['actual'], r['predicted']) for r in plots.confusion_records(confusion))
  # Thirds round to 34/33/33 (the tie goes to the first class); 'b' has no pixels, so no row.
  assert counts == {('a', 'a'): 34, ('a', 'b'): 33, ('a', 'c'): 33, ('c', 'a'): 1, ('c', 'c'): 99}


def test_evaluate_stage_declares_the_files_the_step_writes_beside_metrics(repo):
  stage = next(s for s in repo.index.stages if s.name == 'evaluate')
  folder = os.path.dirname(str(next(iter(stage.metrics)).def_path))
  assert {str(o.def_path) for o in stage.outs} >= {os.path.join(folder, evaluate.REPORT_FOLDER),
                                                   os.path.join(folder, evaluate.CONFUSION_FILE)}
  assert any(f'plots confusion {folder}/{evaluate.CONFUSION_FILE}' in command for command in stage.cmd)


def test_plots_show_renders_the_confusion_matrix_and_the_image_grids(tmp_path):
  """`dvc plots show --json` over dvc.yaml with the files an evaluation leaves."""
  project = tmp_path / 'project'
  (project / '.dvc').mkdir(parents=True)
  for name in ('dvc.yaml', 'params.yaml', os.path.join('.dvc', 'config')):
    shutil.copy(os.path.join(ROOT, name), project / name)
  with open(project / '.dvc' / 'config', 'a') as f:
    f.write('[core]\n    no_scm = true\n')
  artifacts_folder = project / 'artifacts'
  (artifacts_folder / evaluate.REPORT_FOLDER).mkdir(parents=True)
  for grid in ('worst_images.png', 'best_images.png'):
    Image.new('RGB', (4, 2), (200, 30, 30)).save(artifacts_folder / evaluate.REPORT_FOLDER / grid)
  (artifacts_folder / 'train_log.json').write_text(json.dumps([{'step': 1, 'loss': 1.0, 'learning_rate': 0.1}]))
  (artifacts_folder / 'metrics.json').write_text(json.dumps({'miou': 0.5, 'per_class_iou': {'a': 0.9, 'b': 0.1}}))
  (artifacts_folder / evaluate.CONFUSION_FILE).write_text(json.dumps({'class_names': ['a', 'b'],
                                                                      'matrix': [[9, 1], [3, 7]]}))
  assert plots.main(['per-class-iou', str(artifacts_folder / 'metrics.json'),
                     f'--to={artifacts_folder / "per_class_iou.json"}']) == 0
  assert plots.main(['confusion', str(artifacts_folder / evaluate.CONFUSION_FILE),
                     f'--to={artifacts_folder / "confusion.json"}']) == 0
  dvc = os.path.join(os.path.dirname(sys.executable), 'dvc')
  shown = json.loads(subprocess.run([dvc, 'plots', 'show', '--json'], cwd=project, capture_output=True,
                                    text=True, check=True).stdout)
  assert 'errors' not in shown
  plotted = shown['data']
  for grid in ('worst_images.png', 'best_images.png'):
    (image,) = plotted[f'artifacts/{evaluate.REPORT_FOLDER}/{grid}']
    assert image['type'] == 'image'
  (confusion,) = plotted['artifacts/confusion.json']
  values = confusion['content']['data']['values']
  assert collections.Counter((v['actual'], v['predicted']) for v in values) == {
      ('a', 'a'): 90, ('a', 'b'): 10, ('b', 'a'): 30, ('b', 'b'): 70}
  assert 'xy_count' in json.dumps(confusion['content'])  # DVC's confusion template counts the records
