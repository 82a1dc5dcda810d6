"""The local Valohai runner: rendering, /valohai folders, edges, metadata, failures and the skipped setup
command, on a stand-in config whose steps are a tiny script (the real pipeline runs in
test_orchestrators_e2e.py)."""
import json
import sys
import textwrap

import pytest

from pipelines.valohai import config as generator
from tests.pipelines.test_valohai_yaml import step_invocation
from pipelines.valohai import local as valohai_local
from steps.flags import Path

STAND_IN_STEP = '''
import argparse, glob, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument('--word')
parser.add_argument('--times', type=int)
parser.add_argument('--shout', default='false')
parser.add_argument('--fail', default='false')
parser.add_argument('--text')
parser.add_argument('--output')
args = parser.parse_args()
received = [open(p).read() for p in sorted(glob.glob(os.path.join(args.text, '*')))] if args.text else []
text = ' '.join(received + [args.word] * args.times)
text = text.upper() if args.shout == 'true' else text
with open(args.output, 'w') as f:
  f.write(text)
print('a log line, not metadata')
print(json.dumps({'words': len(text.split()), 'argv': sys.argv[1:]}), flush=True)
sys.exit(3 if args.fail == 'true' else 0)
'''


@pytest.fixture
def config_path(tmp_path):
  script = tmp_path / 'stand_in_step.py'
  script.write_text(STAND_IN_STEP)
  # Paths in Valohai's folders as the generated valohai.yaml passes them; `text` is optional.
  text_input = generator.input_flag(Path('text', 'an optional input', optional=True))
  step = textwrap.dedent(f'''\
    - step:
        name: {{name}}
        image: python:3.11
        command:
          - {sys.executable} {script} --output=/valohai/outputs/text.txt {{{{parameters}}}} {text_input}
        parameters:
          - name: word
            type: string
            default: hello
          - name: times
            type: integer
            default: 1
          - name: shout
            type: flag
            default: false
            pass-true-as: --shout=true
            pass-false-as: --shout=false
          - name: fail
            type: flag
            default: false
            pass-true-as: --fail=true
        inputs:
          - name: text
            optional: true
    ''')
  pipeline = textwrap.dedent('''\
    - pipeline:
        name: chain
        parameters:
          - name: times
            default: 2
            targets: [first.parameter.times]
        nodes:
          - {name: first, type: execution, step: first}
          - {name: second, type: execution, step: second}
        edges:
          - [first.output.*.txt, second.input.text]
          - [first.parameter.word, second.parameter.word]
    ''')
  path = tmp_path / 'valohai.yaml'
  path.write_text(step.format(name='first') + step.format(name='second') + pipeline)
  return str(path)


def run(config_path, tmp_path, *args):
  run_dir = tmp_path / 'run'
  code = valohai_local.main([*args, '--config', config_path, '--run-dir', str(run_dir)])
  summary = run_dir / 'summary.json'
  return code, run_dir, json.loads(summary.read_text()) if summary.exists() else None


def test_step_renders_flag_defaults_and_given_values(config_path, tmp_path, capsys):
  code, run_dir, summary = run(config_path, tmp_path, 'step', 'first', '-p', 'word=hi', '-p', 'shout=true')
  assert code == 0
  (result,) = summary.values()
  assert result['metadata'] == [{'words': 1, 'argv': [f'--output={run_dir}/first/outputs/text.txt', '--word=hi',
                                                      '--times=1', '--shout=true']}]
  assert result['outputs'] == ['text.txt']
  assert (run_dir / 'first' / 'outputs' / 'text.txt').read_text() == 'HI'
  parameters = json.loads((run_dir / 'first' / 'config' / 'parameters.json').read_text())
  assert parameters == {'word': 'hi', 'times': 1, 'shout': True, 'fail': False}
  assert 'a log line, not metadata' in capsys.readouterr().out  # stdout passes through


def test_step_input_from_a_local_folder(config_path, tmp_path):
  (tmp_path / 'texts').mkdir()
  (tmp_path / 'texts' / 'a.txt').write_text('from a file')
  code, run_dir, _ = run(config_path, tmp_path, 'step', 'second', '-i', f'text={tmp_path / "texts"}')
  assert code == 0
  assert (run_dir / 'second' / 'outputs' / 'text.txt').read_text() == 'from a file hello'
  # Files of the input's own, as Valohai downloads them: a step refuses a symbolic link out of it.
  placed = run_dir / 'second' / 'inputs' / 'text' / 'a.txt'
  assert placed.is_file() and not placed.is_symlink() and placed.read_text() == 'from a file'


def test_pipeline_wires_output_and_parameter_edges_and_pipeline_parameters(config_path, tmp_path):
  code, run_dir, summary = run(config_path, tmp_path, 'pipeline', 'chain', '-p', 'first.word=hey')
  assert code == 0
  assert (run_dir / 'first' / 'outputs' / 'text.txt').read_text() == 'hey hey'  # pipeline parameter times=2
  assert (run_dir / 'second' / 'outputs' / 'text.txt').read_text() == 'hey hey hey'  # edge + word edge
  assert [r['metadata'][0]['words'] for r in summary.values()] == [2, 3]


