"""Generates valohai.yaml from the step SPECs and the pipeline graph (pipelines/graph.py), so its
parameters cannot drift from the step flags nor its pipelines from the other orchestrators'.

    python -m pipelines.valohai.config            # rewrite valohai.yaml
    python -m pipelines.valohai.config --check    # exit 1 if valohai.yaml is not what this generates
    python -m pipelines.valohai.config --image=registry.example.com/team/deeplab-pipelines:0.1.0

The image: Valohai pulls it for every execution, so it must be one Valohai can pull. By default it is
plain Python (python:3.11-slim), and each execution first installs the pinned requirements with the
CUDA build of the pinned TensorFlow (SETUP_COMMAND, its own command entry, which the local runner
skips) and then runs the step from the repository checkout. With `--image` naming the prebuilt
project image (`make image`, pushed to a registry; docs/image.md) the commands install nothing and
start the step at once. Every command names its inputs and its output explicitly, in the folders
Valohai mounts (/valohai/inputs/<name>/, /valohai/outputs/).

The pipelines are parts of the graph: train-evaluate-export all of it, train-sweep-evaluate the part
up to the sweep's judge with the sweep as a grid-search task node, train-evaluate-deploy the part
up to the gate (then a deployment node fed by the gate's output, so a model that fails the gate is
not deployed: the failed node ends the pipeline), and distributed-train-evaluate-export the part up
to evaluate + export with training as a distributed task node. batch-predict is the batch graph
(graph.BATCH_NODES): predict as a task node over the shards (graph.BATCH), then merge-predictions.
"""
from __future__ import annotations

import argparse
import os
import sys

import yaml

from pipelines import graph
from pipelines.graph import BATCH, SPECS, SWEEP
from pipelines.shared import BASE_IMAGE, ROOT, write_or_check
from steps import serve

# Installs the requirements into the plain base image; the project image has them already.
SETUP_COMMAND = 'sh pipelines/install_requirements.sh cuda'
TF_CONFIG_COMMAND = 'python -m pipelines.valohai.tf_config'
# Where Valohai puts an execution's inputs (/valohai/inputs/<name>/) and collects its outputs.
VALOHAI_ROOT = '/valohai'
CONFIG_PATH = os.path.join(ROOT, 'valohai.yaml')
REGENERATE = 'python -m pipelines.valohai.config'

# Public raw datasets for build-data variant steps: (step name, dataset, raw_data URL). The first one
# is the build-data node of the pipelines: it brings the graph's raw data (RAW_DATA).
VOC2012_URL = 'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar'
ADE20K_URL = 'http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip'
BUILD_DATA_VARIANTS = (
    ('build-data-pascal-voc', 'pascal_voc_seg', VOC2012_URL),
    ('build-data-ade20k', 'ade20k', ADE20K_URL),
)
# The three demo photos of the original DeepLab README: predict's default images, the graph's IMAGES.
DEMO_IMAGES = tuple(f'https://raw.githubusercontent.com/tensorflow/models/master/research/deeplab/'
                    f'g3doc/img/image{i}.jpg' for i in (1, 2, 3))
# The model batch-predict segments with by default (the graph's MODEL): a datum alias, which you point
# at an export's model.tar.gz in the Valohai project (the file's page: Add alias), or give the input
# when starting the pipeline.
MODEL_ALIAS = 'datum://deeplab-model'
STEP_INPUT_DEFAULTS = {'predict': {'images': list(DEMO_IMAGES), 'model': MODEL_ALIAS}}
# The step a pipeline node runs when it is not the node's own: the graph's Givens come from default
# inputs (RAW_DATA the VOC tar of build-data-pascal-voc, IMAGES the demo photos of predict, MODEL
# MODEL_ALIAS).
NODE_STEPS = {'build_data': BUILD_DATA_VARIANTS[0][0]}

# The endpoint serving the exported model, and the deployment the pipeline publishes it to: create
# a deployment of this name once in the Valohai project (Deployments > Create), then every run of
# train-evaluate-deploy adds a version of it.
ENDPOINT = 'segment'
DEPLOYMENT = 'deeplab'
ENDPOINT_MODEL_PATH = 'model/model.tar.gz'
SERVE_SPEC = serve.SPEC

