"""An evaluation report in a folder: PNG figures and one self-contained HTML page.

`write_report` writes, into one folder:
  per_class_iou.png     per-class IoU bars, best first; classes without an IoU hatched grey
  confusion_matrix.png  the confusion matrix normalised per ground-truth row, as a heat map
  training_curves.png   one panel per training scalar (only when scalars are given)
  worst_images.png      the images with the lowest per-image mIoU: image | ground truth | prediction
  best_images.png       the same for the highest
  report.html           headline numbers, the per-class table and every figure, embedded as data URIs,
                        so the one file can be mailed or uploaded and opened without a network

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, not through pyplot: the module
neither switches the process's backend nor leaves figures in pyplot's registry. They are drawn under
matplotlib's default style, so a user's matplotlibrc does not change the pictures, and saved without
the 'Software' text chunk (which names the matplotlib version) and at a fixed dpi: the same inputs and
the same matplotlib give the same PNG bytes.

Per-image scores (`per_image_miou`) and the worst/best images (`ExtremesCollector`) are gathered by
the caller while it evaluates; TensorFlow is needed only by `read_event_scalars`, which imports it.
"""
from __future__ import annotations

import base64
import glob
import heapq
import html
import io
import logging
import math
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from deeplab import metrics
from deeplab.colormaps import colorize
from deeplab.datasets import tfrecord

log = logging.getLogger(__name__)

DPI = 100
# Ignored ground-truth pixels: white, the colour `colorize` gives ids without a colour (such as
# 255), so the report and the saved overlays agree. The panels keep their frame, so white stays
# bounded.
IGNORE_COLOR = (255, 255, 255)
# Up to this many classes the confusion matrix names every class on both axes (about 20 stay
# readable at the sizes below); beyond it (ADE20K has 151) the axes show class ids and the HTML's
# per-class table and list of most confused pairs carry the names.
NAMED_CONFUSION_MAX_CLASSES = 30
# Up to this many classes each cell of the confusion matrix also prints its percentage.
ANNOTATED_CONFUSION_MAX_CLASSES = 12
MOST_CONFUSED_PAIRS = 10
IMAGE_PANEL_INCHES = 2.4

FIGURE_FILES = (
    ('per_class_iou', 'per_class_iou.png'),
    ('confusion_matrix', 'confusion_matrix.png'),
    ('training_curves', 'training_curves.png'),
    ('worst_images', 'worst_images.png'),
    ('best_images', 'best_images.png'),
)
HTML_FILE = 'report.html'


def per_image_miou(label, prediction, num_classes: int, ignore_label: int) -> Optional[float]:
  """The mIoU of one image: label and prediction [H, W] class ids -> float, or None.

  The split's definition (`deeplab.metrics.summarize`) applied to one image: the mean IoU over the
  classes present in the label or the prediction, pixels labelled `ignore_label` not counted.
  None when there is no class to average over (every pixel is ignored).
  """
  return metrics.mean_iou(metrics.confusion_matrix(label, prediction, num_classes, ignore_label))


class ScoredImage(NamedTuple):
  """One validation image and its per-image mIoU; image [H, W, 3] uint8, label/prediction [H, W]."""
  score: float
  name: str
  image: np.ndarray
  label: np.ndarray
  prediction: np.ndarray


class _DropFirst:
  """A heap entry ordered backwards by `rank`, so heapq's root is the entry to drop first."""
  __slots__ = ('rank', 'scored')

  def __init__(self, rank: Tuple[float, str], scored: ScoredImage):
    self.rank = rank
    self.scored = scored

  def __lt__(self, other: '_DropFirst') -> bool:
    return other.rank < self.rank


