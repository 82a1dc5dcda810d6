"""The evaluation report: per-image mIoU, the worst/best collector, event files, the figures and the
HTML page, and the page as a real browser renders it."""
import base64
import itertools
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deeplab import metrics, report
from deeplab.colormaps import ade20k_colormap, pascal_colormap
from tests.conftest import REPO


# Class names come from users' files: one is HTML, one would stop matplotlib's mathtext parser
# (an unknown symbol between dollars). Both must be shown as written.
CLASS_NAMES = ['background', '<b>x</b>', r'cat $\q$', 'dog', 'unseen']
TAB_BLUE = (31, 119, 180)  # the per-class IoU bars
BLUES_FULL = (8, 48, 107)  # a confusion row all on its diagonal
VOC_CLASS_1 = (128, 0, 0)  # '<b>x</b>' in the image grids


def test_per_image_miou_by_hand():
  # The ignored pixel is predicted as class 3: counted, class 3 would add an IoU of 0 to the mean.
  label = np.array([[0, 0, 1], [1, 255, 2]])
  prediction = np.array([[0, 1, 1], [1, 3, 0]])
  # class 0: 1 hit, union 3; class 1: 2 hits, union 3; class 2: 0 hits, union 1; class 3 absent.
  assert report.per_image_miou(label, prediction, 4, 255) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
  assert report.per_image_miou(label, label, 4, 255) == 1.0
  assert report.per_image_miou(np.full((2, 2), 255), np.zeros((2, 2)), 4, 255) is None


def test_per_image_miou_with_an_ignore_label_that_is_a_class_id():
  # ADE20K ignores id 0; predicting 0 on a scored pixel is a miss, as in the split's mIoU.
  label = np.array([[0, 1], [1, 1]])
  prediction = np.array([[1, 1], [0, 1]])
  assert report.per_image_miou(label, prediction, 3, 0) == pytest.approx((2 / 3 + 0) / 2)


def test_per_image_miou_agrees_with_the_split_summary_on_one_image():
  rng = np.random.default_rng(3)
  label = rng.integers(0, 4, (9, 7))
  label[0] = 255
  prediction = rng.integers(0, 4, (9, 7))
  confusion = metrics.confusion_matrix(label, prediction, 5, 255)
  summary = metrics.summarize(confusion, list('abcde'))
  assert report.per_image_miou(label, prediction, 5, 255) == pytest.approx(summary['miou'])


def _names_and_scores(scored_images):
  return [(scored.name, scored.score) for scored in scored_images]


def test_extremes_collector_keeps_the_n_worst_and_best_with_ties_by_name():
  stream = [('a', 0.5), ('b', 0.1), ('c', 0.9), ('d', 0.1), ('e', 0.9), ('f', 0.5), ('g', None)]
  results = set()
  for order in itertools.permutations(stream):
    collector = report.ExtremesCollector(3)
    for name, score in order:
      collector.add(score, name, f'image {name}', f'label {name}', f'prediction {name}')
    results.add((tuple(_names_and_scores(collector.worst())),
                 tuple(_names_and_scores(collector.best()))))
  assert results == {((('b', 0.1), ('d', 0.1), ('a', 0.5)), (('c', 0.9), ('e', 0.9), ('a', 0.5)))}
  kept = collector.worst()[0]
  assert (kept.image, kept.label, kept.prediction) == ('image b', 'label b', 'prediction b')


def test_extremes_collector_matches_a_full_sort_and_stays_bounded():
  scores = random.Random(7)
  stream = [(f'image{i:03d}', scores.choice([0.0, 0.25, 0.5, float('nan'), 1.0])) for i in range(300)]
  collector = report.ExtremesCollector(4)
  for name, score in stream:
    collector.add(score, name, None, None, None)
    assert len(collector.worst()) <= 4 and len(collector.best()) <= 4
  scored = [(name, score) for name, score in stream if not np.isnan(score)]
  assert _names_and_scores(collector.worst()) == sorted(scored, key=lambda s: (s[1], s[0]))[:4]
  assert _names_and_scores(collector.best()) == sorted(scored, key=lambda s: (-s[1], s[0]))[:4]
  assert report.ExtremesCollector(0).worst() == []
  with pytest.raises(ValueError):
    report.ExtremesCollector(-1)