# The task nodes: the graph's sweep, training on several machines, and predict's shards.
SWEEP_TASK = 'train-sweep'
DISTRIBUTED_TASK = 'train-distributed'
BATCH_TASK = 'predict-shards'
BATCH_PIPELINE = 'batch-predict'
# Step parameters exposed as pipeline parameters (`vh pipeline run <name> --<knob>=...`), by step:
# a pipeline with `knobs` has those of its nodes.
PIPELINE_KNOBS = {'train': ('training_number_of_steps', 'train_batch_size', 'base_learning_rate'),
                  'gate': ('min_miou', 'max_miou_drop')}


def step_spec(step: str):
  """The SPEC of a step valohai.yaml has: one of the graph's or of batch prediction's."""
  return SPECS[step] if step in SPECS else graph.BATCH_SPECS[step]


def dashed(name: str) -> str:
  """A step's name as Valohai spells it (build_data -> build-data)."""
  return name.replace('_', '-')


def output_filename(step: str) -> str:
  """The file name of a step's one artifact (e.g. checkpoint.tar.gz)."""
  (output,) = step_spec(step).outputs
  return output.filename


def output_glob(step: str) -> str:
  """What an edge takes of a step's outputs: its artifact; of the fan-out's node, that of any
  shard (predictions-<i>-of-<n>.tar.gz), each shard's file named apart since Valohai keeps one
  file of a name in an input folder."""
  stem, dot, suffix = output_filename(step).partition('.')
  return f'{stem}*{dot}{suffix}' if step == BATCH.node else output_filename(step)


def needs_setup(image: str) -> bool:
  """Whether commands in `image` install the requirements first: only in the plain base image."""
  return image == BASE_IMAGE


def input_flag(path) -> str:
  """`--<name>=/valohai/inputs/<name>/` for a step input (a steps.flags.Path); an optional input's
  flag is given only when Valohai put files in its folder."""
  folder = f'{VALOHAI_ROOT}/inputs/{path.name}/'
  flag = f'--{path.name}={folder}'
  return f'$(ls -A {folder} 2>/dev/null | grep -q . && echo {flag})' if path.optional else flag


def step_command(step: str, image: str = BASE_IMAGE):
  """The step with its inputs and output in Valohai's folders, after SETUP_COMMAND when `needs_setup`.

  Setup is a command entry of its own so that the local runner can skip it; Valohai marks an
  execution failed by its last command, which fails too when setup did (the step cannot import what
  was not installed).
  """
  spec = step_spec(step)
  required = [input_flag(path) for path in spec.inputs if not path.optional]
  # The fan-out's node is given the outputs folder: it names its file after its shard.
  outputs = [f'--{output.name}={VALOHAI_ROOT}/outputs/{"" if step == BATCH.node else output.filename}'
             for output in spec.outputs]
  optional = [input_flag(path) for path in spec.inputs if path.optional]
  command = ' '.join([f'python -m steps.{step}', *required, *outputs, '{parameters}', *optional])
  if step == 'train':  # in a distributed task, TF_CONFIG from Valohai's member list first
    command = f'eval "$({TF_CONFIG_COMMAND})" && {command}'
  return [SETUP_COMMAND, command] if needs_setup(image) else command


def parameter_entry(param, default=None) -> dict:
  """A Valohai parameter for a SPEC Parameter; `default` overrides the SPEC's (variant steps)."""
  default = param.default if default is None else default
  entry = {'name': param.name, 'type': param.type, 'description': param.description}
  if param.type == 'flag':
    # Explicit both ways: a false flag would otherwise send nothing and the step's default would win.
    entry.update({'pass-true-as': f'--{param.name}=true', 'pass-false-as': f'--{param.name}=false'})
  if param.multiple:
    entry.update({'multiple': 'separate', 'multiple-separator': ','})
  if default in ('', ()):
    entry['optional'] = True  # empty: send nothing, the step decides (e.g. every split found)
  else:
    entry['default'] = list(default) if isinstance(default, tuple) else default
  if param.keywords:  # words such as `preset` besides numbers: the step checks the values
    return entry
  if param.choices:
    entry['choices'] = list(param.choices)
  if param.min is not None:
    entry['min'] = param.min
  if param.max is not None:
    entry['max'] = param.max
  return entry


