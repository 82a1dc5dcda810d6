"""Runs valohai.yaml steps and pipelines on this machine the way Valohai runs them.

    python -m pipelines.valohai.local step train -p training_number_of_steps=10 -i tfrecords=out/tfrecords.tar.gz
    python -m pipelines.valohai.local pipeline train-evaluate-export \
        -i build-data.raw_data=data/raw -p build-data.dataset=folder -p train.training_number_of_steps=10

Commands are rendered by valohai-yaml from the parameter defaults (flags included, as the Valohai CLI
sends them) plus the given values, and run from the repository root in this environment, with the
/valohai folders of each execution laid out under the run directory (default
`.valohai/runs/<timestamp>/<node>/`): `inputs/<name>/` (files from an upstream node's outputs by edge,
or a local path), `outputs/`, and `config/parameters.json`. The commands' /valohai/ paths point there,
and so do VH_INPUTS_DIR, VH_OUTPUTS_DIR and VH_CONFIG_DIR (valohai-utils). The runner installs nothing
and touches no system file: it skips the setup command entry (the requirements install of
pipelines/valohai/config.py SETUP_COMMAND) and says so; the packages are this environment's. Every stdout line that is a JSON object is collected as the execution's metadata (as
on Valohai); `summary.json` in the run directory holds it with each node's outputs. Pipeline values
are `node.name=...`; a name without a node is a pipeline parameter. A grid-search task node runs its
step once per point of the task's grid (`single` and `multiple` rules), one after another, in
`<node>/<point>/`; its edges carry every point's outputs, and values given for the node apply to every
point. A deployment node serves nothing here: it lays out the files its edges hand to each endpoint,
at the endpoint's paths under `<run directory>/<node>/<endpoint>/`, which is what a new version of the
deployment would get; a failed node before it ends the run first, so then it gets nothing. Exit
status: 0, or 1 with an `error:` line naming the node whose command failed.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import itertools
import json
import os
import shlex
import shutil
import sys
import urllib.request
import valohai_yaml
from valohai_yaml.excs import ValidationErrors

from pipelines.shared import run_passing_through
from pipelines.valohai.config import CONFIG_PATH, ROOT, SETUP_COMMAND, VALOHAI_ROOT


class RunError(Exception):
  """A failed execution or a bad request; the message is one line."""


def parse_assignments(items) -> dict:
  """['a=1', 'b.c=x'] -> {'a': '1', 'b.c': 'x'}."""
  values = {}
  for item in items or ():
    name, sep, value = item.partition('=')
    if not sep or not name:
      raise RunError(f'expected NAME=VALUE, got {item!r}')
    values[name] = value
  return values


def cast_parameter(step, name: str, raw):
  """A command-line string (or an upstream value) as the typed value Valohai would store."""
  if name not in step.parameters:
    raise RunError(f'step {step.name} has no parameter {name!r}')
  parameter = step.parameters[name]
  if parameter.type == 'flag':
    if isinstance(raw, bool):
      return raw
    if raw not in ('true', 'false'):
      raise RunError(f'{step.name}: parameter {name}: expected true or false, got {raw!r}')
    return raw == 'true'
  if parameter.multiple and isinstance(raw, str):
    raw = [part for part in raw.split(',') if part]
  try:
    return parameter.validate(raw)
  except ValidationErrors as e:
    raise RunError(f'{step.name}: parameter {name}: {e}') from None


def _place(source: str, folder: str) -> None:
  """Puts a local file, a folder's files, or a URL's download into an input folder."""
  os.makedirs(folder, exist_ok=True)
  if source.startswith(('http://', 'https://')):
    target = os.path.join(folder, os.path.basename(source.split('?')[0]))
    try:
      urllib.request.urlretrieve(source, target)
    except OSError as e:
      raise RunError(f'cannot download {source}: {e}') from None
    return
  if '://' in source:  # datum://, s3://, ...: Valohai's stores, out of reach here
    raise RunError(f'input {source}: only Valohai fetches it; give a local path or an http(s) URL with -i')
  source = os.path.abspath(source)
  if not os.path.exists(source):
    raise RunError(f'input {source} does not exist')
  entries = [os.path.join(source, e) for e in sorted(os.listdir(source))] if os.path.isdir(source) else [source]
  for entry in entries:
    # Files of their own in the input folder, as Valohai downloads them: a step refuses a symbolic
    # link out of its input. Hard links where the file system allows (the steps only read inputs),
    # so a dataset is not copied.
    target = os.path.join(folder, os.path.basename(entry))
    if os.path.lexists(target):
      # Valohai too puts an input's files side by side in one folder, where one name holds one file.
      raise RunError(f'two files named {os.path.basename(entry)} for the input folder {folder}: '
                     'Valohai would keep only one of them')
    if os.path.isdir(entry):
      shutil.copytree(entry, target, copy_function=_link_or_copy)
    else:
      _link_or_copy(entry, target)


def _link_or_copy(source: str, target: str) -> None:
  try:
    os.link(source, target)
  except OSError:  # another file system, or one without hard links
    shutil.copy2(source, target)


def local_commands(step, exec_dir: str) -> list:
  """The step's command entries as they run here: without the setup entry, and with the /valohai/
  folders of the command templates (not of parameter values) moved to `exec_dir`."""
  if shlex.quote(exec_dir) != exec_dir:
    raise RunError(f'run directory {exec_dir} has characters a shell would split or expand: '
                   'pass another --run-dir')
  commands = [step.command] if isinstance(step.command, str) else list(step.command)
  if SETUP_COMMAND in commands:
    print(f'[{step.name}] skipped the setup command `{SETUP_COMMAND}`: the local runner installs '
          'nothing (it uses the packages of this environment)', file=sys.stderr, flush=True)
  commands = [command.replace(f'{VALOHAI_ROOT}/', f'{exec_dir}/')
              for command in commands if command != SETUP_COMMAND]
  if not commands:
    raise RunError(f'step {step.name} has no command besides setup')
  return commands


def run_execution(step, exec_dir: str, parameters: dict, inputs: dict) -> dict:
  """Runs one execution of `step` in `exec_dir`; `inputs` maps names to lists of paths or URLs.

  Returns {'step', 'parameters', 'exit_code', 'metadata', 'outputs'}; raises RunError when the command
  fails.
  """
  values = dict(step.get_parameter_defaults(include_flags=True))
  values.update({name: cast_parameter(step, name, raw) for name, raw in parameters.items()})
  unknown = set(inputs) - set(step.inputs)
  if unknown:
    raise RunError(f'step {step.name} has no input {sorted(unknown)[0]!r}')
  commands = local_commands(step, exec_dir)
  folders = {kind: os.path.join(exec_dir, kind) for kind in ('inputs', 'outputs', 'config')}
  for folder in folders.values():
    os.makedirs(folder, exist_ok=True)
  for name, declared in step.inputs.items():
    sources = inputs.get(name)
    if sources is None:
      sources = declared.default if isinstance(declared.default, list) else list(filter(None, [declared.default]))
    if not sources and not declared.optional:
      raise RunError(f'{step.name}: input {name!r} has no source: pass it as NAME=PATH with -i')
    for source in sources:
      _place(source, os.path.join(folders['inputs'], name))
  with open(os.path.join(folders['config'], 'parameters.json'), 'w') as f:
    json.dump(values, f, indent=2, sort_keys=True)
  command = ' && '.join(step.build_command(values, command=commands))
  env = dict(os.environ, VH_INPUTS_DIR=folders['inputs'], VH_OUTPUTS_DIR=folders['outputs'],
             VH_CONFIG_DIR=folders['config'], VH_REPOSITORY_DIR=ROOT)
  print(f'[{step.name}] {command}', file=sys.stderr, flush=True)
  exit_code, metadata = run_passing_through(['sh', '-c', command], cwd=ROOT, env=env)
  outputs = sorted(os.path.relpath(os.path.join(d, f), folders['outputs'])
                   for d, _, files in os.walk(folders['outputs']) for f in files)
  result = {'step': step.name, 'parameters': values, 'exit_code': exit_code, 'metadata': metadata, 'outputs': outputs}
  with open(os.path.join(exec_dir, 'result.json'), 'w') as f:
    json.dump(result, f, indent=2)
  if exit_code != 0:
    raise RunError(f'{step.name}: command failed with exit code {exit_code} (logs above; {exec_dir})')
  return result


def task_points(task) -> list:
  """The parameter values of each execution of a grid-search task: the product of its rules."""
  if task.type.value != 'grid_search':
    raise RunError(f'task {task.name} is a {task.type.value} task; only grid-search tasks run locally')
  axes = []
  for parameter in task.parameters:
    style, rules = parameter.style.value, parameter.rules
    if style == 'single':
      axes.append([(parameter.name, rules['value'])])
    elif style == 'multiple':
      axes.append([(parameter.name, item) for item in rules['items']])
    else:
      raise RunError(f'task {task.name}: parameter {parameter.name} has style {style}; only single '
                     'and multiple run locally')
  return [dict(point) for point in itertools.product(*axes)]


def _ordered_nodes(pipeline) -> list:
  """The pipeline's nodes, each after every node it has an edge from."""
  ordered, remaining = [], list(pipeline.nodes)
  while remaining:
    done = {n.name for n in ordered}
    ready = [n for n in remaining
             if all(e.source_node in done for e in pipeline.edges if e.target_node == n.name)]
    if not ready:
      raise RunError(f'pipeline {pipeline.name} has a cycle')
    ordered.extend(ready)
    remaining = [n for n in remaining if n not in ready]
  return ordered


