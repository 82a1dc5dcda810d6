"""The gate step: a model passes to deployment only above --min_miou and not worse than the baseline
by more than --max_miou_drop; evaluate writes the baseline section it reads."""
import json
import os
import tarfile

import pytest

from tests.conftest import assert_one_error_line, run_step


def write_metrics(folder, miou, baseline_miou=None, split='val', **extra):
  metrics = {'miou': miou, 'split': split, 'pixel_accuracy': 0.9, **extra}
  if baseline_miou is not None:
    metrics['baseline'] = {'miou': baseline_miou, 'pixel_accuracy': 0.9}
  path = folder / 'metrics.json'
  path.write_text(json.dumps(metrics))
  return path


def gate(tmp_path, evaluation, model, *flags):
  out = tmp_path / 'deployed' / 'model.tar.gz'
  return run_step('gate', f'--evaluation={evaluation}', f'--model={model}', f'--output={out}',
                  *flags, check=False), out


def assert_refused(result, out, line):
  assert assert_one_error_line(result) == 'error: ' + line
  assert not out.parent.exists()  # nothing deployed, not even the folder


def test_a_good_model_passes_byte_for_byte_with_its_margin(tmp_path, tiny_model):
  result, out = gate(tmp_path, write_metrics(tmp_path, 0.5), tiny_model, '--min_miou=0.45')
  assert result.returncode == 0, result.stderr
  assert out.read_bytes() == tiny_model.read_bytes()
  assert result.metrics[-1] == {'miou': 0.5, 'baseline_miou': None, 'margin': pytest.approx(0.05)}


def test_a_model_below_the_threshold_is_refused_with_the_shortfall(tmp_path, tiny_model):
  result, out = gate(tmp_path, write_metrics(tmp_path, 0.412), tiny_model, '--min_miou=0.45')
  assert_refused(result, out, 'mIoU 0.412 on val is 0.038 below --min_miou=0.450; nothing deployed')


def test_the_baseline_within_tolerance_passes_even_at_the_exact_bound(tmp_path, tiny_model):
  # 0.46 - 0.01 is 0.45000000000000007 in floating point: exactly at the bound must still pass.
  result, out = gate(tmp_path, write_metrics(tmp_path, 0.45, baseline_miou=0.46), tiny_model,
                     '--min_miou=0.3', '--max_miou_drop=0.01')
  assert result.returncode == 0, result.stderr
  assert result.metrics[-1]['baseline_miou'] == 0.46 and result.metrics[-1]['margin'] == 0
  assert out.read_bytes() == tiny_model.read_bytes()


def test_a_model_worse_than_the_baseline_beyond_tolerance_is_refused(tmp_path, tiny_model):
  result, out = gate(tmp_path, write_metrics(tmp_path, 0.5, baseline_miou=0.6), tiny_model,
                     '--min_miou=0.3', '--max_miou_drop=0.02')
  assert_refused(result, out, "mIoU 0.500 on val is 0.080 below 0.580, the baseline's mIoU 0.600 "
                 'less --max_miou_drop=0.020; nothing deployed')


def test_a_shortfall_too_small_for_three_decimals_is_shown_with_six(tmp_path, tiny_model):
  result, out = gate(tmp_path, write_metrics(tmp_path, 0.4499), tiny_model, '--min_miou=0.45')
  assert_refused(result, out, 'mIoU 0.449900 on val is 0.000100 below --min_miou=0.450000; '
                 'nothing deployed')


def test_the_higher_bar_is_the_one_named(tmp_path, tiny_model):
  result, out = gate(tmp_path, write_metrics(tmp_path, 0.3, baseline_miou=0.2, split='test'),
                     tiny_model, '--min_miou=0.4')
  assert_refused(result, out, 'mIoU 0.300 on test is 0.100 below --min_miou=0.400; nothing deployed')