class ExtremesCollector:
  """Keeps the n lowest- and the n highest-scoring images seen by `add`, whatever the stream length.

  At most 2n images are held (an image in both lists is held once). The order is total so runs agree:
  worst means lowest score, then name; best means highest score, then name. The arrays are kept by
  reference, not copied: pass arrays that the caller does not overwrite later.
  """

  def __init__(self, n: int):
    if n < 0:
      raise ValueError(f'ExtremesCollector needs n >= 0, got {n}')
    self.n = n
    self._worst: List[_DropFirst] = []
    self._best: List[_DropFirst] = []

  def add(self, score: Optional[float], name: str, image, label, prediction) -> None:
    # An image whose pixels are all ignored has no score (None) and cannot be ranked.
    if score is None or math.isnan(score):
      return
    scored = ScoredImage(float(score), name, image, label, prediction)
    self._keep(self._worst, (scored.score, name), scored)
    self._keep(self._best, (-scored.score, name), scored)

  def _keep(self, heap: List[_DropFirst], rank: Tuple[float, str], scored: ScoredImage) -> None:
    if self.n == 0:
      return
    entry = _DropFirst(rank, scored)
    if len(heap) < self.n:
      heapq.heappush(heap, entry)
    else:
      # Pushes, then drops the entry ranked last: the new one itself when it ranks below them all.
      heapq.heappushpop(heap, entry)

  def worst(self) -> List[ScoredImage]:
    """The kept lowest-scoring images, lowest first."""
    return [entry.scored for entry in sorted(self._worst, key=lambda entry: entry.rank)]

  def best(self) -> List[ScoredImage]:
    """The kept highest-scoring images, highest first."""
    return [entry.scored for entry in sorted(self._best, key=lambda entry: entry.rank)]


def read_event_scalars(folder: str) -> Dict[str, List[Tuple[int, float]]]:
  """The scalar summaries of the TensorBoard event files in `folder`: {tag: [(step, value), ...]}.

  Reads `events.out.tfevents.*` directly in `folder` (not its subfolders), sorted by step. A run that
  was resumed writes a new file and may log a step again: files are read in name order (their names
  start with the creation time), so the later value of a step wins. {} when there is no event file.

  The files come with a checkpoint, i.e. from outside: they are read by `tfrecord.read_records`
  (each record's length checked before it is read; TensorFlow's reader would allocate whatever a
  header claims). A file that ends in a damaged or cut record (a run killed while writing) gives
  the curves up to there, with a warning.
  """
  paths = sorted(glob.glob(os.path.join(glob.escape(folder), 'events.out.tfevents.*')))
  if not paths:
    return {}
  from google.protobuf.message import DecodeError
  from deeplab.compat import tf  # only here: the rest of the module needs no TensorFlow

  values_by_tag: Dict[str, Dict[int, float]] = {}
  for path in paths:
    try:
      for record in tfrecord.read_records(path):
        event = tf.compat.v1.Event.FromString(record)
        if not event.HasField('summary'):
          continue
        for value in event.summary.value:
          if value.HasField('simple_value'):
            values_by_tag.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
    except (ValueError, DecodeError) as e:
      log.warning('%s; the training curves end there', e)
  return {tag: sorted(by_step.items()) for tag, by_step in sorted(values_by_tag.items())}


