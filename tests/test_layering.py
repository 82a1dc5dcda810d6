"""The dependency rules of the tree: steps -> deeplab, pipelines -> steps; the library and the steps
name and import no orchestrator, and no step imports another step."""
import ast
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORCHESTRATOR_WORDS = re.compile(r'valohai|kubeflow|kserve|\bkfp\b|\bdvc\b', re.IGNORECASE)
ORCHESTRATOR_PACKAGES = ('valohai', 'valohai_yaml', 'kfp', 'kubeflow', 'dvc')
STEPS = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'steps', '*.py'))
         if re.search(r'^SPEC = ', open(p, encoding='utf-8').read(), re.M)}


def _sources(package):
  return sorted(glob.glob(os.path.join(ROOT, package, '**', '*.py'), recursive=True))


def _imports(path):
  tree = ast.parse(open(path, encoding='utf-8').read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      yield from (f'{node.module}.{alias.name}' for alias in node.names)


@pytest.mark.parametrize('path', _sources('deeplab') + _sources('steps'),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_library_and_steps_name_and_import_no_orchestrator(path):
  text = open(path, encoding='utf-8').read()
  assert not ORCHESTRATOR_WORDS.findall(text), ORCHESTRATOR_WORDS.findall(text)
  imported = list(_imports(path))
  assert [m for m in imported if m.split('.')[0] in ORCHESTRATOR_PACKAGES] == []
  assert [m for m in imported if m.split('.')[0] in ('pipelines', 'bench', 'tests')] == []
  if path.startswith(os.path.join(ROOT, 'deeplab')):
    assert [m for m in imported if m.split('.')[0] == 'steps'] == []


@pytest.mark.parametrize('path', _sources('steps'), ids=lambda p: os.path.relpath(p, ROOT))
def test_no_step_imports_another_step(path):
  own = os.path.basename(path)[:-3]
  others = {f'steps.{step}' for step in STEPS - {own}}
  assert [m for m in _imports(path) if m in others] == []
