"""The layers every backbone shares: fixed padding and the dense block stacker, on tiny shapes."""
import pytest

from deeplab.compat import slim, tf
from deeplab.nets import layers


@pytest.mark.parametrize('output_stride, expected', [
    (16, [(2, 1), (2, 1), (2, 1)]),
    (8, [(2, 1), (2, 1), (1, 1)]),
    (4, [(2, 1), (1, 1), (1, 2)]),
    (2, [(1, 1), (1, 2), (1, 4)])])
def test_schedule_subsamples_until_the_output_stride_then_dilates(output_stride, expected):
  assert layers.atrous_schedule([2, 2, 2], [1, 1, 1], output_stride, input_stride=2) == expected


def test_schedule_a_stride_1_unit_after_the_target_keeps_the_rate():
  # The rate grows only by the strides that were turned into dilation.
  assert layers.atrous_schedule([2, 1, 2, 1], [1] * 4, 2) == [(2, 1), (1, 1), (1, 1), (1, 2)]


@pytest.mark.parametrize('output_stride, expected', [
    (2, [(2, 1), (1, 2), (1, 4)]),
    (1, [(1, 1), (1, 4), (1, 8)])])
def test_schedule_multi_grid_multiplies_each_units_own_rate(output_stride, expected):
  assert layers.atrous_schedule([2, 1, 1], [1, 2, 4], output_stride) == expected


def test_schedule_of_the_resnet_layout():
  # block1..block4 of ResNet-50 after its stride-4 root; block4 with multi-grid (1, 2, 4).
  strides = [1, 1, 2] + [1, 1, 1, 2] + [1] * 5 + [2] + [1, 1, 1]
  multi_grid = [1] * 13 + [1, 2, 4]
  for output_stride, block3_rate, block4_rates in ((8, 2, [4, 8, 16]), (16, 1, [2, 4, 8]),
                                                   (32, 1, [1, 2, 4])):
    schedule = layers.atrous_schedule(strides, multi_grid, output_stride, input_stride=4)
    assert [rate for _, rate in schedule[7:13]] == [block3_rate] * 6
    assert [rate for _, rate in schedule[13:]] == block4_rates
    assert [stride for stride, _ in schedule].count(2) == {8: 1, 16: 2, 32: 3}[output_stride]


@pytest.mark.parametrize('output_stride', [1, 12, 32])
def test_schedule_refuses_an_output_stride_the_strides_cannot_make(output_stride):
  with pytest.raises(ValueError, match=f'output_stride={output_stride} cannot be reached'):
    layers.atrous_schedule([2, 2], [1, 1], output_stride, input_stride=2)


def test_numbered_units_follow_the_published_layout():
  units = layers.numbered_units('flow/block1', 'module', [1, 2], multi_grid=(1, 2), depth=8)
  assert units == (layers.Unit('unit_1', 'flow/block1/unit_1/module', 1, 1, {'depth': 8}),
                   layers.Unit('unit_2', 'flow/block1/unit_2/module', 2, 2, {'depth': 8}))
  assert [unit.multi_grid for unit in layers.numbered_units('b', 'm', [1, 1, 2])] == [1, 1, 1]
  with pytest.raises(ValueError, match=r'b: 3 units but multi_grid=\(1, 2\)'):
    layers.numbered_units('b', 'm', [1, 1, 2], multi_grid=(1, 2))


def _recording_unit(calls):
  """A unit function: one 3x3 conv with fixed padding; records how the stacker called it."""
  def unit(net, stride, rate, end_points, name, depth):
    calls.append((tf.compat.v1.get_variable_scope().name, name, stride, rate))
    end_points[f'{name}/conv'] = layers.conv2d_same(net, depth, 3, stride, rate=rate, scope='conv')
    return end_points[f'{name}/conv']
  return unit