def run_pipeline(config, name: str, run_dir: str, parameters: dict, inputs: dict) -> dict:
  """Runs every node of pipeline `name` in order, wiring edges; returns {node: result}."""
  if name not in config.pipelines:
    raise RunError(f'no pipeline {name!r} in valohai.yaml (have: {", ".join(config.pipelines)})')
  pipeline = config.pipelines[name]
  node_values = {node.name: {} for node in pipeline.nodes}
  pipeline_values = {p.name: p.default for p in pipeline.parameters}
  for key, value in parameters.items():
    node, sep, param = key.partition('.')
    if sep:
      _check_node(pipeline, node)
      node_values[node][param] = value
    elif key in pipeline_values:
      pipeline_values[key] = value
    else:
      raise RunError(f'pipeline {name} has no parameter {key!r} (use NODE.{key}=... for a node parameter)')
  # A pipeline parameter (given or its default) sets its targets, unless a node value was given.
  for parameter in pipeline.parameters:
    for target in parameter.targets if pipeline_values[parameter.name] is not None else ():
      target_node, _, target_param = target.split('.', 2)
      node_values[target_node].setdefault(target_param, pipeline_values[parameter.name])
  node_inputs = {node.name: {} for node in pipeline.nodes}
  for key, path in inputs.items():
    node, sep, input_name = key.partition('.')
    if not sep:
      raise RunError(f'pipeline inputs are NODE.INPUT=PATH, got {key!r}')
    _check_node(pipeline, node)
    node_inputs[node][input_name] = [path]
  results, exec_dirs = {}, {}
  for node in _ordered_nodes(pipeline):
    if node.type == 'deployment':
      results[node.name] = deployment_files(config, pipeline, node, run_dir, results)
      continue
    if node.type not in ('execution', 'task'):
      raise RunError(f'node {node.name} is a {node.type} node; only execution, task and deployment '
                     'nodes run locally')
    for edge in (e for e in pipeline.edges if e.target_node == node.name):
      upstream = results[edge.source_node]
      if edge.source_type == 'output':
        wired = [os.path.join(exec_dir, 'outputs', f)
                 for exec_dir, result in zip(exec_dirs[edge.source_node], _executions(upstream))
                 for f in result['outputs'] if fnmatch.fnmatch(f, edge.source_key)]
        if not wired:
          raise RunError(f'edge {edge.source} -> {edge.target}: {edge.source_node} wrote no matching output')
        node_inputs[node.name].setdefault(edge.target_key, []).extend(wired)
      elif edge.source_type == 'parameter':
        if node.type == 'task' or 'executions' in upstream:
          raise RunError(f'edge {edge.source} -> {edge.target}: parameter edges of task nodes do not run locally')
        node_values[node.name][edge.target_key] = upstream['parameters'][edge.source_key]
    if node.type == 'execution':
      exec_dirs[node.name] = [os.path.join(run_dir, node.name)]
      results[node.name] = run_execution(config.steps[node.step], exec_dirs[node.name][0],
                                         node_values[node.name], node_inputs[node.name])
      continue
    task = config.tasks[node.task]
    points = task_points(task)
    exec_dirs[node.name] = [os.path.join(run_dir, node.name, str(i)) for i in range(len(points))]
    results[node.name] = {'task': task.name, 'executions': [
        run_execution(config.steps[task.step], exec_dir, dict(point, **node_values[node.name]),
                      node_inputs[node.name])
        for exec_dir, point in zip(exec_dirs[node.name], points)]}
  return results


