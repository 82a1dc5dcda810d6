"""The settings schemas: validation, presets, and everything derived from them (step flags,
valohai.yaml, the Kubeflow components, params.yaml values)."""
import dataclasses
import re
import shlex

import pytest
from dvc.repo import Repo
from dvc.parsing.interpolate import to_str

from deeplab.config import (NONE, PRESET, BuildConfig, EvalConfig, ExportConfig, ModelConfig,
                            PredictConfig, TrainConfig, setting, settings_of)
from deeplab.errors import UserError
from pipelines import graph, shared
from pipelines.kubeflow import step_component
from pipelines.valohai import config as valohai_config
from steps import build_data, evaluate, export, flags, predict, train
from tests.conftest import REPO

SCHEMAS = (ModelConfig, TrainConfig, EvalConfig, ExportConfig, PredictConfig, BuildConfig)
# Which schemas each step takes whole.
STEP_SCHEMAS = {build_data: (BuildConfig,), train: (ModelConfig, TrainConfig),
                evaluate: (EvalConfig,), export: (ExportConfig,), predict: (PredictConfig,)}


@pytest.mark.parametrize('schema', SCHEMAS, ids=lambda s: s.__name__)
def test_every_flag_field_becomes_a_parameter_with_its_declaration(schema):
  parameters = {p.name: p for p in flags.parameters_from(schema)}
  for info in settings_of(schema):
    if not info.flag:
      assert info.name not in parameters
      continue
    parameter = parameters[info.name]
    assert (parameter.description, parameter.multiple) == (info.help, info.multiple)
    if info.preset:
      assert parameter.type == flags.STRING and parameter.keywords == (PRESET, NONE)
      assert parameter.default == ((PRESET,) if info.multiple else PRESET)
    else:
      assert parameter.default == info.default and parameter.choices == info.choices
      assert (parameter.min, parameter.max) == (info.min, info.max)
      assert parameter.type == {str: flags.STRING, int: flags.INTEGER, float: flags.FLOAT,
                                bool: flags.FLAG}[info.kind]


@pytest.mark.parametrize('step', STEP_SCHEMAS, ids=lambda m: m.SPEC.name)
def test_each_step_has_every_flag_of_its_schemas_and_builds_them_from_the_defaults(step):
  names = [p.name for p in step.SPEC.parameters]
  assert len(names) == len(set(names))
  args = flags.parse_flags(step.SPEC, [])
  for schema in STEP_SCHEMAS[step]:
    assert {i.name for i in settings_of(schema) if i.flag} <= set(names)
    extra = {'num_classes': 5} if schema is ModelConfig else {}
    assert schema.from_flags(args, **extra) == schema(**extra)


def test_validation_names_the_flag_and_what_was_expected():
  with pytest.raises(UserError, match=r'--train_batch_size=0: must be >= 1'):
    TrainConfig(train_batch_size=0)
  with pytest.raises(UserError, match=r'--eval_scales=0.5,0.0: must be >= 0.01, got 0.0'):
    EvalConfig(eval_scales=(0.5, 0))
  with pytest.raises(UserError, match=r'--learning_policy=multi_steps: unknown learning policy; '
                                      r'expected one of poly, step, cosine'):
    TrainConfig(learning_policy='multi_steps')
  with pytest.raises(UserError, match=r'--num_shards=two: expected int'):
    BuildConfig(num_shards='two')
  with pytest.raises(UserError, match='--train_crop_size=513: expected two integers'):
    TrainConfig(train_crop_size=(513,))
  assert TrainConfig(train_crop_size=[65, 97]).train_crop_size == (65, 97)  # lists become tuples
  assert EvalConfig(eval_scales=(1, 2)).eval_scales == (1.0, 2.0)


@pytest.mark.parametrize('variant, output_stride, rates, decoder', [
    ('mobilenet_v2', 16, (), 0),
    ('resnet_v1_50_beta', 16, (6, 12, 18), 0),
    ('resnet_v1_101_beta', 8, (12, 24, 36), 0),
    ('xception_65', 16, (6, 12, 18), 4),
    ('xception_65', 8, (12, 24, 36), 4),
])
def test_preset_is_the_model_zoo_setting_and_none_is_explicit(variant, output_stride, rates, decoder):
  preset = ModelConfig(model_variant=variant, output_stride=output_stride)
  assert (preset.atrous_rates, preset.decoder_output_stride) == (rates, decoder)
  none = ModelConfig(model_variant=variant, atrous_rates=NONE, decoder_output_stride=NONE)
  assert (none.atrous_rates, none.decoder_output_stride) == ((), 0)


