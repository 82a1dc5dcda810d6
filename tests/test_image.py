"""The project image without a container engine: every requirement it installs is an exact pin as pip
reads the files, the Dockerfile's shape, the engine detection of `make image`, and the Python floor
that every step checks. `make image-test` (tests/run_in_image.py) runs the pipeline inside the image."""
import os
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from pip._internal.network.session import PipSession
from pip._internal.req.req_file import parse_requirements

import steps
from pipelines.shared import BASE_IMAGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_IN_IMAGE = {'tests', 'bench'}  # development only; .dockerignore keeps them out
# The requirement file of each TensorFlow flavour (pipelines/install_requirements.sh) and what the
# image installs besides (the Dockerfile's RUN line).
FLAVOURS = {'cpu': 'requirements.txt', 'cuda': 'requirements/cuda.txt'}
IMAGE_EXTRAS = ('requirements/kubeflow.txt',)


def read(name):
  with open(os.path.join(ROOT, name)) as f:
    return f.read()


def requirements(*files):
  """{name: Requirement} of the files as pip reads them (`-r` and `-c` lines followed)."""
  found = {}
  for name in files:
    for parsed in parse_requirements(os.path.join(ROOT, name), session=PipSession()):
      assert not parsed.is_editable and not parsed.constraint, parsed.comes_from
      requirement = Requirement(parsed.requirement)
      assert requirement.name not in found, f'{requirement.name} required twice ({parsed.comes_from})'
      found[requirement.name] = requirement
  return found