def write_report(folder: str, *, miou: Optional[float], pixel_accuracy: Optional[float],
                 num_images: int, per_class_iou: Dict[str, Optional[float]],
                 confusion: np.ndarray, class_names: Sequence[str],
                 colormap: Sequence[Sequence[int]], ignore_label: int,
                 worst: Sequence[ScoredImage], best: Sequence[ScoredImage],
                 training_scalars: Optional[Dict[str, List[Tuple[int, float]]]] = None
                 ) -> Dict[str, str]:
  """Writes the figures and report.html into `folder` (created if missing); {name: path} of each file.

  confusion: [C, C] pixel counts, rows = ground truth, columns = prediction, C = len(class_names).
  per_class_iou: IoU by class name; None (or NaN) for a class absent from the split (as
  `deeplab.metrics.summarize` gives it: neither in the ground truth nor predicted).
  worst, best: `ScoredImage`s (e.g. from `ExtremesCollector`), in the order to show; an empty list
  writes no figure. training_scalars: {tag: [(step, value), ...]} as from `read_event_scalars`;
  None or empty writes no training_curves.png.
  Names: 'per_class_iou', 'confusion_matrix', 'training_curves', 'worst_images', 'best_images',
  'report'.
  """
  confusion = np.asarray(confusion, dtype=np.int64)
  num_classes = len(class_names)
  if confusion.shape != (num_classes, num_classes):
    raise ValueError(f'confusion has shape {confusion.shape}; expected ({num_classes}, '
                     f'{num_classes}) for {num_classes} class names')
  ious = [_iou_or_none(per_class_iou.get(name)) for name in class_names]

  # The style applies while artists are created and while they are drawn, so both happen inside.
  with matplotlib.style.context('default'):
    figures = {
        'per_class_iou': _per_class_iou_figure(class_names, ious, miou),
        'confusion_matrix': _confusion_figure(confusion, class_names),
    }
    if training_scalars and any(training_scalars.values()):
      figures['training_curves'] = _training_curves_figure(training_scalars)
    if worst:
      figures['worst_images'] = _images_figure('Images with the lowest per-image mIoU', worst,
                                               class_names, colormap, ignore_label)
    if best:
      figures['best_images'] = _images_figure('Images with the highest per-image mIoU', best,
                                              class_names, colormap, ignore_label)
    png_bytes = {name: _png_bytes(figure) for name, figure in figures.items()}

  os.makedirs(folder, exist_ok=True)
  written = {name: _write(os.path.join(folder, filename), png_bytes[name])
             for name, filename in FIGURE_FILES if name in png_bytes}
  page = _html_page(miou=miou, pixel_accuracy=pixel_accuracy, num_images=num_images,
                    class_names=class_names, ious=ious, confusion=confusion, worst=worst, best=best,
                    png_bytes=png_bytes)
  written['report'] = _write(os.path.join(folder, HTML_FILE), page.encode('utf-8'))
  return written


def _iou_or_none(value) -> Optional[float]:
  if value is None or math.isnan(value):
    return None
  return float(value)


def _write(path: str, data: bytes) -> str:
  with open(path, 'wb') as f:
    f.write(data)
  return path


def _new_figure(width: float, height: float) -> Figure:
  figure = Figure(figsize=(width, height), dpi=DPI, layout='constrained')
  FigureCanvasAgg(figure)
  return figure


def _png_bytes(figure: Figure) -> bytes:
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=DPI, metadata={'Software': None})
  return buffer.getvalue()


def _per_class_iou_figure(class_names: Sequence[str], ious: Sequence[Optional[float]],
                          miou: Optional[float]) -> Figure:
  """Horizontal bars, best class on top; absent classes last, as hatched grey rows."""
  present = sorted((i for i, iou in enumerate(ious) if iou is not None),
                   key=lambda i: (-ious[i], class_names[i]))
  absent = [i for i, iou in enumerate(ious) if iou is None]
  order = present + absent
  font_size = 8 if len(order) <= 40 else 6
  figure = _new_figure(7.0, 1.0 + 0.2 * len(order))
  axes = figure.add_subplot()
  rows = np.arange(len(order))
  axes.barh(rows[:len(present)], [ious[i] for i in present], color='tab:blue', height=0.7)
  for row, i in zip(rows, present):
    axes.text(ious[i] + 0.01, row, f'{ious[i]:.3f}', va='center', fontsize=font_size)
  # A full-width hatched row rather than a bar of some length, so no one reads a value into it.
  axes.barh(rows[len(present):], 1.0, color='0.92', edgecolor='0.6', hatch='//', linewidth=0,
            height=0.7)
  for row in rows[len(present):]:
    axes.text(0.02, row, 'absent', va='center', fontsize=font_size, color='0.3')
  title = 'Per-class IoU'
  if miou is not None:
    axes.axvline(miou, color='tab:red', linestyle='--', linewidth=1.2)
    title += f' (dashed line: mIoU {miou:.3f})'
  axes.set_title(title, fontsize=10)
  axes.set_yticks(rows, labels=[class_names[i] for i in order], fontsize=font_size,
                  parse_math=False)
  axes.set_ylim(len(order) - 0.5, -0.5)
  axes.set_xlim(0.0, 1.1)
  axes.set_xticks(np.linspace(0.0, 1.0, 6))
  axes.set_xlabel('IoU')
  axes.grid(axis='x', alpha=0.3)
  return figure