def test_preset_flags_from_the_command_line():
  def model(*argv):
    return ModelConfig.from_flags(flags.parse_flags(train.SPEC, list(argv)), num_classes=3)
  assert model('--model_variant=xception_65').decoder_output_stride == 4  # the model-zoo v3+
  assert model('--model_variant=xception_65', '--decoder_output_stride=none').decoder_output_stride == 0
  assert model('--atrous_rates=6,12', '--atrous_rates=18').atrous_rates == (6, 12, 18)
  assert model('--model_variant=resnet_v1_50_beta', '--atrous_rates=none').atrous_rates == ()
  for bad in ('four', '2'):  # the flag parser reads the schema's choices: exit 2, one line
    with pytest.raises(SystemExit):
      flags.parse_flags(train.SPEC, [f'--decoder_output_stride={bad}'])
  with pytest.raises(UserError, match='--decoder_output_stride=2: .*expected one of 0, 4, 8'):
    ModelConfig(decoder_output_stride=2)


def test_model_json_written_before_training_settings_moved_still_loads():
  old = dict(ModelConfig(num_classes=4).to_json(), weight_decay=4e-5, batch_norm_decay=0.9997)
  assert ModelConfig.from_json(old) == ModelConfig(num_classes=4)
  with pytest.raises(UserError, match='unknown keys'):
    TrainConfig.from_json({'weight_decay': 1e-4, 'colour': 'blue'})


# ----------------------------------------------------------------------------- one place to add a setting

@dataclasses.dataclass(frozen=True)
class _TrainConfigWithANewSetting(TrainConfig):
  label_smoothing: float = setting(0.0, 'soften the one-hot targets by this much', min=0, max=1)


@pytest.fixture
def new_train_setting(monkeypatch):
  """The train SPEC as it is once `label_smoothing` is one more TrainConfig field."""
  spec = dataclasses.replace(train.SPEC, parameters=train.SPEC.parameters + flags.parameters_from(
      _TrainConfigWithANewSetting, exclude=[i.name for i in settings_of(TrainConfig)]))
  monkeypatch.setitem(graph.SPECS, 'train', spec)
  return spec


def test_a_new_setting_reaches_valohai_kubeflow_and_params_yaml(new_train_setting, tmp_path):
  # valohai.yaml: a parameter with its default and bounds, and the committed file is now stale.
  (entry,) = [p for p in valohai_config.step_entry('train', shared.BASE_IMAGE)['step']['parameters']
              if p['name'] == 'label_smoothing']
  assert entry == {'name': 'label_smoothing', 'type': 'float', 'default': 0.0, 'min': 0, 'max': 1,
                   'description': 'soften the one-hot targets by this much'}
  assert valohai_config.render() != (REPO / 'valohai.yaml').read_text()
  # Kubeflow: a component input of the same name and default.
  assert 'label_smoothing: float = 0.0,' in step_component.components_source(graph.SPECS.values())
  # params.yaml: a value there renders (as dvc.yaml's ${train} does) to a flag the step parses.
  parsing = Repo(str(REPO)).config['parsing']
  args = flags.parse_flags(new_train_setting, shlex.split(to_str({'label_smoothing': 0.1},
                                                                 config=parsing)))
  assert _TrainConfigWithANewSetting.from_flags(args).label_smoothing == 0.1


def test_a_hand_edited_generated_file_is_caught(tmp_path):
  edited = tmp_path / 'valohai.yaml'
  edited.write_text((REPO / 'valohai.yaml').read_text().replace('default: 0.0001', 'default: 0.01'))
  assert shared.write_or_check(str(edited), valohai_config.render(), True, 'regenerate') == 1
  assert shared.write_or_check(str(REPO / 'valohai.yaml'), valohai_config.render(), True, '') == 0


# ----------------------------------------------------------------------------- the pipeline graph

def test_the_graph_feeds_every_required_input_from_an_earlier_node_or_a_given():
  graph.check()  # the declared graph, as the three generators read it
  for node in graph.NODES:
    for path in graph.SPECS[node.step].inputs:
      assert path.optional or path.name in node.inputs, (node.step, path.name)
  assert graph.through('evaluate') == tuple(graph.NODE[s] for s in ('build_data', 'train', 'evaluate'))
  assert ('build_data', 'export', 'tfrecords') in graph.edges()


@pytest.mark.parametrize('broken, message', [
    (lambda nodes: nodes[:1] + (graph.Node('train', {'records': 'build_data'}),) + nodes[2:],
     "train has no input 'records'"),
    (lambda nodes: nodes[:2] + (graph.Node('evaluate', {'tfrecords': 'build_data'}),) + nodes[3:],
     'evaluate: nothing feeds checkpoint'),
    (lambda nodes: (nodes[1], nodes[0]) + nodes[2:], "train.tfrecords: 'build_data' is not a node before it"),
    (lambda nodes: nodes[:1] + (nodes[1], graph.Node('export', {'checkpoint': 'train'}), nodes[2])
     + nodes[4:], 'the sweep: evaluate must come right after train'),
    (lambda nodes: nodes + (nodes[0],), 'build_data is in the graph twice'),
])
def test_a_broken_graph_is_refused_with_what_is_wrong(broken, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    graph.check(broken(graph.NODES))


def test_a_sweep_over_what_the_swept_step_does_not_take_is_refused():
  with pytest.raises(KeyError, match='eval_scales'):
    graph.check(sweep=graph.Sweep('train', 'evaluate', {'eval_scales': ((1.0,),)}))
