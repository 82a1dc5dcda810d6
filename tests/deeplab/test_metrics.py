import numpy as np

from deeplab import metrics


def test_confusion_ignores_the_ignore_label_and_summarizes():
  labels = np.array([[0, 0, 1, 255], [1, 1, 0, 255]])
  predictions = np.array([[0, 1, 1, 2], [1, 1, 0, 0]])
  confusion = metrics.confusion_matrix(labels, predictions, 3, 255)
  assert confusion.tolist() == [[2, 1, 0], [0, 3, 0], [0, 0, 0]]
  result = metrics.summarize(confusion, ['a', 'b', 'c'])
  assert result['per_class_iou'] == {'a': 2 / 3, 'b': 3 / 4, 'c': None}
  assert result['absent_classes'] == ['c']
  assert result['miou'] == (2 / 3 + 3 / 4) / 2  # the absent class does not count as 0
  assert result['pixel_accuracy'] == 5 / 6


def test_class_only_predicted_counts_with_zero_iou():
  confusion = metrics.confusion_matrix(np.array([0, 0]), np.array([0, 1]), 2, 255)
  assert metrics.summarize(confusion, ['a', 'b'])['per_class_iou'] == {'a': 0.5, 'b': 0.0}