def test_failed_command_fails_the_run_and_names_the_node(config_path, tmp_path, capsys):
  code, run_dir, summary = run(config_path, tmp_path, 'pipeline', 'chain', '-p', 'first.fail=true')
  assert code == 1 and summary is None
  assert 'error: first: command failed with exit code 3' in capsys.readouterr().err
  assert not (run_dir / 'second').exists()
  assert json.loads((run_dir / 'first' / 'result.json').read_text())['exit_code'] == 3


@pytest.mark.parametrize('args, message', [
    (('step', 'first', '-p', 'times=many'), 'parameter times'),
    (('step', 'first', '-p', 'nope=1'), "no parameter 'nope'"),
    (('step', 'first', '-p', 'shout=maybe'), 'parameter shout: expected true or false'),
    (('step', 'first', '-i', 'nope=/tmp'), "no input 'nope'"),
    (('pipeline', 'chain', '-p', 'nope=1'), "no parameter 'nope'"),
    (('pipeline', 'missing'), "no pipeline 'missing'"),
])
def test_bad_requests_are_one_error_line(config_path, tmp_path, capsys, args, message):
  code, _, _ = run(config_path, tmp_path, *args)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and err[-1].startswith('error: ') and message in err[-1]


def test_setup_command_is_skipped_and_said(tmp_path, monkeypatch, capsys):
  """The runner runs nothing of a setup entry (the real one pip-installs and writes /etc)."""
  marker = tmp_path / 'setup-ran'
  monkeypatch.setattr(valohai_local, 'SETUP_COMMAND', f'touch {marker}')
  path = tmp_path / 'valohai.yaml'
  path.write_text(textwrap.dedent(f'''\
    - step:
        name: only
        image: python:3.11
        command:
          - touch {marker}
          - {sys.executable} -c "print('the step ran')"
    '''))
  code, _, summary = run(str(path), tmp_path, 'step', 'only')
  captured = capsys.readouterr()
  assert code == 0 and summary['only']['exit_code'] == 0 and 'the step ran' in captured.out
  assert not marker.exists()
  assert f'[only] skipped the setup command `touch {marker}`: the local runner installs nothing' in captured.err


def test_a_run_directory_a_shell_would_split_is_refused(config_path, tmp_path, capsys):
  run_dir = tmp_path / 'my runs'
  code = valohai_local.main(['step', 'first', '--config', config_path, '--run-dir', str(run_dir)])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and err[-1].startswith(f'error: run directory {run_dir}/first has characters a shell')
  assert not run_dir.exists()


def test_real_config_runs_each_step_alone_after_a_setup_entry_the_runner_skips(tmp_path):
  """Each step of valohai.yaml is the setup entry, then one command running its module with its inputs
  and output in the execution's folders; the runner keeps only the latter."""
  import valohai_yaml
  with open(valohai_local.CONFIG_PATH) as f:
    config = valohai_yaml.parse(f)
  for step in config.steps.values():
    setup, step_command = step.command
    assert setup == generator.SETUP_COMMAND
    (command,) = step.build_command(step.get_parameter_defaults(include_flags=True),
                                    command=valohai_local.local_commands(step, str(tmp_path)))
    assert step_invocation(command).startswith('python -m steps.') and '{parameters}' not in command
    assert '/valohai/' not in command and f'--output={tmp_path}/outputs/' in command


DEPLOYMENT = textwrap.dedent('''\
    - endpoint:
        name: speak
        image: python:3.11
        server-command: python -m http.server
        files:
          - {name: words, path: served/words.txt}
    - pipeline:
        name: chain-deploy
        nodes:
          - {name: first, type: execution, step: first}
          - {name: deploy, type: deployment, deployment: speaker, endpoints: [speak]}
        edges:
          - [first.output.*.txt, deploy.file.speak.words]
    ''')


@pytest.mark.parametrize('fail', [False, True])
def test_a_deployment_node_gets_its_files_only_when_the_nodes_before_it_passed(config_path, tmp_path, fail):
  """How the gate keeps a model from deployment: a failed node ends the run before the deploy node."""
  with open(config_path, 'a') as f:
    f.write(DEPLOYMENT)
  code, run_dir, summary = run(config_path, tmp_path, 'pipeline', 'chain-deploy', '-p', f'first.fail={str(fail).lower()}')
  if fail:
    assert code == 1 and summary is None and not (run_dir / 'deploy').exists()
  else:
    assert code == 0
    assert summary['deploy'] == {'deployment': 'speaker', 'endpoints': ['speak'], 'files': ['speak/served/words.txt']}
    assert (run_dir / 'deploy' / 'speak' / 'served' / 'words.txt').read_text() == 'hello'
