"""The pipeline graph, declared once: which step's artifact feeds which input of which step, and the
sweep. valohai.yaml (pipelines/valohai/config.py), the Kubeflow pipeline (pipelines/kubeflow/pipeline.py)
and dvc.yaml (pipelines/dvc/config.py) are generated from it.

    raw data -> build_data -> train -> evaluate
                    |           |         v (evaluation: metrics.json, recorded in model.json)
                    |           '----> export -> predict <- images
                    '-----------------------^ (tfrecords: int8 calibration, format agreement)

A node runs one step (`python -m steps.<step>`) and is named after it; each step writes one artifact,
its SPEC's output. An input is fed either by an upstream node's artifact or by a `Given`: data the
pipeline does not make, which each orchestrator brings in its own way (DVC from the demo's synthetic
dataset, Valohai from the default inputs of its steps, Kubeflow from URIs imported at run time).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple, Union

from steps import build_data, evaluate, export, predict, train

# The steps of the graph in pipeline order, by module name.
SPECS = {spec.name: spec for spec in (build_data.SPEC, train.SPEC, evaluate.SPEC, export.SPEC, predict.SPEC)}


@dataclasses.dataclass(frozen=True)
class Given:
  """An input the pipeline does not make (raw data, images to segment)."""
  name: str


RAW_DATA = Given('raw_data')
IMAGES = Given('images')


@dataclasses.dataclass(frozen=True)
class Node:
  step: str  # steps.<step>; the node's name
  # The step's input name -> the node whose artifact feeds it, or a Given. Optional inputs left out
  # here are not connected.
  inputs: Dict[str, Union[str, Given]]


NODES = (
    Node('build_data', {'raw_data': RAW_DATA}),
    Node('train', {'tfrecords': 'build_data'}),
    Node('evaluate', {'tfrecords': 'build_data', 'checkpoint': 'train'}),
    Node('export', {'checkpoint': 'train', 'tfrecords': 'build_data', 'evaluation': 'evaluate'}),
    Node('predict', {'model': 'export', 'images': IMAGES}),
)
NODE = {node.step: node for node in NODES}


@dataclasses.dataclass(frozen=True)
class Sweep:
  """`node` runs once per point of `grid` ({its parameter: values}), and `judged_by` (a node fed by
  it) once per point after it; the best point is the one with the highest mIoU
  (`deeplab.metrics.best_index`), and the nodes downstream get its artifact.

  Valohai's grid task crosses every parameter of the grid; Kubeflow's ParallelFor iterates the first
  one (`base_learning_rates`) and takes the others as one value per run (pipeline arguments).
  dvc.yaml runs one point; `dvc exp run --queue` sweeps (docs/orchestrators.md).
  """
  node: str
  judged_by: str
  grid: Dict[str, Tuple]


# Three rates around DeepLab's published 0.007: kfp.local trains the points one after another, and
# at the end-to-end test's size a point costs about 25 s of a two-minute local run on two cores.
# Only variants of deeplab.config.
SWEEP_LEARNING_RATES = (0.007, 0.02, 0.05)
SWEEP_MODEL_VARIANTS = ('mobilenet_v2', 'resnet_v1_50_beta')
SWEEP = Sweep('train', 'evaluate', {'base_learning_rate': SWEEP_LEARNING_RATES,
                                    'model_variant': SWEEP_MODEL_VARIANTS})


def edges(nodes=NODES):
  """(source node, target node, input name) for every input fed by another node of `nodes`."""
  names = {node.step for node in nodes}
  return [(source, node.step, name) for node in nodes for name, source in node.inputs.items()
          if isinstance(source, str) and source in names]


def through(*last: str) -> tuple:
  """The nodes `last` and every node upstream of them, in pipeline order: the part of the graph a
  pipeline ending at `last` runs."""
  wanted, pending = set(), list(last)
  while pending:
    step = pending.pop()
    if step not in wanted:
      wanted.add(step)
      pending += [source for source in NODE[step].inputs.values() if isinstance(source, str)]
  return tuple(node for node in NODES if node.step in wanted)


def check(nodes=NODES, sweep=SWEEP) -> None:
  """Raises ValueError unless every node runs a step of SPECS once, feeds only inputs its step has
  (every required one) from earlier nodes' artifacts or a Given, and the sweep's nodes run
  back to back with the judge fed by the swept node."""
  seen = []
  for node in nodes:
    spec = SPECS[node.step]
    if node.step in seen:
      raise ValueError(f'{node.step} is in the graph twice')
    declared = {path.name: path for path in spec.inputs}
    for name, source in node.inputs.items():
      if name not in declared:
        raise ValueError(f'{node.step} has no input {name!r}')
      if not isinstance(source, Given) and source not in seen:
        raise ValueError(f'{node.step}.{name}: {source!r} is not a node before it')
    missing = [name for name, path in declared.items() if not path.optional and name not in node.inputs]
    if missing:
      raise ValueError(f'{node.step}: nothing feeds {", ".join(missing)}')
    seen.append(node.step)
  order = [node.step for node in nodes]
  if order.index(sweep.judged_by) != order.index(sweep.node) + 1 or \
      sweep.node not in nodes[order.index(sweep.judged_by)].inputs.values():
    raise ValueError(f'the sweep: {sweep.judged_by} must come right after {sweep.node} and read its artifact')
  for parameter, values in sweep.grid.items():
    SPECS[sweep.node].parameter(parameter)  # KeyError: not a parameter of the swept step
    if not values:
      raise ValueError(f'the sweep: no values of {parameter}')


check()