def _row_normalised(confusion: np.ndarray) -> np.ndarray:
  """[C, C] fractions of each ground-truth row; NaN rows for classes with no ground-truth pixels."""
  totals = confusion.sum(axis=1, keepdims=True).astype(np.float64)
  return np.divide(confusion, totals, out=np.full(confusion.shape, np.nan), where=totals > 0)


def _confusion_figure(confusion: np.ndarray, class_names: Sequence[str]) -> Figure:
  """The row-normalised heat map; grey rows are classes without ground-truth pixels."""
  num_classes = len(class_names)
  fractions = _row_normalised(confusion)
  named = num_classes <= NAMED_CONFUSION_MAX_CLASSES
  side = 3.4 + 0.3 * num_classes if named else 9.0
  figure = _new_figure(side + 1.2, side)
  axes = figure.add_subplot()
  colours = matplotlib.colormaps['Blues'].with_extremes(bad='0.8')
  image = axes.imshow(np.ma.masked_invalid(fractions), cmap=colours, vmin=0.0, vmax=1.0,
                      interpolation='nearest')
  figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02, label='share of the row')
  if named:
    positions = np.arange(num_classes)
    axes.set_xticks(positions, labels=class_names, rotation=90, fontsize=8, parse_math=False)
    axes.set_yticks(positions, labels=class_names, fontsize=8, parse_math=False)
    axes.set_xlabel('predicted class')
    axes.set_ylabel('ground-truth class')
    axes.set_title('Confusion matrix, each row sums to 1\n(grey rows: no ground-truth pixels)',
                   fontsize=10)
  else:
    axes.set_xlabel('predicted class id')
    axes.set_ylabel('ground-truth class id')
    axes.set_title(f'Confusion matrix of {num_classes} classes, each row sums to 1\n(grey rows: '
                   'no ground-truth pixels; class names: the table of report.html)', fontsize=10)
  if num_classes <= ANNOTATED_CONFUSION_MAX_CLASSES:
    for (truth, predicted), fraction in np.ndenumerate(fractions):
      if fraction >= 0.005:
        axes.text(predicted, truth, f'{fraction:.0%}', ha='center', va='center', fontsize=7,
                  color='white' if fraction > 0.6 else 'black')
  return figure


def _training_curves_figure(training_scalars: Dict[str, List[Tuple[int, float]]]) -> Figure:
  """One panel per tag, sharing the step axis."""
  tags = sorted(tag for tag, points in training_scalars.items() if points)
  figure = _new_figure(7.0, 0.6 + 1.9 * len(tags))
  panels = figure.subplots(len(tags), 1, sharex=True, squeeze=False)[:, 0]
  for panel, tag in zip(panels, tags):
    steps, values = zip(*sorted(training_scalars[tag]))
    # Markers only for short series, where a lone point would otherwise be invisible.
    panel.plot(steps, values, linewidth=1.2, marker='.' if len(steps) <= 30 else None)
    panel.set_title(tag, loc='left', fontsize=9, parse_math=False)
    panel.grid(alpha=0.3)
  panels[-1].set_xlabel('step')
  return figure


def _shorten(text: str, limit: int = 60) -> str:
  if len(text) <= limit:
    return text
  half = (limit - 1) // 2
  return text[:half] + '…' + text[-half:]