def _executions(result: dict) -> list:
  """The execution results of a node's result: its own, or each of a task node's."""
  return result.get('executions', [result])


def deployment_files(config, pipeline, node, run_dir: str, results: dict) -> dict:
  """The files the edges into deployment `node` hand to its endpoints, copied to the endpoint's paths
  under `<run_dir>/<node>/<endpoint>/`; returns {'deployment', 'endpoints', 'files'}."""
  files = []
  for edge in (e for e in pipeline.edges if e.target_node == node.name):
    endpoint, _, name = edge.target_key.partition('.')
    declared = {f.name: f for f in config.endpoints[endpoint].files}
    if edge.target_type != 'file' or name not in declared:
      raise RunError(f'edge {edge.source} -> {edge.target}: expected deploy.file.<endpoint>.<file>')
    matched = [f for f in results[edge.source_node]['outputs'] if fnmatch.fnmatch(f, edge.source_key)]
    if len(matched) != 1:
      raise RunError(f'edge {edge.source} -> {edge.target}: {edge.source_node} wrote {len(matched)} '
                     'matching outputs; a deployment file takes one')
    target = os.path.join(run_dir, node.name, endpoint, declared[name].path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(os.path.join(run_dir, edge.source_node, 'outputs', matched[0]), target)
    files.append(os.path.relpath(target, os.path.join(run_dir, node.name)))
  print(f'[{node.name}] deployment {node.deployment}: not served locally; its files are in '
        f'{os.path.join(run_dir, node.name)}', file=sys.stderr, flush=True)
  return {'deployment': node.deployment, 'endpoints': list(node.endpoints), 'files': files}


def _check_node(pipeline, node: str) -> None:
  if node not in pipeline.node_map:
    raise RunError(f'pipeline {pipeline.name} has no node {node!r}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m pipelines.valohai.local',
                                   description='Run valohai.yaml steps and pipelines locally, as Valohai would.')
  parser.add_argument('kind', choices=('step', 'pipeline'))
  parser.add_argument('name', help='the step or pipeline name in valohai.yaml')
  parser.add_argument('-p', '--param', action='append', metavar='NAME=VALUE',
                      help='a parameter value (pipelines: NODE.NAME=VALUE, or a pipeline parameter)')
  parser.add_argument('-i', '--input', action='append', metavar='NAME=PATH',
                      help='an input file or folder (pipelines: NODE.NAME=PATH)')
  parser.add_argument('--run-dir', help='where the executions lay out their /valohai folders '
                      '(default: .valohai/runs/<timestamp>)')
  parser.add_argument('--config', default=CONFIG_PATH)
  args = parser.parse_args(argv)
  run_dir = os.path.abspath(args.run_dir or os.path.join(
      ROOT, '.valohai', 'runs', datetime.datetime.now().strftime('%Y%m%d-%H%M%S')))
  with open(args.config) as f:
    config = valohai_yaml.parse(f)
  try:
    parameters, inputs = parse_assignments(args.param), parse_assignments(args.input)
    if os.path.exists(run_dir) and os.listdir(run_dir):
      raise RunError(f'run directory {run_dir} is not empty')
    if args.kind == 'step':
      if args.name not in config.steps:
        raise RunError(f'no step {args.name!r} in valohai.yaml (have: {", ".join(config.steps)})')
      results = {args.name: run_execution(config.steps[args.name], os.path.join(run_dir, args.name), parameters,
                                          {name: [path] for name, path in inputs.items()})}
    else:
      results = run_pipeline(config, args.name, run_dir, parameters, inputs)
  except RunError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    return 1
  with open(os.path.join(run_dir, 'summary.json'), 'w') as f:
    json.dump(results, f, indent=2)
  print(f'[pipelines.valohai.local] done: {run_dir}/summary.json', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
