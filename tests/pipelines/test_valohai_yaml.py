"""valohai.yaml agrees with the step SPECs, lints clean, and its pipelines wire real inputs and outputs.

Lint does not check that an edge's target exists in the target step nor that an output glob can match
a file the step writes: those are checked here, against the SPECs rather than the generator.
"""
import fnmatch
import os
import re
import subprocess
import sys

import pytest
import valohai_yaml
from valohai_yaml.lint import lint_file

from pipelines import graph
from pipelines.graph import SPECS, SWEEP_LEARNING_RATES, SWEEP_MODEL_VARIANTS
from pipelines.shared import BASE_IMAGE
from pipelines.valohai import config as generator
from pipelines.valohai.config import dashed
from steps import serve
from steps.flags import FLAG, parse_flags
from tests.conftest import REPO

ROOT = str(REPO)
CONFIG_PATH = os.path.join(ROOT, 'valohai.yaml')


@pytest.fixture(scope='module')
def config():
  with open(CONFIG_PATH) as f:
    return valohai_yaml.parse(f)


def step_invocation(command: str) -> str:
  """The `python -m steps.<name> ...` part of a step's command; only train's may be preceded, by the
  line that sets TF_CONFIG in a distributed task."""
  before, found, rest = command.partition('python -m steps.')
  assert found and before in ('', f'eval "$({generator.TF_CONFIG_COMMAND})" && '), command
  return found + rest


def spec_of(step):
  """The SPEC of the step module a Valohai step runs (`python -m steps.<module>`)."""
  commands = [step.command] if isinstance(step.command, str) else step.command
  (module,) = {m for c in commands for m in re.findall(r'python -m steps\.(\w+)', c)}
  return generator.step_spec(module)


def rendered_argv(step, values=None):
  """The step's arguments as Valohai would pass them (defaults, flags included, then `values`), as the
  shell hands them over (an optional input's flag only when its /valohai/inputs/ folder has files)."""
  parameters = dict(step.get_parameter_defaults(include_flags=True), **(values or {}))
  command = step_invocation(step.build_command(parameters)[-1])
  module = f'python -m steps.{spec_of(step).name} '
  assert command.startswith(module), command
  shell = subprocess.run(['sh', '-c', "printf '%s\\0' " + command[len(module):]], capture_output=True, text=True,
                         check=True)
  return shell.stdout.split('\0')[:-1]


@pytest.mark.process
def test_lint_is_clean_with_strict_warnings():
  result = lint_file(CONFIG_PATH)
  assert not list(result.messages), [m['message'] for m in result.messages]
  cli = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'valohai-yaml'), '--strict-warnings',
                        CONFIG_PATH], capture_output=True, text=True)
  assert cli.returncode == 0, cli.stdout + cli.stderr


def test_generated_file_is_up_to_date():
  with open(CONFIG_PATH) as f:
    assert f.read() == generator.render(), f'run: {generator.REGENERATE}'
  assert generator.main(['--check']) == 0


@pytest.mark.process
def test_commands_name_their_inputs_and_output_in_the_valohai_folders(config):
  """No step looks for Valohai's folders itself: each command passes them as flags."""
  for step in config.steps.values():
    spec = spec_of(step)
    argv = rendered_argv(step)
    for path in spec.inputs:
      if not path.optional:
        assert f'--{path.name}=/valohai/inputs/{path.name}/' in argv, (step.name, path.name)
    (output,) = spec.outputs
    # The fan-out's node gets the folder: each shard names its own file in it.
    written = '' if spec.name == graph.BATCH.node else output.filename
    assert f'--{output.name}=/valohai/outputs/{written}' in argv, step.name


def test_the_base_image_installs_the_requirements_first_in_a_command_of_its_own(config):
  for step in config.steps.values():
    assert step.image == BASE_IMAGE
    setup, command = step.command
    assert setup == generator.SETUP_COMMAND == 'sh pipelines/install_requirements.sh cuda'
  (endpoint,) = config.endpoints.values()
  assert endpoint.server_command.startswith(f'{generator.SETUP_COMMAND} && python -m steps.serve ')


def test_a_prebuilt_image_installs_nothing_and_lints_clean(tmp_path):
  image = 'registry.example.com/team/deeplab-pipelines:0.1.0'
  path = tmp_path / 'valohai.yaml'
  assert generator.main([f'--image={image}', f'--output={path}']) == 0
  assert 'install_requirements' not in path.read_text()
  assert not list(lint_file(str(path)).messages)
  with open(path) as f:
    prebuilt = valohai_yaml.parse(f)
  for step in prebuilt.steps.values():
    assert step.image == image and isinstance(step.command, str), step.name
    assert step_invocation(step.command).startswith(f'python -m steps.{spec_of(step).name} '), step.name
  (endpoint,) = prebuilt.endpoints.values()
  assert endpoint.image == image and endpoint.server_command.startswith('python -m steps.serve ')


