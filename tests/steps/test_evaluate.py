"""The evaluate step's report, made by the real step for a tiny trained model: the files beside
metrics.json, their replacement as a whole, and the page in a headless browser; and when the steps
show progress."""
import json
import os
import pty
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from deeplab import report
from steps.evaluate import CONFUSION_FILE, REPORT_FOLDER
from steps import files, runtime
from tests.conftest import REPO, TINY_TRAIN_FLAGS, assert_one_error_line, run_step
from tests.deeplab.test_report import require_chromium

CLASS_NAMES = ['background', 'red_striped', 'green_spotted', 'blue_checkered']
GRID_WIDTH = round((3 * report.IMAGE_PANEL_INCHES + 0.4) * report.DPI)  # image | truth | prediction


@pytest.fixture(scope='module')
def evaluated(tiny_tfrecords, tiny_checkpoint, tmp_path_factory):
  folder = tmp_path_factory.mktemp('evaluated')
  result = run_step('evaluate', f'--tfrecords={tiny_tfrecords}', f'--checkpoint={tiny_checkpoint}',
                    f'--output={folder / "metrics.json"}', '--report_images=2')
  return folder, result


def png_size(path):
  with Image.open(path) as picture:
    picture.load()  # decodes the whole image, not only the header
    assert picture.format == 'PNG'
    return picture.size


def test_metrics_keep_the_headline_numbers_and_the_confusion_matrix_has_its_own_file(evaluated):
  folder, result = evaluated
  metrics = json.loads((folder / 'metrics.json').read_text())
  assert 'confusion_matrix' not in metrics
  assert set(metrics['per_class_iou']) == set(CLASS_NAMES) and 0 <= metrics['miou'] <= 1
  confusion = json.loads((folder / CONFUSION_FILE).read_text())
  assert confusion['class_names'] == CLASS_NAMES
  matrix = np.array(confusion['matrix'])
  assert matrix.shape == (4, 4) and matrix.sum() == metrics['num_pixels']
  assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics['pixel_accuracy'])
  assert result.last('miou') == metrics['miou']


def test_report_has_every_figure_at_its_size_and_nothing_half_written(evaluated):
  folder, _ = evaluated
  written = sorted(os.listdir(folder / REPORT_FOLDER))
  # The checkpoint carries its training's events, so the training curves are drawn too.
  assert written == sorted([filename for _, filename in report.FIGURE_FILES] + [report.HTML_FILE])
  assert png_size(folder / REPORT_FOLDER / 'per_class_iou.png')[0] == 700
  width, height = png_size(folder / REPORT_FOLDER / 'confusion_matrix.png')
  assert width > height >= 400
  assert png_size(folder / REPORT_FOLDER / 'training_curves.png')[0] == 700
  worst, best = (png_size(folder / REPORT_FOLDER / f'{kind}_images.png') for kind in ('worst', 'best'))
  assert worst[0] == best[0] == GRID_WIDTH
  assert 2 * report.IMAGE_PANEL_INCHES * report.DPI < worst[1] < 3 * report.IMAGE_PANEL_INCHES * report.DPI
  assert sorted(os.listdir(folder)) == [CONFUSION_FILE, 'metrics.json', REPORT_FOLDER, 'tensorboard']


def test_a_second_run_replaces_the_report_whole(evaluated, tiny_tfrecords, tiny_checkpoint, tmp_path):
  folder, _ = evaluated
  again = tmp_path / 'again'
  (again / REPORT_FOLDER).mkdir(parents=True)
  (again / REPORT_FOLDER / 'worst_images.png').write_bytes(b'from an earlier run')
  run_step('evaluate', f'--tfrecords={tiny_tfrecords}', f'--checkpoint={tiny_checkpoint}',
           f'--output={again / "metrics.json"}', '--report_images=0')
  assert sorted(os.listdir(again / REPORT_FOLDER)) == [
      'confusion_matrix.png', 'per_class_iou.png', report.HTML_FILE, 'training_curves.png']
  assert sorted(os.listdir(again)) == [CONFUSION_FILE, 'metrics.json', REPORT_FOLDER, 'tensorboard']
  # Same model, same data: the same figures, byte for byte.
  for name in ('confusion_matrix.png', 'per_class_iou.png'):
    assert (again / REPORT_FOLDER / name).read_bytes() == (folder / REPORT_FOLDER / name).read_bytes()


