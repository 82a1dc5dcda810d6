"""The pipeline graph, declared once: which step's artifact feeds which input of which step, and the
sweep. valohai.yaml (pipelines/valohai/config.py), the Kubeflow pipeline (pipelines/kubeflow/pipeline.py)
and dvc.yaml (pipelines/dvc/config.py) are generated from it.

    raw data -> build_data -> train -> evaluate ----------------.
                    |           |         v (evaluation,       |
                    |           |         |  into model.json)  v
                    |           '----> export -------------> gate -> predict <- images
                    '-----------------------^ (tfrecords: int8 calibration, format agreement)

The gate lets export's model through only when evaluate's mIoU is good enough: what comes after it
(predict, a deployment, the published model) gets the gate's output, never export's.

Batch prediction is a graph of its own (BATCH_NODES): predict fanned out over shards of an image set
(BATCH, a FanOut), then merge_predictions joining the shards into one artifact.

    model, images -> predict (shard 0 .. N-1 of N, at once) -> merge_predictions

A node runs one step (`python -m steps.<step>`) and is named after it; each step writes one artifact,
its SPEC's output. An input is fed either by an upstream node's artifact or by a `Given`: data the
pipeline does not make, which each orchestrator brings in its own way (DVC from the demo's synthetic
dataset, Valohai from the default inputs of its steps, Kubeflow from URIs imported at run time).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple, Union

from steps import build_data, evaluate, export, gate, merge_predictions, predict, train

# The steps of the graph in pipeline order, by module name.
SPECS = {spec.name: spec for spec in (build_data.SPEC, train.SPEC, evaluate.SPEC, export.SPEC, gate.SPEC,
                                       predict.SPEC)}
# The steps only batch prediction runs.
BATCH_SPECS = {merge_predictions.SPEC.name: merge_predictions.SPEC}


@dataclasses.dataclass(frozen=True)
class Given:
  """An input the pipeline does not make (raw data, images to segment)."""
  name: str


RAW_DATA = Given('raw_data')
IMAGES = Given('images')
MODEL = Given('model')


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
    Node('gate', {'evaluation': 'evaluate', 'model': 'export'}),
    Node('predict', {'model': 'gate', 'images': IMAGES}),
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


@dataclasses.dataclass(frozen=True)
class FanOut:
  """`node` runs `shards` times at once, as shard `shard_index` = 0 .. shards - 1 of `num_shards` =
  `shards` (its parameters), and `merged_by` (fed by it through `into`) joins all their artifacts.
  `shards` is the generated files' default; each orchestrator lets a run choose another count
  (docs/batch_prediction.md)."""
  node: str
  merged_by: str
  into: str
  shards: int


BATCH_NODES = (
    Node('predict', {'model': MODEL, 'images': IMAGES}),
    Node('merge_predictions', {'shards': 'predict'}),
)
# Three shards: the smallest fan-out whose merge has a middle shard to lose (the tests' gap).
BATCH = FanOut('predict', 'merge_predictions', 'shards', 3)


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


def downstream(step: str) -> tuple:
  """The nodes fed by `step`'s artifact, directly or through others, in pipeline order."""
  fed = {step}
  for node in NODES:
    if any(source in fed for source in node.inputs.values() if isinstance(source, str)):
      fed.add(node.step)
  return tuple(node for node in NODES if node.step in fed - {step})


def check_nodes(nodes) -> None:
  """Raises ValueError unless every node runs a step of SPECS or BATCH_SPECS once and feeds only
  inputs its step has (every required one) from earlier nodes' artifacts or a Given."""
  seen = []
  for node in nodes:
    spec = {**SPECS, **BATCH_SPECS}[node.step]
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


def check(nodes=NODES, sweep=SWEEP) -> None:
  """check_nodes, and the sweep's nodes run back to back with the judge fed by the swept node."""
  check_nodes(nodes)
  order = [node.step for node in nodes]
  if order.index(sweep.judged_by) != order.index(sweep.node) + 1 or \
      sweep.node not in nodes[order.index(sweep.judged_by)].inputs.values():
    raise ValueError(f'the sweep: {sweep.judged_by} must come right after {sweep.node} and read its artifact')
  for parameter, values in sweep.grid.items():
    SPECS[sweep.node].parameter(parameter)  # KeyError: not a parameter of the swept step
    if not values:
      raise ValueError(f'the sweep: no values of {parameter}')


def check_batch(nodes=BATCH_NODES, fan_out=BATCH) -> None:
  """check_nodes, and the fan-out's node takes the shard parameters and feeds its merger."""
  check_nodes(nodes)
  spec = SPECS[fan_out.node]
  spec.parameter('num_shards'), spec.parameter('shard_index')  # KeyError: not a sharded step
  if {node.step: node for node in nodes}[fan_out.merged_by].inputs.get(fan_out.into) != fan_out.node:
    raise ValueError(f'the fan-out: {fan_out.merged_by}.{fan_out.into} must read {fan_out.node}')
  if not 1 <= fan_out.shards <= spec.parameter('num_shards').max:
    raise ValueError(f'the fan-out: {fan_out.shards} shards is out of num_shards\' bounds')


check()
check_batch()
