"""The documentation against the tree: every flag the docs name exists, every path they name is there.

Docs drift silently (a renamed flag, a moved module); these checks make the drift a test failure.
They read README.md and docs/*.md as text: no step runs.
"""
import glob
import os
import re
import shlex

import pytest
import yaml

from steps import build_data, evaluate, export, gate, inspect, merge_predictions, predict, serve, train
from steps.flags import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
STEP_SPECS = {spec.name: spec for spec in (build_data.SPEC, train.SPEC, evaluate.SPEC, export.SPEC,
                                           gate.SPEC, predict.SPEC, merge_predictions.SPEC, serve.SPEC,
                                           inspect.SPEC)}


def _doc_id(path):
  return os.path.relpath(path, ROOT)


def _commands(text):
  """Each shell command of the docs' code blocks and inline code, continuation lines joined."""
  joined = re.sub(r'\\\n\s*', ' ', text)
  for line in joined.splitlines():
    for inline in re.findall(r'`([^`\n]+)`', line) or [line]:
      for command in re.split(r'&&|\|\||[|;&]\s', inline):
        yield command.strip().lstrip('$ ').strip()


def _flags_of(spec):
  parser = build_parser(spec)
  return {option[2:] for action in parser._actions for option in action.option_strings
          if option.startswith('--')}


def _flag_names(words):
  return [w[2:].split('=', 1)[0] for w in words if re.fullmatch(r'--[a-z][a-z0-9_-]*(=.*)?', w)]


def _split(command):
  try:
    return shlex.split(command)
  except ValueError:  # an unbalanced quote in prose: fall back to whitespace
    return command.split()


@pytest.mark.parametrize('doc', DOCS, ids=_doc_id)
def test_every_step_command_in_the_docs_uses_flags_the_step_has(doc):
  text = open(doc, encoding='utf-8').read()
  wrong = []
  for command in _commands(text):
    words = _split(command)
    for i, word in enumerate(words[:-1]):
      if word == '-m' and re.fullmatch(r'steps\.\w+', words[i + 1]):
        step = words[i + 1].split('.', 1)[1]
        assert step in STEP_SPECS, f'{_doc_id(doc)}: `{command}` names no step steps.{step}'
        known = _flags_of(STEP_SPECS[step])
        wrong += [f'steps.{step} --{f}' for f in _flag_names(words[i + 2:]) if f not in known]
  assert not wrong, f'{_doc_id(doc)} names flags the steps do not have: {wrong}'


def _valohai_config():
  with open(os.path.join(ROOT, 'valohai.yaml')) as f:
    return yaml.safe_load(f)


@pytest.mark.parametrize('doc', DOCS, ids=_doc_id)
def test_every_vh_command_in_the_docs_names_a_step_or_pipeline_of_valohai_yaml(doc):
  config = _valohai_config()
  steps = {item['step']['name']: item['step'] for item in config if 'step' in item}
  pipelines = {item['pipeline']['name'] for item in config if 'pipeline' in item}
  tasks = {item['task']['name'] for item in config if 'task' in item}
  wrong = []
  for command in _commands(open(doc, encoding='utf-8').read()):
    words = _split(command)
    if words[:3] == ['vh', 'exec', 'run'] and len(words) > 3:
      step = steps.get(words[3])
      if step is None:
        wrong.append(f'no step {words[3]}')
        continue
      names = {p['name'].replace('_', '-') for p in step.get('parameters', [])}
      names |= {i['name'].replace('_', '-') for i in step.get('inputs', [])}
      wrong += [f'{words[3]} --{f}' for f in _flag_names(words[4:])
                if f not in names and f not in ('adhoc', 'watch', 'sync')]
    elif words[:3] == ['vh', 'pipeline', 'run'] and len(words) > 3 and words[3] not in pipelines:
      wrong.append(f'no pipeline {words[3]}')
    elif words[:3] == ['vh', 'task', 'run'] and len(words) > 3 and words[3] not in tasks | set(steps):
      wrong.append(f'no task {words[3]}')
  assert not wrong, f'{_doc_id(doc)}: {wrong}'