def step_entry(step: str, image: str, name: str = '', default_overrides: dict = None,
               input_defaults: dict = None) -> dict:
  """The Valohai step running steps/<step>.py; a variant step has its own name and defaults."""
  spec = step_spec(step)
  default_overrides = default_overrides or {}
  input_defaults = dict(STEP_INPUT_DEFAULTS.get(step, {}), **(input_defaults or {}))
  inputs = []
  for path in spec.inputs:
    entry = {'name': path.name, 'description': path.description}
    if path.optional:
      entry['optional'] = True
    if path.name in input_defaults:
      entry['default'] = input_defaults[path.name]
    inputs.append(entry)
  (output,) = spec.outputs
  return {'step': {
      'name': name or dashed(step),
      'image': image,
      'description': f'{spec.description} Writes {output.filename} to the outputs.',
      'command': step_command(step, image),
      'parameters': [parameter_entry(p, default_overrides.get(p.name)) for p in spec.parameters],
      'inputs': inputs,
  }}


def _artifact_edges(nodes) -> list:
  """The graph's edges between `nodes`: each node's artifact to the inputs it feeds."""
  return [[f'{dashed(source)}.output.{output_glob(source)}', f'{dashed(target)}.input.{name}']
          for source, target, name in graph.edges(nodes)]


def _node(step: str, task: str = '') -> dict:
  """The pipeline node of a graph node: an execution of its step, or `task` (a task node of it)."""
  if task:
    return {'name': dashed(step), 'type': 'task', 'task': task}
  return {'name': dashed(step), 'type': 'execution', 'step': NODE_STEPS.get(step, dashed(step))}


def _knob_parameters(knobs: dict) -> list:
  return [{'name': knob, 'description': SPECS[step].parameter(knob).description,
           'default': SPECS[step].parameter(knob).default,
           'targets': [f'{dashed(step)}.parameter.{knob}']}
          for step, names in knobs.items() for knob in names]


def _pipeline(name: str, nodes, tasks: dict = None, knobs: bool = False, extra_nodes=(),
              extra_edges=()) -> dict:
  """A pipeline running `nodes` of the graph wired by its edges; `tasks` makes some of them task
  nodes ({step: task name}); `knobs` exposes the PIPELINE_KNOBS of its nodes."""
  tasks = tasks or {}
  pipeline = {'name': name}
  if knobs:
    steps = {node.step for node in nodes}
    pipeline['parameters'] = _knob_parameters({step: names for step, names in PIPELINE_KNOBS.items()
                                               if step in steps})
  pipeline['nodes'] = [_node(node.step, tasks.get(node.step, '')) for node in nodes] + list(extra_nodes)
  pipeline['edges'] = _artifact_edges(nodes) + list(extra_edges)
  return {'pipeline': pipeline}


def train_evaluate_export_pipeline() -> dict:
  """The whole graph: build-data (PASCAL VOC by default) -> train -> evaluate + export -> gate ->
  predict."""
  return _pipeline('train-evaluate-export', graph.NODES, knobs=True)


def sweep_task() -> dict:
  return {'task': {
      'name': SWEEP_TASK,
      'step': dashed(SWEEP.node),
      'type': 'grid-search',
      'parameters': [{'name': name, 'style': 'multiple', 'rules': {'items': list(values)}}
                     for name, values in SWEEP.grid.items()],
  }}


def sweep_pipeline() -> dict:
  """The graph up to the sweep's judge: build-data -> a grid of train executions (task node) ->
  evaluate on every checkpoint (it reports the best one)."""
  return _pipeline('train-sweep-evaluate', graph.through(SWEEP.judged_by), {SWEEP.node: SWEEP_TASK})


def endpoint(image: str) -> dict:
  """The online endpoint: the serve step on the exported model, which the deployment node of
  `train_evaluate_deploy_pipeline` (or `vh deployment create-version`) hands over as a file."""
  serve = SERVE_SPEC.parameter
  return {'endpoint': {
      'name': ENDPOINT,
      'description': SERVE_SPEC.description,
      'image': image,
      'port': serve('port').default,
      # Valohai serves an endpoint under a path it names in $VH_DEFAULT_PREFIX, and an alias's
      # path in the X-VH-Prefix header.
      'server-command': (f'{SETUP_COMMAND} && ' if needs_setup(image) else '') + (
          f'python -m steps.serve --model={ENDPOINT_MODEL_PATH} --host=0.0.0.0 --port={serve("port").default} '
          '--url_prefix="$VH_DEFAULT_PREFIX" --url_prefix_header=X-VH-Prefix'),
      'files': [{'name': 'model', 'description': 'model.tar.gz from the export step (in a pipeline: '
                 'the one the gate step let through)',
                 'path': ENDPOINT_MODEL_PATH}],
  }}