def test_read_event_scalars_from_file_writer_events(tmp_path):
  from deeplab.compat import tf

  def write_events(folder, points):
    with tf.Graph().as_default():
      writer = tf.compat.v1.summary.FileWriter(str(folder))
      for tag, step, value in points:
        summary = tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(tag=tag,
                                                                         simple_value=value)])
        writer.add_summary(summary, step)
      writer.close()
    (path,) = folder.glob('events.out.tfevents.*')
    return path

  first = write_events(tmp_path / 'first', [('loss', 2, 0.5), ('loss', 1, 0.75),
                                            ('learning_rate', 1, 0.01), ('loss', 3, 0.25)])
  # A resumed run: a second, later file logs step 3 again and goes on.
  second = write_events(tmp_path / 'second', [('loss', 3, 0.3), ('loss', 4, 0.125)])
  run = tmp_path / 'run'
  run.mkdir()
  shutil.copy(first, run / 'events.out.tfevents.1000000001.host')
  shutil.copy(second, run / 'events.out.tfevents.1000000002.host')
  (run / 'model.ckpt-4.index').write_bytes(b'not an event file')

  assert report.read_event_scalars(str(tmp_path / 'first')) == {
      'learning_rate': [(1, pytest.approx(0.01))], 'loss': [(1, 0.75), (2, 0.5), (3, 0.25)]}
  assert report.read_event_scalars(str(run))['loss'] == [(1, 0.75), (2, 0.5), (3, pytest.approx(0.3)),
                                                         (4, 0.125)]
  assert report.read_event_scalars(str(tmp_path / 'nothing here')) == {}


@pytest.mark.process
def test_importing_the_report_loads_neither_tensorflow_nor_pyplot():
  code = ('import sys, deeplab.report; '
          'print(sorted(m for m in ("tensorflow", "matplotlib.pyplot") if m in sys.modules))')
  completed = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                             check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert completed.stdout.strip() == '[]'


def _tiny_evaluation(num_images=5):
  """Images, labels and predictions of a tiny split, and the report's arguments for it."""
  rng = np.random.default_rng(0)
  num_classes, ignore_label = len(CLASS_NAMES), 255
  confusion = np.zeros((num_classes, num_classes), np.int64)
  collector = report.ExtremesCollector(2)
  for index in range(num_images):
    image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (12, 16))
    label[0] = ignore_label
    prediction = label.copy()
    prediction[label == ignore_label] = 3
    prediction[rng.random((12, 16)) < 0.1 * index] = 2
    confusion += metrics.confusion_matrix(label, prediction, num_classes, ignore_label)
    score = report.per_image_miou(label, prediction, num_classes, ignore_label)
    collector.add(score, f'image_{index}', image, label, prediction)
  confusion[3, 3] += 500  # 'dog' is only in the ground truth here, and always right
  summary = metrics.summarize(confusion, CLASS_NAMES)
  return dict(miou=summary['miou'], pixel_accuracy=summary['pixel_accuracy'],
              num_images=num_images, per_class_iou=summary['per_class_iou'], confusion=confusion,
              class_names=CLASS_NAMES, colormap=pascal_colormap(num_classes),
              ignore_label=ignore_label, worst=collector.worst(), best=collector.best(),
              training_scalars={'loss': [(step, 1.0 / step) for step in range(1, 40)],
                                'learning_rate': [(1, 0.01), (20, 0.005), (39, 0.0)]})


@pytest.fixture(scope='module')
def tiny_report(tmp_path_factory):
  folder = tmp_path_factory.mktemp('report')
  return folder, report.write_report(str(folder), **_tiny_evaluation())


def test_report_writes_every_figure_as_a_modest_png(tiny_report):
  folder, written = tiny_report
  assert written == {name: str(folder / filename) for name, filename in report.FIGURE_FILES} | {
      'report': str(folder / 'report.html')}
  for name, filename in report.FIGURE_FILES:
    with Image.open(folder / filename) as picture:
      picture.load()
      width, height = picture.size
    assert picture.format == 'PNG'
    assert 300 <= width <= 1200 and 150 <= height <= 1500, (filename, picture.size)
    assert os.path.getsize(folder / filename) < 200_000, filename


def test_per_class_table_marks_absent_classes_and_captions_name_the_images(tiny_report):
  folder, _ = tiny_report
  page = (folder / 'report.html').read_text(encoding='utf-8')
  assert '<tr class=absent><td>4</td><td>unseen</td><td>absent</td>' in page
  assert [n.name for n in _tiny_evaluation()['worst']] == ['image_4', 'image_3']
  assert 'image_4 (' in page and 'image_0 (1.000)' in page


def test_html_embeds_the_figures_and_escapes_class_names(tiny_report):
  folder, _ = tiny_report
  page = (folder / 'report.html').read_text(encoding='utf-8')
  for _, filename in report.FIGURE_FILES:
    encoded = base64.b64encode((folder / filename).read_bytes()).decode('ascii')
    assert f'src="data:image/png;base64,{encoded}"' in page, filename
  assert '&lt;b&gt;x&lt;/b&gt;' in page and '<b>x</b>' not in page
  assert r'cat $\q$' in page
  # Self-contained: nothing to fetch outside the data URIs.
  markup = re.sub(r'data:image/png;base64,[A-Za-z0-9+/=]+', '', page).replace('http-equiv', '')
  assert '<script' not in markup and '<link' not in markup and 'http' not in markup