def _coloured_truth(label: np.ndarray, colormap: Sequence[Sequence[int]],
                    ignore_label: int) -> np.ndarray:
  """[H, W] ground-truth ids -> [H, W, 3] uint8; ignored pixels in IGNORE_COLOR even when the ignore
  label is also a class id with a colour (ADE20K's 0)."""
  label = np.asarray(label)
  colours = colorize(label, colormap, ignore_color=IGNORE_COLOR)
  colours[label == ignore_label] = IGNORE_COLOR
  return colours


def _images_figure(title: str, rows: Sequence[ScoredImage], class_names: Sequence[str],
                   colormap: Sequence[Sequence[int]], ignore_label: int) -> Figure:
  """A row per image (image | ground truth | prediction) and a legend of the classes shown.

  The prediction is coloured everywhere, also where the ground truth is ignored: those pixels are
  what the model said, they only do not count in the score. A predicted id equal to the ignore label
  (ADE20K's 0, 'other') is a class like any other there.
  """
  shown = set()
  has_ignored = False
  aspects = []
  for _, _, image, label, prediction in rows:
    scored = np.asarray(label) != ignore_label
    shown.update(np.unique(np.asarray(label)[scored]).tolist())
    shown.update(np.unique(prediction).tolist())
    has_ignored = has_ignored or not scored.all()
    height, width = np.shape(image)[:2]
    aspects.append(min(max(height / width, 0.3), 2.0))
  legend = [Patch(facecolor=np.asarray(colormap[i]) / 255.0, edgecolor='0.5',
                  label=_shorten(class_names[i], 30))
            for i in sorted(shown)]
  if has_ignored:
    legend.append(Patch(facecolor=np.asarray(IGNORE_COLOR) / 255.0, edgecolor='0.5',
                        label='ignored (not scored)'))
  legend_columns = 4
  row_heights = [IMAGE_PANEL_INCHES * aspect + 0.45 for aspect in aspects]
  legend_height = 0.3 + 0.18 * math.ceil(len(legend) / legend_columns)
  figure = _new_figure(3 * IMAGE_PANEL_INCHES + 0.4, sum(row_heights) + legend_height + 0.4)
  figure.suptitle(title, fontsize=11)
  parts = figure.subfigures(len(rows) + 1, 1, height_ratios=row_heights + [legend_height],
                            squeeze=False)[:, 0]
  for index, (part, (score, name, image, label, prediction)) in enumerate(zip(parts, rows)):
    part.suptitle(f'{_shorten(name)}    mIoU {score:.3f}', fontsize=9, parse_math=False)
    pictures = (np.asarray(image), _coloured_truth(label, colormap, ignore_label),
                colorize(prediction, colormap))
    for column, (panel, picture) in enumerate(zip(part.subplots(1, 3), pictures)):
      # Label maps without smoothing: blended colours would look like classes that are not there.
      panel.imshow(picture, interpolation='antialiased' if column == 0 else 'nearest')
      panel.set_xticks([])
      panel.set_yticks([])
      if index == 0:
        panel.set_title(('image', 'ground truth', 'prediction')[column], fontsize=8)
  if legend:
    drawn = parts[-1].legend(handles=legend, loc='center', ncol=legend_columns, frameon=False,
                             fontsize=8)
    for text in drawn.get_texts():
      text.set_parse_math(False)
  return figure


def _format(value: Optional[float]) -> str:
  return 'n/a' if value is None else f'{value:.4f}'


def _data_uri(png: bytes) -> str:
  return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
