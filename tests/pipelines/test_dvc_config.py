"""dvc.yaml (generated from the pipeline graph) and params.yaml agree with the step SPECs, DVC renders
flags the steps parse, and each stage depends on exactly the code its command imports.

The commands are resolved by DVC itself (its interpolation and the [parsing] settings of
.dvc/config), then parsed by the step's own flag parser.
"""
import collections
import json
import textwrap
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

from pipelines import graph
from pipelines.dvc import config as generator
from pipelines.dvc import imports, plots
from pipelines.graph import SPECS
from steps import evaluate
from steps.flags import FLAG, cast_value, parse_flags
from tests.conftest import REPO

ROOT = str(REPO)
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


@pytest.mark.process
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


def _dvc_project(tmp_path):
  """A DVC project (no git) in tmp_path with this repository's dvc.yaml, params.yaml and config."""
  project = tmp_path / 'project'
  (project / '.dvc').mkdir(parents=True)
  for name in ('dvc.yaml', 'params.yaml', os.path.join('.dvc', 'config')):
    shutil.copy(os.path.join(ROOT, name), project / name)
  with open(project / '.dvc' / 'config', 'a') as f:
    f.write('[core]\n    no_scm = true\n')
  return project


@pytest.mark.process
def test_plots_show_renders_the_confusion_matrix_and_the_image_grids(tmp_path):
  """`dvc plots show --json` over dvc.yaml with the files an evaluation leaves."""
  project = _dvc_project(tmp_path)
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


# ----------------------------------------------------------------------------- generated from the graph

def test_generated_file_is_up_to_date_and_a_hand_edit_is_caught(tmp_path, capsys):
  assert generator.main(['--check']) == 0
  edited = tmp_path / 'dvc.yaml'
  edited.write_text(open(os.path.join(ROOT, 'dvc.yaml')).read().replace('    - deeplab/training.py\n', ''))
  assert generator.main(['--check', f'--output={edited}']) == 1
  assert f'{edited} is out of date: run python -m pipelines.dvc' in capsys.readouterr().err


def test_a_stage_per_node_fed_as_the_graph_says(repo):
  stages = {stage.name: stage for stage in repo.index.stages}
  assert list(stages) == [generator.DEMO_DATA_STAGE] + [node.step for node in graph.NODES]
  for node in graph.NODES:
    inputs = [str(d.def_path) for d in stages[node.step].deps
              if not hasattr(d, 'params') and not str(d.def_path).endswith('.py')]
    expected = [generator.GIVEN_PATHS[s] if isinstance(s, graph.Given) else generator.artifact(s)
                for s in node.inputs.values()]
    assert sorted(inputs) == sorted(expected), node.step


# ----------------------------------------------------------------------------- code dependencies

def _write_package(root, files):
  for path, text in files.items():
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(textwrap.dedent(text))


def test_the_import_closure_follows_every_kind_of_import_and_nothing_else(tmp_path):
  _write_package(tmp_path, {
      'app/__init__.py': '',
      'app/main.py': '''\
          import os
          from app import eager, not_a_module
          from . import sibling

          def later():
            from app.lazy import thing  # runs only when called: still a dependency

          def plugin(name):
            import importlib
            return importlib.import_module(f'app.plugins.{name}')
          ''',
      'app/eager.py': 'import json\nnot_a_module = 1\n',
      'app/sibling.py': 'from .deep.inner import value\n',
      'app/deep/inner.py': 'value = 1\n',  # app/deep has no __init__.py: a namespace package
      'app/lazy.py': 'thing = 1\n',
      'app/plugins/__init__.py': '',
      'app/plugins/one.py': '',
      'app/plugins/sub/two.py': 'from ..one import *\n',
      'app/unused.py': 'import app.main\n',
      'other/registry.py': 'import importlib\n\ndef load(name):\n  return importlib.import_module(f"{__name__}s.{name}")\n',
  })
  assert imports.Modules(str(tmp_path)).closure(['app.main']) == [
      'app/__init__.py', 'app/deep/inner.py', 'app/eager.py', 'app/lazy.py', 'app/main.py',
      'app/plugins/__init__.py', 'app/plugins/one.py', 'app/plugins/sub/two.py', 'app/sibling.py']
  _write_package(tmp_path, {'other/registrys/a.py': ''})  # `{__name__}s.` -> other.registrys
  assert imports.Modules(str(tmp_path)).closure(['other.registry']) == ['other/registry.py', 'other/registrys/a.py']


