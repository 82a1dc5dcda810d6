"""Flag parsing shared by every step: lists, booleans, bad values, and a fast --help."""
import subprocess
import sys

import pytest

from deeplab.config import MODEL_VARIANTS
from steps import build_data, evaluate, export, flags, gate, predict, serve, train
from tests.conftest import REPO, run_step

STEPS = (build_data, train, evaluate, export, gate, predict, serve)


def test_lists_accept_repeated_and_comma_separated_values():
  args = flags.parse_flags(train.SPEC, ['--atrous_rates=6,12', '--atrous_rates', '18',
                                        '--train_crop_size=321,321', '--fine_tune_batch_norm=false',
                                        '--add_image_level_feature'])
  assert args.atrous_rates == (6, 12, 18)
  assert args.train_crop_size == (321, 321)
  assert args.fine_tune_batch_norm is False and args.add_image_level_feature is True
  assert flags.parse_flags(train.SPEC, []).train_crop_size == (513, 513)
  assert flags.parse_flags(train.SPEC, ['--no-fine_tune_batch_norm']).fine_tune_batch_norm is False


@pytest.mark.parametrize('argv, message', [
    (['--train_crop_size=513x513'], "--train_crop_size: expected an integer, got '513x513'"),
    (['--model_variant=resnet_v9'], "--model_variant: expected one of " + ", ".join(MODEL_VARIANTS) + ", got 'resnet_v9'"),
    (['--fine_tune_batch_norm=maybe'], '--fine_tune_batch_norm: expected true or false'),
    (['--output_stride=12'], '--output_stride: expected one of 8, 16, 32'),
])
def test_bad_flag_values_exit_2_with_one_line(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    flags.parse_flags(train.SPEC, argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err


def test_crop_size_needs_two_values(tmp_path):
  result = run_step('train', '--tfrecords', tmp_path, '--train_crop_size=513', check=False)
  assert result.returncode != 0
  assert 'error: --train_crop_size=513: expected two integers, height,width' in result.error_line()


# `--help` must answer in well under a second: it may not import TensorFlow (about 3 s here).
# Checked by what is imported, not by a clock (shared machines are noisy).
_HELP_PROBE = """
import runpy, sys
sys.argv = ['step', '--help']
try:
  runpy.run_module('steps.%s', run_name='__main__')
except SystemExit as e:
  assert e.code == 0, e.code
print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_slim', 'numpy')))
"""


@pytest.mark.process
@pytest.mark.parametrize('step', STEPS, ids=lambda m: m.SPEC.name)
def test_help_imports_no_tensorflow(step):
  completed = subprocess.run([sys.executable, '-c', _HELP_PROBE % step.SPEC.name], cwd=REPO,
                             capture_output=True, text=True)
  assert completed.returncode == 0, completed.stderr
  assert '--output' in completed.stdout or not step.SPEC.outputs
  assert completed.stdout.strip().splitlines()[-1] == '[]'