@pytest.fixture(scope='module')
def instructions():
  """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
  lines = [line for line in read('Dockerfile').splitlines() if not line.lstrip().startswith('#')]
  joined = re.sub(r'\\\n', ' ', '\n'.join(lines))
  return [tuple(line.strip().split(None, 1)) for line in joined.splitlines() if line.strip()]


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_every_requirement_the_image_installs_is_an_exact_pin(flavour):
  installed = requirements(FLAVOURS[flavour], *IMAGE_EXTRAS)
  assert {'tf-slim', 'numpy', 'kfp', 'kubeflow-training'} <= set(installed)
  for name, requirement in installed.items():
    (specifier,) = requirement.specifier  # exactly one
    assert specifier.operator == '==' and '*' not in specifier.version, f'{name}: {requirement} is not a pin'
    assert requirement.url is None and requirement.marker is None, requirement


def test_the_flavours_differ_only_in_the_build_of_one_tensorflow_version():
  cpu, cuda = requirements(FLAVOURS['cpu']), requirements(FLAVOURS['cuda'])
  assert set(cpu) - set(cuda) == {'tensorflow-cpu'} and set(cuda) - set(cpu) == {'tensorflow'}
  assert cuda['tensorflow'].extras == {'and-cuda'}
  assert cpu['tensorflow-cpu'].specifier == cuda['tensorflow'].specifier
  assert all(cpu[name] == cuda[name] for name in set(cpu) & set(cuda))


def test_the_virtualenv_has_the_pins_of_the_cpu_image():
  development = requirements('requirements-dev.txt')
  image = requirements(FLAVOURS['cpu'], *IMAGE_EXTRAS)
  assert all(development[name] == requirement for name, requirement in image.items())


def test_the_install_script_and_the_dockerfile_name_those_files(instructions):
  script = read('pipelines/install_requirements.sh')
  for flavour, path in FLAVOURS.items():
    assert f'{flavour}) tensorflow={path} ;;' in script
  assert '/etc/ld.so.conf.d/' in script and 'ldconfig' in script  # cuda: the pip NVIDIA libraries load
  runs = [args for op, args in instructions if op == 'RUN']
  assert f'sh pipelines/install_requirements.sh "$TENSORFLOW" {" ".join(IMAGE_EXTRAS)}' in runs
  # Nothing reads a requirement file but pip: no grep/sed/awk over them.
  for text in [read('Dockerfile'), script]:
    assert not re.search(r'\b(grep|sed|awk|cut)\b[^\n]*requirements', text)


@pytest.mark.process
def test_install_script_refuses_an_unknown_flavour():
  result = subprocess.run(['sh', os.path.join(ROOT, 'pipelines/install_requirements.sh'), 'gpu'],
                          capture_output=True, text=True)
  assert result.returncode == 1 and result.stdout == ''
  assert result.stderr.startswith("error: the TensorFlow build must be cpu or cuda, got 'gpu'")


def test_build_arguments_default_to_the_cuda_flavour_on_python_slim(instructions):
  assert ('ARG', f'BASE_IMAGE={BASE_IMAGE}') in instructions and ('FROM', '${BASE_IMAGE}') in instructions
  assert ('ARG', 'TENSORFLOW=cuda') in instructions
  assert BASE_IMAGE == 'python:3.11-slim'  # the base Valohai installs into without a prebuilt image
  makefile = read('Makefile')  # `make image` passes both arguments with the same defaults
  assert f'BASE_IMAGE ?= {BASE_IMAGE}\n' in makefile and 'TENSORFLOW ?= cuda\n' in makefile


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


def test_dockerignore_keeps_local_state_and_tests_out():
  ignored = set(read('.dockerignore').split())
  assert {'.git', '.venv', '.dvc/cache', 'artifacts', 'data', 'tests', 'bench'} <= ignored


def _fake_engines(tmp_path, **answers):
  """A PATH holding only stand-in engine binaries whose `info` exits with the given status."""
  folder = tmp_path / 'bin'
  folder.mkdir()
  for engine, status in answers.items():
    (folder / engine).write_text(f'#!/bin/sh\n[ "$1" = info ] && exit {status}\nexit 0\n')
    (folder / engine).chmod(0o755)
  for tool in ('dirname',):  # what pipelines/image.sh needs besides the shell
    (folder / tool).symlink_to(subprocess.run(['sh', '-c', f'command -v {tool}'], capture_output=True,
                                              text=True, check=True).stdout.strip())
  return str(folder)


@pytest.mark.process
@pytest.mark.parametrize('answers, found', [
    ({'docker': 0, 'podman': 0, 'buildah': 0}, 'docker'),
    ({'docker': 1, 'podman': 0, 'buildah': 0}, 'podman'),  # a docker client without a daemon
    ({'docker': 1, 'buildah': 0}, 'buildah'),
])
def test_the_first_engine_that_works_is_used_not_the_first_binary(tmp_path, answers, found):
  result = subprocess.run(['/bin/sh', os.path.join(ROOT, 'pipelines/image.sh'), 'engine'], capture_output=True,
                          text=True, env={'PATH': _fake_engines(tmp_path, **answers)})
  assert (result.returncode, result.stdout.strip()) == (0, found), result.stderr


@pytest.mark.process
def test_no_working_engine_is_one_error_line(tmp_path):
  result = subprocess.run(['/bin/sh', os.path.join(ROOT, 'pipelines/image.sh'), 'engine'], capture_output=True,
                          text=True, env={'PATH': _fake_engines(tmp_path, docker=1)})
  assert result.returncode == 1 and result.stdout == ''
  assert result.stderr.splitlines() == [
      "error: no working container engine: 'ENGINE info' fails for each of: docker "
      '(a docker client needs a running daemon)']


@pytest.mark.parametrize('version, message', [((3, 11, 2, 'final', 0), 'error: Python 3.11.2 ('),
                                              ((3, 10, 14, 'final', 0), 'error: Python 3.10.14 (')])
def test_a_python_older_than_the_floor_is_one_error_line(version, message):
  with pytest.raises(SystemExit) as stopped:
    steps.require_python(version)
  assert str(stopped.value).startswith(message)
  assert str(stopped.value).endswith(
      'is too old: the steps need Python 3.11.4 or newer (tarfile extraction filters)')


@pytest.mark.parametrize('version', [(3, 11, 4, 'final', 0), (3, 12, 0, 'final', 0), tuple(sys.version_info)])
def test_the_floor_and_newer_pass(version):
  steps.require_python(version)


def _older_python():
  """An interpreter on this machine older than the floor (Debian 12's python3 is 3.11.2), or None."""
  for candidate in ('/usr/bin/python3', '/usr/bin/python3.11', '/usr/bin/python3.10'):
    if os.path.exists(candidate):
      found = subprocess.run([candidate, '-c', 'import sys; print(*sys.version_info[:3])'], capture_output=True,
                             text=True)
      if found.returncode == 0 and tuple(map(int, found.stdout.split())) < steps.PYTHON_FLOOR:
        return candidate, '.'.join(found.stdout.split())
  return None


@pytest.mark.process
def test_a_step_in_a_virtualenv_of_an_older_python_stops_before_anything_else(tmp_path):
  older = _older_python()
  if older is None:
    pytest.skip('no Python older than the floor on this machine')
  interpreter, version = older
  subprocess.run([interpreter, '-m', 'venv', '--without-pip', str(tmp_path / 'venv')], check=True)
  result = subprocess.run([str(tmp_path / 'venv' / 'bin' / 'python'), '-m', 'steps.build_data',
                           f'--output={tmp_path / "out"}', '--raw_data=missing'], cwd=ROOT, capture_output=True,
                          text=True)
  assert result.returncode == 1 and result.stdout == ''
  assert result.stderr.splitlines() == [
      f'error: Python {version} ({tmp_path / "venv" / "bin" / "python"}) is too old: the steps need Python '
      '3.11.4 or newer (tarfile extraction filters)']
  assert not (tmp_path / 'out').exists()
