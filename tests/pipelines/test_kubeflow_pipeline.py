"""The Kubeflow components mirror the step SPECs, the generated files are current, select_best keeps
evaluate's rule, and the IR asks for what a cluster needs (GPU, resources, retries, the sweep). The
local run is in test_orchestrators_e2e.py."""
import inspect
import json
import types

import pytest
import yaml
from kfp.dsl import ClassificationMetrics, Metrics

from pipelines.kubeflow import components, pipeline
from pipelines.kubeflow.__main__ import main as regenerate
from pipelines.kubeflow.step_component import (COMPONENTS_PATH, REPORT_OUTPUTS, components_source, last_numbers,
                                               publish_evaluation, step_argv)
from pipelines import graph
from pipelines.graph import SPECS, SWEEP, SWEEP_LEARNING_RATES
from steps.flags import FLAG, FLOAT, INTEGER, STRING, parse_flags

KFP_TYPES = {STRING: 'String', INTEGER: 'Integer', FLOAT: 'Float', FLAG: 'Boolean'}


@pytest.fixture(scope='module')
def compiled():
  with open(pipeline.COMPILED_PATH) as f:
    return f.read()


def test_generated_components_are_up_to_date():
  with open(COMPONENTS_PATH) as f:
    assert f.read() == components_source(SPECS.values()), 'run: python -m pipelines.kubeflow'


def test_compiled_pipeline_is_up_to_date(compiled):
  assert compiled == pipeline.compile_text(), 'run: python -m pipelines.kubeflow'
  assert regenerate(['--check']) == 0


def test_check_fails_on_a_hand_edited_compiled_pipeline_and_leaves_it_alone(compiled, tmp_path, monkeypatch,
                                                                           capsys):
  edited = tmp_path / 'pipeline.yaml'
  edited.write_text(compiled.replace('maxRetryCount: 2', 'maxRetryCount: 5'))
  monkeypatch.setattr(pipeline, 'COMPILED_PATH', str(edited))
  assert regenerate(['--check']) == 1
  assert 'maxRetryCount: 5' in edited.read_text()
  assert f'{edited} is out of date: run python -m pipelines.kubeflow' in capsys.readouterr().err


@pytest.mark.parametrize('step', list(SPECS))
def test_component_inputs_are_the_step_flags(step):
  spec, component = SPECS[step], getattr(components, step).component_spec
  parameters = {name: i for name, i in component.inputs.items() if not i.type.startswith('system.')}
  artifacts = {name: i for name, i in component.inputs.items() if i.type.startswith('system.')}
  assert list(parameters) == [p.name for p in spec.parameters]
  for param in spec.parameters:
    declared = parameters[param.name]
    # A multi-valued flag is its comma-separated text, as on the command line.
    assert declared.type == ('String' if param.multiple else KFP_TYPES[param.type]), param.name
    assert declared.default == (','.join(map(str, param.default)) if param.multiple else param.default), param.name
  assert {name: i.optional for name, i in artifacts.items()} == {p.name: p.optional for p in spec.inputs}
  assert set(component.outputs) == {o.name for o in spec.outputs} | {'metrics'} | {
      name for name, _ in REPORT_OUTPUTS.get(step, ())}


def test_evaluate_component_has_outputs_the_kfp_ui_draws():
  outputs = components.evaluate.component_spec.outputs
  assert {name: outputs[name].type.split('@')[0] for name in ('metrics', 'confusion_matrix', 'html_report')} == {
      'metrics': 'system.Metrics', 'confusion_matrix': 'system.ClassificationMetrics', 'html_report': 'system.HTML'}


def test_evaluation_is_published_from_the_files_beside_its_output(tmp_path):
  # The folder evaluate leaves (steps/evaluate.py): metrics.json, confusion_matrix.json, report/.
  (tmp_path / 'report').mkdir()
  (tmp_path / 'report' / 'report.html').write_text('<!DOCTYPE html><title>Evaluation report</title>')
  (tmp_path / 'confusion_matrix.json').write_text(json.dumps(
      {'class_names': ['background', 'cat'], 'matrix': [[9, 1], [2, 8]]}))
  confusion = ClassificationMetrics()
  html = types.SimpleNamespace(path=str(tmp_path / 'html_report'))
  publish_evaluation({'output': types.SimpleNamespace(path=str(tmp_path / 'output')),
                      'confusion_matrix': confusion, 'html_report': html})
  assert confusion.metadata['confusionMatrix'] == {
      'annotationSpecs': [{'displayName': 'background'}, {'displayName': 'cat'}],
      'rows': [{'row': [9, 1]}, {'row': [2, 8]}]}
  assert (tmp_path / 'html_report').read_text().startswith('<!DOCTYPE html>')


@pytest.mark.parametrize('step', list(SPECS))
def test_component_defaults_become_flags_that_parse_to_the_spec_defaults(step, tmp_path):
  spec = SPECS[step]
  values = {name: p.default for name, p in inspect.signature(getattr(components, step).python_func).parameters.items()}
  for path in spec.inputs + spec.outputs:
    values[path.name] = types.SimpleNamespace(path=str(tmp_path / path.name))
  args = parse_flags(spec, step_argv(values))
  assert {p.name: getattr(args, p.name) for p in spec.parameters} == spec.defaults()
  for path in spec.inputs + spec.outputs:
    assert getattr(args, path.name) == str(tmp_path / path.name)


def test_arguments_become_flags_as_given():
  argv = step_argv({'train_crop_size': '65,97', 'atrous_rates': '', 'checkpoint': None,
                    'fine_tune_batch_norm': False, 'metrics': types.SimpleNamespace(path='/m')})
  assert argv == ['--train_crop_size=65,97', '--atrous_rates=', '--fine_tune_batch_norm=false']
  args = parse_flags(SPECS['train'], argv)
  assert (args.train_crop_size, args.atrous_rates, args.fine_tune_batch_norm) == ((65, 97), (), False)