def _declared_elsewhere():
  """Flags declared by the project's other command lines (pipelines/, bench/, deeplab/ tools)."""
  declared = set()
  for path in glob.glob(os.path.join(ROOT, '**', '*.py'), recursive=True):
    if '/tests/' in path or '/.venv/' in path:
      continue
    declared |= set(re.findall(r"""['"]--([a-z][a-z0-9_-]*)['"]""", open(path, encoding='utf-8').read()))
  return declared


def test_every_snake_case_flag_the_docs_mention_exists():
  """Prose names flags too (`--max_inference_pixels`): each must be some step's or tool's flag.
  Snake case is this project's flag style; dashed options belong to other tools (pip, vh, dvc)."""
  known = set().union(*(_flags_of(spec) for spec in STEP_SPECS.values())) | _declared_elsewhere()
  wrong = []
  for doc in DOCS:
    for flag in set(re.findall(r'(?<![\w=-])--([a-z][a-z0-9]*_[a-z0-9_]*)', open(doc, encoding='utf-8').read())):
      if flag not in known:
        wrong.append(f'{_doc_id(doc)}: --{flag}')
  assert not wrong, f'flags the docs name that nothing declares: {sorted(wrong)}'


_PATH = re.compile(r'`((?:deeplab|steps|pipelines|bench|tests|docs)/[A-Za-z0-9_./-]*)`')


@pytest.mark.parametrize('doc', DOCS, ids=_doc_id)
def test_every_project_path_the_docs_name_exists(doc):
  missing = []
  for path in set(_PATH.findall(open(doc, encoding='utf-8').read())):
    path = path.split('::')[0].rstrip('.')
    if '<' in path or '*' in path:
      continue
    if not os.path.exists(os.path.join(ROOT, path)):
      missing.append(path)
  assert not missing, f'{_doc_id(doc)} names paths that are not in the tree: {sorted(missing)}'


def test_every_doc_page_is_linked_from_the_readme():
  readme = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
  pages = [os.path.relpath(p, ROOT) for p in DOCS[1:]]
  assert [p for p in pages if f']({p})' not in readme] == []
  assert [p for p in re.findall(r'\]\((docs/[^)#]+)', readme) if not os.path.exists(os.path.join(ROOT, p))] == []


def test_the_readme_is_a_front_door():
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    assert len(f.read().splitlines()) <= 150


def _drawn_layout():
  """The files the Layout drawing of docs/architecture.md names, as paths from the root."""
  text = open(os.path.join(ROOT, 'docs', 'architecture.md'), encoding='utf-8').read()
  block = text.split('## Layout', 1)[1].split('```', 2)[1]
  drawn, folders = set(), []
  for line in block.splitlines():
    if not line.strip():
      continue
    indent = (len(line) - len(line.lstrip(' '))) // 2
    # Names come first on a line, several separated by two spaces; the description follows.
    names = re.match(r'^\s*((?:[\w.-]+/?(?:  (?=[\w.-]+\.\w+))?)+)', line).group(1).split()
    del folders[indent:]
    for name in names:
      if name.endswith('/'):
        folders.append(name.rstrip('/'))
      else:
        drawn.add('/'.join(folders + [name]))
  return drawn


def test_the_layout_drawn_in_the_architecture_page_is_the_tree():
  drawn = _drawn_layout()
  actual = {os.path.relpath(p, ROOT) for package in ('deeplab', 'steps', 'pipelines')
            for p in glob.glob(os.path.join(ROOT, package, '**', '*.py'), recursive=True)}
  actual |= {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'pipelines', '*.sh'))}
  assert sorted(actual - drawn) == [], 'in the tree, not in the drawing'
  assert sorted(drawn - actual) == [], 'in the drawing, not in the tree'