def test_every_step_module_has_a_step_of_its_name(config):
  for name in SPECS:
    assert dashed(name) in config.steps
    assert spec_of(config.steps[dashed(name)]).name == name


def test_parameters_match_spec_names_types_and_limits(config):
  for step in config.steps.values():
    spec = spec_of(step)
    assert list(step.parameters) == [p.name for p in spec.parameters], step.name
    for param in spec.parameters:
      declared = step.parameters[param.name]
      assert declared.type == param.type, (step.name, param.name)
      assert declared.description, (step.name, param.name)
      assert bool(declared.multiple) == param.multiple, (step.name, param.name)
      if param.keywords:  # `preset`/`none` or numbers: a string to Valohai, checked by the step
        assert (declared.choices, declared.min, declared.max) == (None, None, None), param.name
        continue
      if param.type != FLAG:  # valohai-yaml gives every flag the choices [True, False]
        assert (declared.choices or []) == list(param.choices), (step.name, param.name)
      assert (declared.min, declared.max) == (param.min, param.max), (step.name, param.name)


def test_every_step_flag_is_a_parameter_input_or_output(config):
  for step in config.steps.values():
    spec = spec_of(step)
    flags = {p.name for p in spec.parameters + spec.inputs + spec.outputs}
    declared = set(step.parameters) | set(step.inputs) | {o.name for o in spec.outputs}
    assert declared == flags, step.name
    for path in spec.inputs:
      assert step.inputs[path.name].optional == path.optional, (step.name, path.name)


@pytest.mark.process
def test_rendered_default_command_parses_to_the_spec_defaults(config):
  """The round trip through Valohai's rendering and the step's parser keeps every default."""
  for name, spec in SPECS.items():
    step = config.steps[dashed(name)]
    args = parse_flags(spec, rendered_argv(step))
    assert {p.name: getattr(args, p.name) for p in spec.parameters} == spec.defaults(), name


@pytest.mark.process
def test_build_data_variants_differ_only_in_dataset_and_a_public_raw_data_default(config):
  spec = SPECS['build_data']
  for name, dataset, url in generator.BUILD_DATA_VARIANTS:
    step = config.steps[name]
    args = parse_flags(spec, rendered_argv(step))
    assert dict(spec.defaults(), dataset=dataset) == {p.name: getattr(args, p.name) for p in spec.parameters}
    assert step.inputs['raw_data'].default == url


def test_input_defaults_are_public_urls_or_the_model_alias(config):
  """Public URLs; predict's model (batch-predict's MODEL) is the datum alias the docs have you set."""
  for step in config.steps.values():
    for declared in step.inputs.values():
      defaults = declared.default if isinstance(declared.default, list) else [declared.default]
      for url in filter(None, defaults):
        assert re.match(r'https?://', url) or (step.name, declared.name, url) == (
            'predict', 'model', generator.MODEL_ALIAS), (step.name, declared.name, url)


@pytest.mark.process
def test_multiple_and_flag_values_render_in_a_form_the_step_parses(config):
  step = config.steps['train']
  args = parse_flags(SPECS['train'], rendered_argv(step, {
      'atrous_rates': [6, 12, 18], 'train_crop_size': [129, 129], 'fine_tune_batch_norm': False}))
  assert args.atrous_rates == (6, 12, 18)
  assert args.train_crop_size == (129, 129)
  assert args.fine_tune_batch_norm is False


def node_step(config, node):
  return config.steps[config.tasks[node.task].step if node.type == 'task' else node.step]


def test_pipeline_edges_connect_existing_outputs_to_existing_inputs(config):
  for pipeline in config.pipelines.values():
    nodes = pipeline.node_map
    for edge in pipeline.edges:
      source = node_step(config, nodes[edge.source_node])
      if edge.target_type == 'file':  # into a deployment node: <endpoint>.<file>
        endpoint, file_name = edge.target_key.split('.', 1)
        assert endpoint in nodes[edge.target_node].endpoints, (pipeline.name, edge.target)
        assert file_name in [f.name for f in config.endpoints[endpoint].files], edge.target
        (output,) = spec_of(source).outputs
        assert fnmatch.fnmatch(output.filename, edge.source_key), (pipeline.name, edge.source)
        continue
      target = node_step(config, nodes[edge.target_node])
      if edge.source_type == 'output':
        (output,) = spec_of(source).outputs
        assert fnmatch.fnmatch(output.filename, edge.source_key), (pipeline.name, edge.source)
      else:
        assert edge.source_type == 'parameter' and edge.source_key in source.parameters, edge.source
      assert edge.target_type in ('input', 'parameter'), edge.target
      sockets = target.inputs if edge.target_type == 'input' else target.parameters
      assert edge.target_key in sockets, (pipeline.name, edge.target)