.headline { display: flex; gap: 2.5em; }
.headline div { font-size: 0.9em; color: #555; }
.headline b { display: block; font-size: 1.8em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: right; }
th:nth-child(2), td:nth-child(2), table.pairs td:first-child, table.pairs th:first-child {
  text-align: left; }
tr.absent td { color: #888; font-style: italic; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
"""


def _html_page(*, miou, pixel_accuracy, num_images, class_names, ious, confusion, worst, best,
               png_bytes: Dict[str, bytes]) -> str:
  escape = html.escape
  truth_pixels = confusion.sum(axis=1)
  predicted_pixels = confusion.sum(axis=0)
  parts = [
      '<!DOCTYPE html>',
      '<html lang="en"><head><meta charset="utf-8">',
      # Everything is inline: forbid any fetch, so the page is the same offline and a class name
      # from a user's file can never load anything.
      '<meta http-equiv="Content-Security-Policy" '
      'content="default-src \'none\'; img-src data:; style-src \'unsafe-inline\'">',
      '<title>Evaluation report</title>',
      f'<style>{_STYLE}</style></head><body>',
      '<h1>Evaluation report</h1>',
      '<div class="headline">',
      f'<div><b>{_format(miou)}</b>mIoU</div>',
      f'<div><b>{_format(pixel_accuracy)}</b>pixel accuracy</div>',
      f'<div><b>{int(num_images)}</b>images</div>',
      '</div>',
  ]

  def figure(name: str, alt: str, caption: str) -> None:
    if name in png_bytes:
      parts.append(f'<figure><img src="{_data_uri(png_bytes[name])}" alt="{escape(alt)}">'
                   f'<figcaption>{caption}</figcaption></figure>')

  parts.append('<h2>Per-class IoU</h2>')
  figure('per_class_iou', 'per-class IoU bars',
         'Sorted best first. Hatched rows: classes neither in the ground truth nor predicted, which '
         'have no IoU and do not count in the mIoU.')
  parts.append('<table><thead><tr><th>id</th><th>class</th><th>IoU</th>'
               '<th>ground-truth pixels</th><th>predicted pixels</th></tr></thead><tbody>')
  for index, name in enumerate(class_names):
    iou = ious[index]
    parts.append(f'<tr{"" if iou is not None else " class=absent"}><td>{index}</td>'
                 f'<td>{escape(name)}</td><td>{"absent" if iou is None else f"{iou:.4f}"}</td>'
                 f'<td>{truth_pixels[index]}</td><td>{predicted_pixels[index]}</td></tr>')
  parts.append('</tbody></table>')

  parts.append('<h2>Confusion matrix</h2>')
  figure('confusion_matrix', 'row-normalised confusion matrix',
         'Rows are the ground truth, columns the prediction; each row sums to 1.')
  pairs = _most_confused_pairs(confusion)
  if pairs:
    parts.append('<table class=pairs><thead><tr><th>ground truth</th><th>predicted as</th>'
                 '<th>share of its pixels</th><th>pixels</th></tr></thead><tbody>')
    for truth, predicted, fraction in pairs:
      parts.append(f'<tr><td>{escape(class_names[truth])}</td>'
                   f'<td>{escape(class_names[predicted])}</td><td>{fraction:.1%}</td>'
                   f'<td>{confusion[truth, predicted]}</td></tr>')
    parts.append('</tbody></table>')

  if 'training_curves' in png_bytes:
    parts.append('<h2>Training</h2>')
    figure('training_curves', 'training curves', 'Training scalars by step.')

  for name, heading, rows in (('worst_images', 'Lowest per-image mIoU', worst),
                              ('best_images', 'Highest per-image mIoU', best)):
    if name in png_bytes:
      parts.append(f'<h2>{heading}</h2>')
      listing = ', '.join(f'{escape(row[1])} ({row[0]:.3f})' for row in rows)
      figure(name, heading, f'Image | ground truth | prediction. {listing}')
  parts.append('</body></html>')
  return '\n'.join(parts) + '\n'


def _most_confused_pairs(confusion: np.ndarray) -> List[Tuple[int, int, float]]:
  """The off-diagonal cells with the largest share of their ground-truth row, largest first."""
  fractions = _row_normalised(confusion)
  cells = [(truth, predicted, float(fractions[truth, predicted]))
           for truth, predicted in zip(*np.nonzero(confusion))
           if truth != predicted]
  cells.sort(key=lambda cell: (-cell[2], cell[0], cell[1]))
  return [(int(t), int(p), f) for t, p, f in cells[:MOST_CONFUSED_PAIRS]]
