"""The frozen graph writer: `frozen_inference_graph.pb`, the model zoo's TF1 interface."""
from __future__ import annotations


def write_frozen_graph(graph_def, path: str) -> None:
  # Deterministic: protobuf map fields (node attributes) are otherwise written in hash order, and
  # the same checkpoint must give the same model.tar.gz bytes.
  with open(path, 'wb') as f:
    f.write(graph_def.SerializeToString(deterministic=True))


def write(job, path: str) -> None:
  write_frozen_graph(job.graph_def, path)
