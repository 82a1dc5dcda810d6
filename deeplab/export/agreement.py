"""How closely each exported format's labels follow the frozen graph's (export's format check)."""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from deeplab import metrics
from deeplab.inference import FROZEN_GRAPH_FORMAT


def compare_formats(models: Mapping[str, object], images: Iterable, num_classes: int,
                    reference: str = FROZEN_GRAPH_FORMAT) -> dict:
  """How closely each model's labels follow the reference model's, over `images` (uint8 [H, W, 3]).

  Returns {name: {'pixel_agreement', 'miou', 'num_pixels'}} for every name in `models` but
  `reference`: the share of pixels with the same label, and the mean IoU of the classes either
  model predicts, with the reference's labels taken as the truth.
  """
  others = [name for name in models if name != reference]
  confusions = {name: np.zeros((num_classes, num_classes), np.int64) for name in others}
  for image in images:
    expected = models[reference].predict(image)
    for name in others:
      confusions[name] += metrics.confusion_matrix(expected, models[name].predict(image),
                                                   num_classes, ignore_label=-1)
  class_names = [str(i) for i in range(num_classes)]
  results = {}
  for name, confusion in confusions.items():
    summary = metrics.summarize(confusion, class_names)
    results[name] = {'pixel_agreement': summary['pixel_accuracy'], 'miou': summary['miou'],
                     'num_pixels': summary['num_pixels']}
  return results