def test_a_dynamic_import_of_an_unknown_module_is_an_error_not_a_missing_dependency(tmp_path):
  _write_package(tmp_path, {'app/__init__.py': '', 'app/main.py': 'import importlib\n\n'
                            'def load(name):\n  return importlib.import_module(name)\n'})
  with pytest.raises(ValueError, match=r'app/main.py:4: cannot tell which modules'):
    imports.Modules(str(tmp_path)).closure(['app.main'])


@pytest.mark.process
def test_every_module_a_stage_imports_at_start_is_among_its_deps(repo):
  """Python's own import of each stage's modules (in a fresh process) loads only files the static
  closure lists."""
  script = ('import importlib, json, os, sys\n'
            'root, loaded = sys.argv[1], {}\n'
            'def ours():\n'
            '  return [n for n in sys.modules if n.split(".")[0] in ("deeplab", "steps", "pipelines")]\n'
            'for module in sys.argv[2:]:\n'
            '  for name in ours():\n'
            '    del sys.modules[name]\n'
            '  importlib.import_module(module)\n'
            '  loaded[module] = sorted(os.path.relpath(sys.modules[n].__file__, root) for n in ours()\n'
            '                          if sys.modules[n].__file__)  # a namespace package has none\n'
            'print(json.dumps(loaded))\n')
  stages = {stage.name: stage for stage in repo.index.stages}
  modules = {stage: generator.command_modules(s.cmd) for stage, s in stages.items()}
  result = subprocess.run([sys.executable, '-c', script, ROOT, *{m for ms in modules.values() for m in ms}],
                          cwd=ROOT, capture_output=True, text=True, check=True)
  loaded = json.loads(result.stdout)
  for stage, entry_modules in modules.items():
    deps = {str(d.def_path) for d in stages[stage].deps}
    for module in entry_modules:
      assert set(loaded[module]) <= deps, (stage, module, set(loaded[module]) - deps)
  assert 'deeplab/training.py' in {str(d.def_path) for d in stages['train'].deps}


def test_editing_a_module_reruns_only_the_stages_that_import_it(tmp_path, monkeypatch):
  """DVC's own status after a recorded run (dvc.lock from stand-in outputs): serve's code is in no
  stage, training code only in train's, the report only in evaluate's."""
  project = _dvc_project(tmp_path)
  for folder in ('deeplab', 'steps', 'pipelines'):
    shutil.copytree(os.path.join(ROOT, folder), project / folder, ignore=shutil.ignore_patterns('__pycache__'))
  monkeypatch.chdir(project)  # DVC's stage cache resolves paths from the working directory

  def status_after_editing(path):
    original = (project / path).read_text()
    (project / path).write_text(original + '# an edit\n')
    try:
      with Repo(str(project)) as dvc_repo:
        return {stage: [change['changed deps'] for change in changes]
                for stage, changes in dvc_repo.status().items()}
    finally:
      (project / path).write_text(original)

  with Repo(str(project)) as dvc_repo:
    for stage in dvc_repo.index.stages:
      for out in stage.outs:
        path = project / str(out.def_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix:
          path.write_text('stand-in')
        else:  # a folder output
          (path / 'images').mkdir(parents=True)
          (path / 'images' / 'a.jpg').write_text('stand-in')
    dvc_repo.commit(force=True)
    assert dvc_repo.status() == {}
  assert status_after_editing('deeplab/serving.py') == {}
  assert status_after_editing('steps/serve.py') == {}
  assert status_after_editing('deeplab/training.py') == {'train': [{'deeplab/training.py': 'modified'}]}
  assert status_after_editing('deeplab/report.py') == {'evaluate': [{'deeplab/report.py': 'modified'}]}