def train_evaluate_deploy_pipeline() -> dict:
  """The graph up to the gate, then a new version of the `deeplab` deployment with the model the
  gate let through. A baseline for the gate is the evaluate node's optional `baseline` input."""
  return _pipeline(
      'train-evaluate-deploy', graph.through('gate'), knobs=True,
      extra_nodes=[{'name': 'deploy', 'type': 'deployment', 'deployment': DEPLOYMENT, 'endpoints': [ENDPOINT]}],
      extra_edges=[[f'{dashed("gate")}.output.{output_filename("gate")}', f'deploy.file.{ENDPOINT}.model']])


# Machines of a distributed training task; each trains on every GPU of its own
# (pipelines/valohai/tf_config.py turns Valohai's member list into TF_CONFIG).
DISTRIBUTED_WORKERS = 2


def distributed_train_task() -> dict:
  """train on DISTRIBUTED_WORKERS machines at once; the chief (rank 0) writes the checkpoint."""
  return {'task': {
      'name': DISTRIBUTED_TASK,
      'step': 'train',
      'type': 'distributed',
      'execution-count': DISTRIBUTED_WORKERS,
      # One execution per member; on a failure of any, stop the others (they cannot go on alone).
      'on-child-error': 'stop-all-and-error',
      'parameters': [],
  }}


def distributed_pipeline() -> dict:
  """The graph up to evaluate + export, training on several machines (task node)."""
  return _pipeline('distributed-train-evaluate-export', graph.through('evaluate', 'export'),
                   {'train': DISTRIBUTED_TASK})


def batch_task() -> dict:
  """predict once per shard: shard_index 0 .. BATCH.shards - 1 of num_shards = BATCH.shards (for
  another count, edit both rules when starting the pipeline: docs/batch_prediction.md)."""
  return {'task': {
      'name': BATCH_TASK,
      'step': dashed(BATCH.node),
      'type': 'grid-search',
      'parameters': [{'name': 'num_shards', 'style': 'single', 'rules': {'value': BATCH.shards}},
                     {'name': 'shard_index', 'style': 'multiple',
                      'rules': {'items': list(range(BATCH.shards))}}],
  }}


def batch_pipeline() -> dict:
  """The batch graph: predict's shards (task node) -> merge-predictions."""
  return _pipeline(BATCH_PIPELINE, graph.BATCH_NODES, {BATCH.node: BATCH_TASK})


def config(image: str = BASE_IMAGE) -> list:
  entries = [step_entry(step, image) for step in [*SPECS, *graph.BATCH_SPECS]]
  entries[1:1] = [step_entry('build_data', image, name, {'dataset': dataset}, {'raw_data': url})
                  for name, dataset, url in BUILD_DATA_VARIANTS]
  return entries + [endpoint(image), sweep_task(), distributed_train_task(), batch_task(),
                    train_evaluate_export_pipeline(), sweep_pipeline(),
                    train_evaluate_deploy_pipeline(), distributed_pipeline(), batch_pipeline()]


def render(image: str = BASE_IMAGE) -> str:
  header = (f'# Generated by `{REGENERATE}` from the step SPECs (steps/*.py) and the pipeline graph '
            f'(pipelines/graph.py): do not edit.\n')
  return header + yaml.safe_dump(config(image), sort_keys=False, width=110, allow_unicode=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.split('\n')[0])
  parser.add_argument('--check', action='store_true', help='only check that valohai.yaml is up to date')
  parser.add_argument('--image', default=BASE_IMAGE,
                      help='the prebuilt project image (make image; docs/image.md) to run every step in, '
                      'installing nothing; default: %(default)s, each execution installing the pinned '
                      'requirements first')
  parser.add_argument('--output', default=CONFIG_PATH, help='where to write the config')
  args = parser.parse_args(argv)
  return write_or_check(args.output, render(args.image), args.check, REGENERATE)


if __name__ == '__main__':
  sys.exit(main())