def test_a_failed_fill_keeps_the_earlier_folder_and_leaves_no_staging(tmp_path):
  target = tmp_path / 'report'
  with files.atomic_folder(str(target)) as staging:
    with open(os.path.join(staging, 'first.png'), 'w') as f:
      f.write('first')
  assert os.listdir(target) == ['first.png']
  with pytest.raises(RuntimeError):
    with files.atomic_folder(str(target)) as staging:
      with open(os.path.join(staging, 'second.png'), 'w') as f:
        f.write('second')
      raise RuntimeError('the report failed half-way')
  assert os.listdir(target) == ['first.png']
  assert os.listdir(tmp_path) == ['report']


@pytest.mark.process
def test_the_report_page_opens_in_a_headless_browser(evaluated, tmp_path):
  chromium = require_chromium()
  folder, _ = evaluated
  dom = subprocess.run([chromium, '--headless', '--no-sandbox', '--disable-gpu',
                        f'--user-data-dir={tmp_path / "profile"}', '--dump-dom',
                        (folder / REPORT_FOLDER / report.HTML_FILE).as_uri()],
                       capture_output=True, text=True, timeout=120, check=True).stdout
  assert dom.count('<img src="data:image/png;base64,') == len(report.FIGURE_FILES)
  assert 'blue_checkered' in dom and 'Lowest per-image mIoU' in dom


@pytest.mark.parametrize('terminal', [True, False])
def test_progress_is_shown_only_when_stderr_is_a_terminal(terminal, monkeypatch):
  main, secondary = pty.openpty() if terminal else os.pipe()
  with os.fdopen(secondary, 'w') as stream, os.fdopen(main, 'rb'):
    monkeypatch.setattr(sys, 'stderr', stream)
    assert runtime.stderr_is_terminal() is terminal
    with runtime.progress_bar(3, 'image', 'evaluate') as bar:
      assert bar.disable is not terminal


@pytest.mark.process
def test_train_on_a_terminal_shows_a_progress_line_and_keeps_the_metric_lines(tiny_tfrecords, tmp_path):
  main, secondary = pty.openpty()
  command = [sys.executable, '-m', 'steps.train', f'--tfrecords={tiny_tfrecords}',
             f'--output={tmp_path / "checkpoint.tar.gz"}', f'--train_logdir={tmp_path / "run"}',
             *TINY_TRAIN_FLAGS, '--training_number_of_steps=4', '--log_steps=2']  # the last value wins
  with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=secondary, text=True,
                        env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2')) as process:
    os.close(secondary)
    terminal = []
    reader = threading.Thread(target=lambda: terminal.extend(_read_until_closed(main)))
    reader.start()
    stdout = process.stdout.read()
  reader.join()
  os.close(main)
  assert process.returncode == 0
  # stdout is only the metric lines, as without a terminal.
  lines = [json.loads(line) for line in stdout.splitlines()]
  assert [line['step'] for line in lines if 'step' in line] == [2, 4]
  shown = b''.join(terminal).decode()
  assert re.search(r'\rtrain: +50% 2/4 \[.*<.*loss=\d\.\d{4}, images/s=\d+\.\d', shown), shown[-2000:]
  assert 'train: 100% 4/4' in shown


def _read_until_closed(fd):
  """The bytes of a pty's main side until every holder of the other side has closed it."""
  while True:
    try:
      data = os.read(fd, 4096)
    except OSError:  # EIO: the other side is closed
      return
    if not data:
      return
    yield data


def test_evaluate_refuses_the_shards_the_checkpoint_was_trained_on(tiny_tfrecords, tiny_checkpoint,
                                                                   tmp_path):
  out = tmp_path / 'out' / 'metrics.json'
  flags = (f'--tfrecords={tiny_tfrecords}', f'--checkpoint={tiny_checkpoint}', f'--output={out}',
           '--eval_split=train', '--report_images=0')
  refused = run_step('evaluate', *flags, check=False)
  assert_one_error_line(refused, str(tiny_checkpoint), "trained on split 'train'",
                        '--eval_split=train', 'train-00000-of-00001.tfrecord', '--allow_train_split')
  assert not out.parent.exists() or os.listdir(out.parent) == []
  run_step('evaluate', *flags, '--allow_train_split')
  assert json.loads(out.read_text())['data']['split'] == 'train'