def _stack(output_stride, height=9, width=14):
  calls, end_points = [], {}
  unit = _recording_unit(calls)
  blocks = [
      layers.Block('block1', unit, layers.numbered_units('block1', 'm', [2, 2], depth=4)),
      layers.Block(None, unit, [layers.Unit('top', 'layer_3', stride=1, multi_grid=3,
                                            args={'depth': 6})]),
  ]
  with tf.Graph().as_default():
    with slim.arg_scope([slim.conv2d], normalizer_fn=None):
      with tf.compat.v1.variable_scope('net'):
        net = layers.stack_blocks_dense(tf.zeros([1, height, width, 2]), blocks, output_stride,
                                        input_stride=2, end_points=end_points)
    variables = {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()}
  return net, end_points, calls, variables


def test_stacker_scopes_strides_rates_and_end_points():
  net, end_points, calls, variables = _stack(output_stride=4)
  # block1/unit_2 reaches the target: its stride becomes rate 2, times the top unit's multi-grid 3.
  assert calls == [('net/block1/unit_1', 'block1/unit_1/m', 2, 1),
                   ('net/block1/unit_2', 'block1/unit_2/m', 1, 1),
                   ('net/top', 'layer_3', 1, 6)]
  assert sorted(end_points) == ['block1', 'block1/unit_1/m', 'block1/unit_1/m/conv',
                                'block1/unit_2/m', 'block1/unit_2/m/conv', 'layer_3',
                                'layer_3/conv']
  assert end_points['block1'] is end_points['block1/unit_2/m']
  assert end_points['layer_3'] is net
  assert variables == {'net/block1/unit_1/conv/weights': [3, 3, 2, 4],
                       'net/block1/unit_1/conv/biases': [4],
                       'net/block1/unit_2/conv/weights': [3, 3, 4, 4],
                       'net/block1/unit_2/conv/biases': [4],
                       'net/top/conv/weights': [3, 3, 4, 6],
                       'net/top/conv/biases': [6]}


@pytest.mark.parametrize('output_stride, shape', [(2, [1, 9, 14, 6]), (4, [1, 5, 7, 6]),
                                                  (8, [1, 3, 4, 6])])
def test_stacker_output_size_is_the_input_size_over_the_output_stride(output_stride, shape):
  # The [1, 9, 14] input stands for the root's output of a [1, 18, 28] image (input_stride 2);
  # odd sizes round up at each strided unit.
  net, _, calls, _ = _stack(output_stride)
  assert net.shape.as_list() == shape
  assert [(stride, rate) for _, _, stride, rate in calls] == {
      2: [(1, 1), (1, 2), (1, 12)], 4: [(2, 1), (1, 1), (1, 6)], 8: [(2, 1), (2, 1), (1, 3)]
  }[output_stride]


def test_stacker_refuses_an_unreachable_output_stride_before_building_anything():
  calls = []
  blocks = [layers.Block('block1', _recording_unit(calls),
                         layers.numbered_units('block1', 'm', [2, 2], depth=4))]
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match='output_stride=16 cannot be reached'):
      layers.stack_blocks_dense(tf.zeros([1, 9, 14, 2]), blocks, 16, input_stride=2, end_points={})
    assert calls == [] and tf.compat.v1.global_variables() == []


@pytest.mark.parametrize('kernel_size, rate, padded', [(3, 1, [1, 7, 8, 1]), (3, 2, [1, 9, 10, 1]),
                                                       (4, 1, [1, 8, 9, 1])])
def test_pad_for_kernel_splits_the_kernels_reach_evenly(kernel_size, rate, padded):
  with tf.Graph().as_default():
    net = layers.pad_for_kernel(tf.ones([1, 5, 6, 1]), kernel_size, rate)
    with tf.compat.v1.Session() as session:
      value = session.run(net)[0, :, :, 0]
  assert list(value.shape) == padded[1:3]
  before = (kernel_size + (kernel_size - 1) * (rate - 1) - 1) // 2
  assert value[before:before + 5, before:before + 6].sum() == 30 == value.sum()