def test_pipeline_parameters_target_existing_parameters(config):
  for pipeline in config.pipelines.values():
    for parameter in pipeline.parameters:
      for target in parameter.targets:
        node, kind, key = target.split('.', 2)
        assert kind == 'parameter' and key in node_step(config, pipeline.node_map[node]).parameters, target


def test_every_required_input_of_a_pipeline_node_is_fed(config):
  for pipeline in config.pipelines.values():
    fed = {(e.target_node, e.target_key) for e in pipeline.edges if e.target_type in ('input', 'file')}
    for node in pipeline.nodes:
      if node.type == 'deployment':
        for endpoint in node.endpoints:
          for file in config.endpoints[endpoint].files:
            assert (node.name, f'{endpoint}.{file.name}') in fed, (pipeline.name, node.name, file.name)
        continue
      for declared in node_step(config, node).inputs.values():
        assert declared.optional or declared.default or (node.name, declared.name) in fed, \
            (pipeline.name, node.name, declared.name)


def test_sweep_task_values_are_valid_parameter_values(config):
  for task in config.tasks.values():
    step = config.steps[task.step]
    for variant in task.parameters:
      for value in variant.rules.get('items', [variant.rules.get('value')]):
        assert step.parameters[variant.name].validate(value) == value, (task.name, variant.name, value)


def test_sweep_task_is_the_shared_grid(config):
  task = config.tasks['train-sweep']
  assert {v.name: tuple(v.rules['items']) for v in task.parameters} == {
      'base_learning_rate': SWEEP_LEARNING_RATES, 'model_variant': SWEEP_MODEL_VARIANTS}


def test_the_endpoint_runs_the_serve_step_on_its_model_file(config):
  (endpoint,) = config.endpoints.values()
  command = endpoint.server_command.split('&&')[-1].split()
  assert command[:3] == ['python', '-m', 'steps.serve']
  args = parse_flags(serve.SPEC, command[3:])
  assert args.model == endpoint.files[0].path and str(args.port) == str(endpoint.port)
  assert args.host == '0.0.0.0'  # reachable from outside the container


def test_each_pipeline_is_a_part_of_the_graph_with_its_edges(config):
  """Every pipeline node of a step is the graph's node of that step, fed by exactly the edges the
  graph draws between the pipeline's nodes; train-evaluate-export is the whole graph."""
  for pipeline in config.pipelines.values():
    steps = {node.name: spec_of(node_step(config, node)).name for node in pipeline.nodes
             if node.type != 'deployment'}
    assert all(name == dashed(step) for name, step in steps.items()), (pipeline.name, steps)
    batch = pipeline.name == generator.BATCH_PIPELINE  # the batch graph, whole
    graph_nodes = {node.step: node for node in (graph.BATCH_NODES if batch else graph.NODES)}
    nodes = [graph_nodes[step] for step in steps.values()]
    fed = {(steps[e.source_node], steps[e.target_node], e.target_key) for e in pipeline.edges
           if e.target_type == 'input'}
    assert fed == set(graph.edges(nodes)), pipeline.name
    if batch:
      assert nodes == list(graph.BATCH_NODES)
    else:
      assert nodes == list(graph.through(*[n.step for n in nodes])), pipeline.name  # upstream included
  assert [node.name for node in config.pipelines['train-evaluate-export'].nodes] == [
      dashed(node.step) for node in graph.NODES]
  sweep = config.pipelines['train-sweep-evaluate'].node_map
  task = config.tasks[sweep[dashed(graph.SWEEP.node)].task]
  assert {v.name: tuple(v.rules['items']) for v in task.parameters} == graph.SWEEP.grid
  assert dashed(graph.SWEEP.judged_by) in sweep


def test_what_deploys_is_the_gates_output_with_the_gates_thresholds_as_knobs(config):
  pipeline = config.pipelines['train-evaluate-deploy']
  (deployed,) = [e for e in pipeline.edges if e.target_type == 'file']
  assert (deployed.source_node, deployed.source_type) == ('gate', 'output')
  targets = {t for p in pipeline.parameters for t in p.targets}
  assert {'gate.parameter.min_miou', 'gate.parameter.max_miou_drop'} <= targets
  assert config.steps['evaluate'].inputs['baseline'].optional
