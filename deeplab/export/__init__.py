"""The exporter: a checkpoint -> the formats of deeplab/inference.py `FORMATS`.

    freeze.py        the inference graph of a checkpoint, variables frozen in (the frozen graph)
    rewrites.py      graph rewrites that keep the labels: batch norm and image pooling folding, the
                     bias and activation of atrous convolutions fused (in the file); native
                     dilated convolutions (at load time where the runtime has the kernel, and in
                     the graph the TFLite writer converts)
    frozen_graph.py  one writer module per format, each with `write(job, path)`
    saved_model.py
    tflite.py
    agreement.py     how closely each written format's labels follow the frozen graph's
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

if TYPE_CHECKING:
  from deeplab.checkpoint import ModelCard
  from deeplab.config import ExportConfig


@dataclasses.dataclass(frozen=True)
class ExportJob:
  """What every format's writer takes, `write(job, path)`: one export of one checkpoint."""
  card: 'ModelCard'  # the checkpoint's model.json (the network, and how it was trained)
  checkpoint_prefix: str
  options: 'ExportConfig'
  graph_def: Any  # the lean frozen inference graph (freeze.freeze)
  # Images to calibrate int8 quantisation on (uint8 [h, w, 3] each), read only when asked for;
  # None when the step was given no TFRecords.
  calibration_images: Optional[Callable[[], Iterable]] = None