def test_metrics_are_the_last_number_of_each_key():
  records = [{'step': 2, 'loss': 0.5, 'note': 'x'}, {'step': 4, 'loss': 0.25, 'done': True}]
  assert last_numbers(records) == {'step': 4, 'loss': 0.25}


def _tasks(ir):
  """Every task of the IR by name, from the root DAG and the sub-DAGs (the ParallelFor body)."""
  dags = [ir['root']['dag']] + [c['dag'] for c in ir['components'].values() if 'dag' in c]
  return {name: task for dag in dags for name, task in dag['tasks'].items()}


def test_ir_has_the_sweep_resources_retries_and_the_image_parameter(compiled):
  ir = yaml.safe_load(compiled)
  tasks = _tasks(ir)
  assert {'build-data', 'train', 'evaluate', 'select-best', 'export', 'predict'} <= set(tasks)
  loop = next(t for t in tasks.values() if 'parameterIterator' in t)
  assert loop['parameterIterator']['items']['inputParameter'].endswith('base_learning_rates')
  assert tasks['train']['retryPolicy']['maxRetryCount'] == 2
  executors = ir['deploymentSpec']['executors']
  train = executors[tasks['train']['componentRef']['name'].replace('comp-', 'exec-')]['container']
  assert train['resources']['accelerator']['resourceType'] == 'nvidia.com/gpu'
  assert train['resources']['cpuRequest'] and train['resources']['memoryRequest']
  for executor in (e for e in executors.values() if 'container' in e):  # the others are importers
    assert executor['container']['image'] == "{{$.inputs.parameters['pipelinechannel--image']}}"
  parameters = ir['root']['inputDefinitions']['parameters']
  assert {'raw_data_uri', 'images_uri', 'image'} <= set(parameters)
  assert parameters['base_learning_rates']['defaultValue'] == list(SWEEP_LEARNING_RATES)


def test_select_best_keeps_evaluate_rule_and_reports_a_missing_miou_as_minus_one(tmp_path):
  """The highest mIoU, the first on a tie; null (no pixel evaluated) is worst."""
  mious = [None, 0.5, 0.75, 0.75]
  checkpoints, evaluations = [], []
  for index, miou in enumerate(mious):
    (tmp_path / f'checkpoint{index}').write_text(str(index))
    (tmp_path / f'evaluation{index}').write_text(json.dumps({'miou': miou}))
    checkpoints.append(types.SimpleNamespace(path=str(tmp_path / f'checkpoint{index}')))
    evaluations.append(types.SimpleNamespace(path=str(tmp_path / f'evaluation{index}')))
  best, metrics = types.SimpleNamespace(path=str(tmp_path / 'best')), Metrics()
  best_evaluation = types.SimpleNamespace(path=str(tmp_path / 'best_evaluation'))
  rates = [0.001, 0.01, 0.1, 1.0]
  assert pipeline.select_best.python_func(checkpoints, evaluations, rates, best, best_evaluation,
                                          metrics) == 0.75
  assert (tmp_path / 'best').read_text() == '2'
  assert (tmp_path / 'best_evaluation').read_text() == (tmp_path / 'evaluation2').read_text()
  assert metrics.metadata == {'best_miou': 0.75, 'best_base_learning_rate': 0.1, 'miou_at_lr_0.001': -1.0,
                              'miou_at_lr_0.01': 0.5, 'miou_at_lr_0.1': 0.75, 'miou_at_lr_1.0': 0.75}


def _producer(dag_inputs, source):
  """The task an IR artifact input comes from, seen through a ParallelFor's own inputs."""
  if 'componentInputArtifact' in source:  # inside the loop: the loop task's input of that name
    source = dag_inputs[source['componentInputArtifact']]['taskOutputArtifact']
  else:
    source = source['taskOutputArtifact']
  return source['producerTask'], source['outputArtifactKey']


def test_ir_tasks_are_fed_as_the_graph_says(compiled):
  """Each node's inputs come from the task of the node feeding it (after the sweep: select_best's
  best point) or, for a Given, from the importer of its URI; the sweep's node and judge are the
  ParallelFor's body."""
  ir = yaml.safe_load(compiled)
  root = ir['root']['dag']['tasks']
  (loop_name, loop), = [(name, t) for name, t in root.items() if 'parameterIterator' in t]
  body = ir['components'][loop['componentRef']['name']]['dag']['tasks']
  assert set(body) == {step.replace('_', '-') for step in (SWEEP.node, SWEEP.judged_by)}
  importers = {t['inputs']['parameters']['uri']['componentInputParameter']: name for name, t in root.items()
               if t['componentRef']['name'].startswith('comp-importer')}
  for node in graph.NODES:
    name = node.step.replace('_', '-')
    task = body.get(name) or root[name]
    fed = {key: _producer(loop['inputs']['artifacts'], source)
           for key, source in task['inputs']['artifacts'].items()}
    expected = {}
    for key, source in node.inputs.items():
      if isinstance(source, graph.Given):
        expected[key] = (importers[f'{source.name}_uri'], 'artifact')
      elif source == SWEEP.node and name not in body:
        expected[key] = ('select-best', 'best')
      elif source == SWEEP.judged_by and name not in body:  # that point's evaluation
        expected[key] = ('select-best', 'best_evaluation')
      else:
        expected[key] = (source.replace('_', '-'), 'output')
    assert fed == expected, name
  assert {_producer({}, root['select-best']['inputs']['artifacts'][key])[0]
          for key in ('checkpoints', 'evaluations')} == {loop_name}