def test_report_is_byte_for_byte_reproducible(tiny_report, tmp_path):
  folder, first = tiny_report
  second = report.write_report(str(tmp_path), **_tiny_evaluation())
  for name, path in first.items():
    with open(path, 'rb') as a, open(second[name], 'rb') as b:
      assert a.read() == b.read(), name


def test_report_with_many_classes_an_ignore_class_id_and_no_training_scalars(tmp_path):
  # ADE20K's shape: 151 classes, id 0 ('other') is the ignore label and may still be predicted.
  # The confusion matrix loses its names but stays a picture of bounded size.
  names = [f'class {i}' for i in range(151)]
  rng = np.random.default_rng(1)
  confusion = rng.integers(0, 50, (151, 151)) * (rng.random((151, 151)) < 0.05)
  np.fill_diagonal(confusion, 1000)
  summary = metrics.summarize(confusion, names)
  label = rng.integers(0, 151, (20, 30))
  prediction = np.where(rng.random((20, 30)) < 0.5, label, 0)
  score = report.per_image_miou(label, prediction, 151, 0)
  shown = [report.ScoredImage(score, 'ADE_val_00000001', np.zeros((20, 30, 3), np.uint8), label,
                              prediction)]
  written = report.write_report(
      str(tmp_path / 'new folder'), miou=summary['miou'], pixel_accuracy=summary['pixel_accuracy'],
      num_images=3, per_class_iou=summary['per_class_iou'], confusion=confusion, class_names=names,
      colormap=ade20k_colormap(), ignore_label=0, worst=shown, best=[], training_scalars=None)
  assert sorted(written) == ['confusion_matrix', 'per_class_iou', 'report', 'worst_images']
  with Image.open(written['confusion_matrix']) as picture:
    assert max(picture.size) <= 1100
  with Image.open(written['per_class_iou']) as picture:
    assert picture.size[1] > 151 * 15  # a readable row per class
  page = open(written['report'], encoding='utf-8').read()
  assert page.count('<tr><td>') >= 151 + 10  # every class, and the most confused pairs


def test_report_rejects_a_confusion_matrix_of_the_wrong_size(tmp_path):
  arguments = _tiny_evaluation()
  arguments['confusion'] = arguments['confusion'][:3, :3]
  with pytest.raises(ValueError, match=r'expected \(5, 5\)'):
    report.write_report(str(tmp_path), **arguments)


def find_chromium():
  """The path of a Chromium or Chrome binary on PATH, or None."""
  for name in ('chromium', 'chromium-browser', 'google-chrome'):
    path = shutil.which(name)
    if path:
      return path
  return None


def require_chromium():
  """The path of a Chromium or Chrome binary; skips the test, saying how to install one, if none."""
  chromium = find_chromium()
  if chromium is None:
    pytest.skip('no chromium, chromium-browser or google-chrome on PATH '
                '(Debian: apt-get install chromium)')
  return chromium


def _count_colour(pixels, colour, tolerance=3):
  return int((np.abs(pixels[..., :3].astype(int) - colour) <= tolerance).all(axis=-1).sum())


@pytest.mark.process
def test_report_renders_with_its_images_in_a_headless_browser(tiny_report, tmp_path):
  chromium = require_chromium()
  folder, _ = tiny_report
  url = (folder / 'report.html').as_uri()
  common = [chromium, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
            f'--user-data-dir={tmp_path / "profile"}']

  dom = subprocess.run(common + ['--dump-dom', url], capture_output=True, text=True, timeout=120,
                       check=True).stdout
  assert dom.count('<img src="data:image/png;base64,') == len(report.FIGURE_FILES)
  assert '&lt;b&gt;x&lt;/b&gt;' in dom and '<b>x</b>' not in dom  # the name stayed text

  # A broken image shows as an icon and its alt text: colours that only the decoded figures have
  # prove each kind of figure was drawn.
  screenshot = tmp_path / 'report.png'
  subprocess.run(common + ['--window-size=1200,6000', f'--screenshot={screenshot}', url],
                 capture_output=True, timeout=120, check=True)
  with Image.open(screenshot) as picture:
    pixels = np.asarray(picture.convert('RGB'))
  assert pixels.shape[:2] == (6000, 1200)
  assert _count_colour(pixels, TAB_BLUE) > 2000  # per-class IoU bars
  assert _count_colour(pixels, BLUES_FULL) > 300  # the 'dog' row of the confusion matrix
  assert _count_colour(pixels, VOC_CLASS_1) > 2000  # label panels of the image grids