@pytest.mark.parametrize('text, fragment', [
    ('{"miou": NaN, "split": "val"}', '"miou" is nan; expected an mIoU in [0, 1]'),
    ('{"miou": 1.2, "split": "val"}', '"miou" is 1.2; expected an mIoU in [0, 1]'),
    ('{"miou": null, "split": "val"}', '"miou" is null (no pixel of the split was evaluated)'),
    ('{"miou": "0.5", "split": "val"}', '"miou" is \'0.5\'; expected'),
    ('{"pixel_accuracy": 0.9}', 'is not evaluate\'s metrics.json (no "miou")'),
    ('[0.5]', 'is not evaluate\'s metrics.json (no "miou")'),
    ('{"miou": 0.5}', '"split" is None; expected the split\'s name'),
    ('{"miou": 0.5, "split": "val", "baseline": {"pixel_accuracy": 1}}', '"baseline" has no "miou"'),
    ('{"miou": 0.5, "split": "val", "baseline": {"miou": -0.1}}', '"baseline"."miou" is -0.1'),
    ('{"miou": 0.5,', 'is not evaluate\'s metrics.json (Expecting'),
])
def test_a_tampered_metrics_file_is_one_error_line(tmp_path, tiny_model, text, fragment):
  path = tmp_path / 'metrics.json'
  path.write_text(text)
  result, out = gate(tmp_path, path, tiny_model, '--min_miou=0')
  assert_one_error_line(result, f'--evaluation: {path}', fragment)
  assert not out.parent.exists()


def test_inputs_as_orchestrators_deliver_them_folders_holding_the_files(tmp_path, tiny_model):
  evaluation, model = tmp_path / 'inputs' / 'evaluation', tmp_path / 'inputs' / 'model'
  evaluation.mkdir(parents=True)
  model.mkdir()
  write_metrics(evaluation, 0.5)
  os.link(tiny_model, model / 'model.tar.gz')
  result, out = gate(tmp_path, evaluation, model, '--min_miou=0.1')
  assert result.returncode == 0, result.stderr
  assert out.read_bytes() == tiny_model.read_bytes()


def test_a_checkpoint_given_as_the_model_is_refused(tmp_path, tiny_checkpoint):
  result, out = gate(tmp_path, write_metrics(tmp_path, 0.5), tiny_checkpoint, '--min_miou=0.1')
  assert_one_error_line(result, 'holds a checkpoint, not an exported model')
  assert not out.exists()


@pytest.fixture(scope='module')
def evaluated_with_baseline(tiny_tfrecords, tiny_checkpoint, tmp_path_factory):
  folder = tmp_path_factory.mktemp('with_baseline')
  result = run_step('evaluate', f'--tfrecords={tiny_tfrecords}', f'--checkpoint={tiny_checkpoint}',
                    f'--baseline={tiny_checkpoint}', f'--output={folder / "metrics.json"}',
                    '--report_images=0')
  return json.loads((folder / 'metrics.json').read_text()), result


def test_evaluate_with_a_baseline_writes_its_section_from_the_same_split(evaluated_with_baseline):
  metrics, result = evaluated_with_baseline
  baseline = metrics['baseline']
  # The same checkpoint on the same shards with the same settings: the same numbers.
  for key in ('miou', 'pixel_accuracy', 'per_class_iou', 'num_images', 'num_pixels'):
    assert baseline[key] == metrics[key], key
  assert baseline['checkpoint'] == 'checkpoint.tar.gz'
  assert result.last('baseline_miou') == metrics['miou']


def test_a_baseline_of_other_classes_is_one_error_line(tmp_path, tiny_tfrecords, tiny_checkpoint):
  folder = tmp_path / 'other'
  with tarfile.open(tiny_checkpoint) as tar:
    tar.extractall(folder, filter='data')
  card = json.loads((folder / 'model.json').read_text())
  card['dataset']['class_names'][1] = 'cat'
  (folder / 'model.json').write_text(json.dumps(card))
  out = tmp_path / 'metrics' / 'metrics.json'
  result = run_step('evaluate', f'--tfrecords={tiny_tfrecords}', f'--checkpoint={tiny_checkpoint}',
                    f'--baseline={folder}', f'--output={out}', check=False)
  assert_one_error_line(result, f'--baseline: {folder} was trained for the classes background, cat,',
                        f'; {tiny_checkpoint} for background, red_striped,',
                        'expected a baseline of the same classes')
  assert not out.parent.exists()
  assert 'mIoU' not in result.stderr  # refused before anything was evaluated
