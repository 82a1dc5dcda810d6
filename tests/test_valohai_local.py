"""The local Valohai runner: rendering, /valohai folders, edges, metadata and failures, on a stand-in
config whose steps are a tiny script (the real pipeline runs in test_orchestrators_e2e.py)."""
import json
import sys
import textwrap

import pytest

from pipelines.valohai import local as valohai_local

STAND_IN_STEP = '''
import argparse, glob, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument('--word')
parser.add_argument('--times', type=int)
parser.add_argument('--shout', default='false')
parser.add_argument('--fail', default='false')
args = parser.parse_args()
received = [open(p).read() for p in sorted(glob.glob(os.path.join(os.environ['VH_INPUTS_DIR'], 'text', '*')))]
text = ' '.join(received + [args.word] * args.times)
text = text.upper() if args.shout == 'true' else text
with open(os.path.join(os.environ['VH_OUTPUTS_DIR'], 'text.txt'), 'w') as f:
  f.write(text)
print('a log line, not metadata')
print(json.dumps({'words': len(text.split()), 'argv': sys.argv[1:]}), flush=True)
sys.exit(3 if args.fail == 'true' else 0)
'''


@pytest.fixture
def config_path(tmp_path):
  script = tmp_path / 'stand_in_step.py'
  script.write_text(STAND_IN_STEP)
  step = textwrap.dedent(f'''\
    - step:
        name: {{name}}
        image: python:3.11
        command: {sys.executable} {script} {{{{parameters}}}}
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
  assert result['metadata'] == [{'words': 1, 'argv': ['--word=hi', '--times=1', '--shout=true']}]
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


def test_real_config_renders_every_step(tmp_path):
  """Each step of valohai.yaml renders to one fail-fast command running its module."""
  import valohai_yaml
  with open(valohai_local.CONFIG_PATH) as f:
    config = valohai_yaml.parse(f)
  for step in config.steps.values():
    (command,) = step.build_command(step.get_parameter_defaults(include_flags=True))
    assert ' && python -m steps.' in command and '{parameters}' not in command
