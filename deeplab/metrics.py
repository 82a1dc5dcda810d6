"""Segmentation metrics from a confusion matrix (numpy; rows = truth, columns = prediction)."""
import numpy as np


def confusion_matrix(labels, predictions, num_classes, ignore_label):
  """Counts [num_classes, num_classes] over pixels whose label is not `ignore_label`.

  Labels must already be checked to be classes or the ignore label.
  """
  labels = np.asarray(labels, dtype=np.int64).ravel()
  predictions = np.asarray(predictions, dtype=np.int64).ravel()
  keep = labels != ignore_label
  index = labels[keep] * num_classes + predictions[keep]
  return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_iou(confusion):
  """Per-class IoU of a confusion matrix: float64 [num_classes], NaN for a class absent from both
  truth and prediction (it has no IoU, rather than 0 or 1)."""
  confusion = np.asarray(confusion, dtype=np.float64)
  true_positive = np.diag(confusion)
  union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
  return np.where(union > 0, true_positive / np.maximum(union, 1), np.nan)


def mean_iou(confusion):
  """The mean IoU over the classes present (see `class_iou`); None when none is."""
  iou = class_iou(confusion)
  return float(np.nanmean(iou)) if not np.isnan(iou).all() else None


def summarize(confusion, class_names):
  """mIoU, per-class IoU, pixel accuracy and the matrix itself, as JSON-ready values.

  A class absent from both truth and prediction has no IoU (None) and does not count in the mean,
  rather than counting as 0 or 1.
  """
  confusion = np.asarray(confusion, dtype=np.float64)
  iou = class_iou(confusion)
  present = ~np.isnan(iou)
  total = confusion.sum()
  per_class = {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou)}
  return {
      'miou': mean_iou(confusion),
      'pixel_accuracy': float(np.trace(confusion) / total) if total else None,
      'per_class_iou': per_class,
      'absent_classes': [name for name, p in zip(class_names, present) if not p],
      'num_pixels': int(total),
      'confusion_matrix': confusion.astype(np.int64).tolist(),
  }


def best_index(mious):
  """The index of the highest mIoU, the first one on a tie. None (no pixel was evaluated, so there is
  no IoU) counts as worse than any number. `mious` must not be empty."""
  return max(range(len(mious)), key=lambda i: (mious[i] is not None, mious[i] or 0.0))
