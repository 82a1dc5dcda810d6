"""Static checks of the Dockerfile (no Docker engine needed): the CUDA build of the pinned TensorFlow,
requirements from the pinned files, every importable package copied, a non-root user, no entrypoint."""
import os
import re

import pytest

from pipelines.shared import BASE_IMAGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_IN_IMAGE = {'tests', 'bench'}  # development only; .dockerignore keeps them out


def read(name):
  with open(os.path.join(ROOT, name)) as f:
    return f.read()


@pytest.fixture(scope='module')
def instructions():
  """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
  lines = [line for line in read('Dockerfile').splitlines() if not line.lstrip().startswith('#')]
  joined = re.sub(r'\\\n', ' ', '\n'.join(lines))
  return [tuple(line.strip().split(None, 1)) for line in joined.splitlines() if line.strip()]


def pinned(requirements, package):
  return re.search(rf'^{re.escape(package)}==([\w.]+)', read(requirements), re.M).group(1)


def test_base_image_is_python_with_the_cuda_build_of_the_pinned_tensorflow(instructions):
  (base,) = [args for op, args in instructions if op == 'FROM']
  assert base == BASE_IMAGE == 'python:3.11-slim'  # the same base Valohai runs the steps in
  script = read('pipelines/install_requirements.sh')
  assert pinned('requirements.txt', 'tensorflow-cpu')
  assert 'echo "tensorflow[and-cuda]==$pinned"' in script  # the pinned version, with its CUDA pins
  assert '/etc/ld.so.conf.d/' in script and 'ldconfig' in script  # the pip NVIDIA libraries load
  assert not re.search(r'^tensorflow(\[|==)', read('requirements.txt'), re.M)  # CPU machines: CPU-only


def test_requirements_come_from_the_pinned_files(instructions):
  copied = ' '.join(args for op, args in instructions if op == 'COPY')
  runs = ' '.join(args for op, args in instructions if op == 'RUN')
  assert 'requirements.txt' in copied and 'sh pipelines/install_requirements.sh' in runs
  script = read('pipelines/install_requirements.sh')
  assert '-r "$filtered"' in script and "grep -v '^tensorflow-cpu==' requirements.txt" in script
  assert "grep '^kfp==' requirements-dev.txt" in runs and pinned('requirements-dev.txt', 'kfp')


def test_every_importable_package_is_copied(instructions):
  packages = [name for name in sorted(os.listdir(ROOT))
              if os.path.isfile(os.path.join(ROOT, name, '__init__.py')) and name not in NOT_IN_IMAGE]
  assert {'deeplab', 'steps', 'pipelines'} <= set(packages)
  copied = [args.split()[0].rstrip('/') for op, args in instructions if op == 'COPY']
  for package in packages:
    assert package in copied, package
  # `python -m steps.<name>` from any working directory (Kubeflow sets its own).
  assert 'PYTHONPATH=/app' in ' '.join(args for op, args in instructions if op == 'ENV')
  assert ('WORKDIR', '/app') in instructions


def test_runs_as_a_non_root_user_without_an_entrypoint(instructions):
  users = [args for op, args in instructions if op == 'USER']
  assert users and users[-1] not in ('root', '0')
  assert not [op for op, _ in instructions if op == 'ENTRYPOINT']  # `docker run IMAGE python -m steps.x`


def test_dockerignore_keeps_local_state_out():
  ignored = set(read('.dockerignore').split())
  assert {'.git', '.venv', '.dvc/cache', 'artifacts', 'data'} <= ignored
