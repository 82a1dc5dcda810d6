"""Dataset descriptions, the synthetic generator and the TFRecord format (ours and the original's)."""
import csv
import filecmp
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from PIL import Image

from deeplab import colormaps
from deeplab.config import BuildConfig
from deeplab.datasets import build, imagefile, layouts, manifest, synthetic, tfrecord
from deeplab.datasets.layouts import cityscapes
from deeplab.errors import UserError
from tests.conftest import FIXTURES, REPO



# ----------------------------------------------------------------------------- registry

@pytest.mark.parametrize('name, num_classes, ignore_label', [
    ('pascal_voc_seg', 21, 255), ('ade20k', 151, 0), ('cityscapes', 19, 255)])
def test_known_datasets(name, num_classes, ignore_label):
  dataset = layouts.get(name)
  assert (dataset.name, dataset.num_classes, dataset.ignore_label) == (name, num_classes, ignore_label)
  assert len(dataset.class_names) == len(dataset.colormap) == num_classes
  assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in dataset.colormap)


def test_each_registered_name_makes_the_dataset_of_that_name():
  assert [layouts.get(name).name for name in layouts.NAMES] == list(layouts.NAMES)


def test_unknown_dataset_names_the_known_ones():
  with pytest.raises(UserError, match='unknown dataset .*pascal_voc_seg, ade20k, cityscapes, folder'):
    layouts.get('coco')


def test_class_facts():
  voc = layouts.get('pascal_voc_seg')
  assert voc.class_names[15] == 'person' and voc.colormap[15] == [192, 128, 128]
  assert voc.colormap[:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
  assert colormaps.pascal_colormap()[255] == [224, 224, 192]  # the VOC boundary colour
  city = layouts.get('cityscapes')
  assert city.class_names[13] == 'car' and city.colormap[13] == [0, 0, 142]
  assert cityscapes.TRAIN_ID_TABLE[7] == 0 and cityscapes.TRAIN_ID_TABLE[33] == 18
  assert cityscapes.TRAIN_ID_TABLE[0] == 255 and cityscapes.TRAIN_ID_TABLE[9] == 255
  ade = layouts.get('ade20k')
  assert ade.class_names[0] == 'other' and ade.colormap[0] == [0, 0, 0]
  assert ade.colormap[1] == [120, 120, 120] and ade.colormap[150] == [92, 0, 255]


@pytest.mark.skipif(not (FIXTURES / 'raw' / 'ade20k' / 'object150_info.csv').exists(),
                    reason='the ADE20K class table fixture is absent')
def test_ade20k_names_are_the_benchmark_table():
  with open(FIXTURES / 'raw' / 'ade20k' / 'object150_info.csv') as f:
    names = [row['Name'] for row in csv.DictReader(f)]
  assert layouts.get('ade20k').class_names[1:] == names


def test_folder_class_options():
  assert layouts.get('folder', class_names=('bg', 'cat')).num_classes == 2
  assert layouts.get('folder', num_classes=3).class_names == ['background', 'class_1', 'class_2']
  with pytest.raises(UserError, match='--num_classes=3 disagrees'):
    layouts.get('folder', num_classes=3, class_names=('bg', 'cat'))
  with pytest.raises(UserError, match='only for the folder layout'):
    layouts.get('ade20k', num_classes=3)


def test_folder_pairs_plain_names_and_has_a_default_split(tmp_path):
  for folder in ('images', 'masks'):
    (tmp_path / folder).mkdir()
  for name in ('b', 'a'):
    Image.new('RGB', (4, 4)).save(tmp_path / 'images' / f'{name}.png')
    Image.new('L', (4, 4)).save(tmp_path / 'masks' / f'{name}.png')
  Image.new('RGB', (4, 4)).save(tmp_path / 'images' / 'c.jpg')  # no mask
  folder = layouts.get('folder')
  assert folder.splits(str(tmp_path)) == ['train']
  examples, problems = folder.scan(str(tmp_path), 'train')
  assert [e.id for e in examples] == ['a', 'b']
  assert [p.id for p in problems] == ['c'] and 'label missing' in problems[0].message


# ----------------------------------------------------------------------------- synthetic data

def test_synthetic_is_deterministic_per_seed(tmp_path):
  kwargs = dict(num_train=3, num_val=2, image_size=(32, 40))
  first = synthetic.write_dataset('folder', str(tmp_path / 'a'), seed=1, **kwargs)
  second = synthetic.write_dataset('folder', str(tmp_path / 'b'), seed=1, **kwargs)
  other = synthetic.write_dataset('folder', str(tmp_path / 'c'), seed=2, **kwargs)
  files = sorted(str(p.relative_to(first)) for p in Path(first).rglob('*') if p.is_file())
  assert len(files) == 3 * 2 + 2 * 2 + 3
  match, mismatch, errors = filecmp.cmpfiles(first, second, files, shallow=False)
  assert not mismatch and not errors
  assert (Path(first) / 'images/train_00000.jpg').read_bytes() != \
      (Path(other) / 'images/train_00000.jpg').read_bytes()


def test_synthetic_examples_look_as_documented():
  image, label = synthetic.render_example(0, 'train', 0, 96, 128)
  assert image.shape == (96, 128, 3) and image.dtype == np.uint8 and label.shape == (96, 128)
  assert set(np.unique(label)) <= {0, 1, 2, 3, 255}
  assert (label == 255).any() and (label != 255).mean() > 0.9  # a thin ignore band at borders
  assert len(set(np.unique(image[..., 0]))) > 50  # not flat colour: gradients, texture, noise
  sizes = {synthetic.example_size(0, 'val', i, (160, 160)) for i in range(20)}
  assert len(sizes) > 10 and all(120 <= s <= 200 for hw in sizes for s in hw)


def test_synthetic_classes_are_separable_by_colour():
  """The learnability premise: hue and saturation alone nearly give the class."""
  confusion = np.zeros((4, 4), np.int64)
  for index in range(6):
    image, label = synthetic.render_example(7, 'val', index, 96, 96)
    hsv = np.asarray(Image.fromarray(image).convert('HSV'), np.float64) / 255
    hue, saturation = hsv[..., 0], hsv[..., 1]
    guess = np.where(saturation < 0.4, 0, np.where((hue > 0.9) | (hue < 0.12), 1,
                                                   np.where(hue < 0.5, 2, 3)))
    keep = label != 255
    np.add.at(confusion, (label[keep], guess[keep]), 1)
  iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
  assert np.nanmean(iou) > 0.95


@pytest.mark.process
def test_synthetic_cli(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'deeplab.datasets.synthetic', '--layout=ade20k', f'--output={tmp_path}',
       '--seed=4', '--num_train=2', '--num_val=1', '--image_size=24,32'],
      cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  images = sorted(p.name for p in tmp_path.glob('ADEChallengeData2016/images/*/*.jpg'))
  assert images == ['ADE_train_00000001.jpg', 'ADE_train_00000002.jpg', 'ADE_val_00000001.jpg']
  annotation = Image.open(tmp_path / 'ADEChallengeData2016/annotations/training/ADE_train_00000001.png')
  assert annotation.mode == 'L' and annotation.size == (32, 24)


# ----------------------------------------------------------------------------- TFRecord format

def test_example_encoding_round_trips():
  record = tfrecord.encode_example(b'\xff\xd8\xffdata', 'jpeg', 'id_1', 300, 2 ** 40, 3, b'label')
  assert tfrecord.parse_example(record) == {
      tfrecord.IMAGE_ENCODED: b'\xff\xd8\xffdata', tfrecord.IMAGE_FORMAT: b'jpeg',
      tfrecord.IMAGE_FILENAME: b'id_1', tfrecord.IMAGE_HEIGHT: 300, tfrecord.IMAGE_WIDTH: 2 ** 40,
      tfrecord.IMAGE_CHANNELS: 3, tfrecord.LABEL_ENCODED: b'label', tfrecord.LABEL_FORMAT: b'png'}


def test_example_bytes_equal_tensorflows_deterministic_serialization():
  tf = pytest.importorskip('tensorflow')
  record = tfrecord.encode_example(b'\x89PNG-bytes' * 50, 'png', 'a/b', 513, 17, 4, b'L' * 300)
  example = tf.train.Example.FromString(record)
  assert example.SerializeToString(deterministic=True) == record
  assert example.features.feature[tfrecord.IMAGE_HEIGHT].int64_list.value == [513]


def test_record_framing_detects_corruption(tmp_path):
  path = tmp_path / 'x.tfrecord'
  with open(path, 'wb') as f:
    writer = tfrecord.RecordWriter(f)
    writer.write(b'one')
    writer.write(b'two')
  assert list(tfrecord.read_records(str(path))) == [b'one', b'two']
  data = bytearray(path.read_bytes())
  data[13] ^= 1
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match='CRC'):
    list(tfrecord.read_records(str(path)))


def _original_features(tf):
  """The feature spec of the original DeepLab reader (data_generator.py)."""
  return {
      tfrecord.IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=''),
      tfrecord.IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string, default_value=''),
      tfrecord.IMAGE_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value='jpeg'),
      tfrecord.IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64, default_value=0),
      tfrecord.IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64, default_value=0),
      tfrecord.LABEL_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=''),
      tfrecord.LABEL_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value='png'),
  }


@pytest.mark.parametrize('layout', ['folder', 'pascal_voc_seg'])  # grey and palette masks
def test_our_shards_parse_with_the_original_key_set(tmp_path, layout):
  tf = pytest.importorskip('tensorflow')
  raw = synthetic.write_dataset(layout, str(tmp_path / 'raw'), seed=0, num_train=2, num_val=3,
                                image_size=(24, 32))
  out = tmp_path / 'out'
  out.mkdir()
  dataset = layouts.get(layout)
  built, _ = build.build(dataset, raw, str(out), BuildConfig(splits=('val',), num_workers=1),
                         progress=False)
  sources, _ = dataset.scan(dataset.locate(raw), 'val')
  # Graph mode: the library switches the process to tf.compat.v1 graph mode once imported.
  with tf.Graph().as_default():
    serialized = tf.compat.v1.data.make_one_shot_iterator(
        tf.data.TFRecordDataset(built.shard_paths('val'))).get_next()
    parsed = tf.io.parse_single_example(serialized, _original_features(tf))
    decoded = (tf.io.decode_image(parsed[tfrecord.IMAGE_ENCODED], channels=3),
               tf.io.decode_png(parsed[tfrecord.LABEL_ENCODED], channels=1))
    with tf.compat.v1.Session() as session:
      for source in sources:
        fields, (image, label) = session.run([parsed, decoded])
        assert fields[tfrecord.IMAGE_FILENAME].decode() == source.id
        assert image.shape[:2] == (fields[tfrecord.IMAGE_HEIGHT], fields[tfrecord.IMAGE_WIDTH])
        np.testing.assert_array_equal(label[..., 0], np.asarray(Image.open(source.label)))
      with pytest.raises(tf.errors.OutOfRangeError):
        session.run(serialized)


@pytest.mark.skipif(not (FIXTURES / 'deeplab_testing').is_dir(),
                    reason='the original-format TFRecord fixture is absent')
def test_original_deeplab_tfrecords_load_and_decode():
  folder = str(FIXTURES / 'deeplab_testing')
  with pytest.raises(UserError, match='pass --dataset'):
    manifest.load_dataset(folder)
  with pytest.raises(UserError, match='no fixed classes'):
    manifest.load_dataset(folder, 'folder')
  loaded = manifest.load_dataset(folder, 'pascal_voc_seg')
  assert (loaded.num_classes, loaded.ignore_label, list(loaded.splits)) == (21, 255, ['val'])
  examples = [tfrecord.parse_example(r) for p in loaded.shard_paths('val')
              for r in tfrecord.read_records(p)]
  assert [(e[tfrecord.IMAGE_FILENAME], e[tfrecord.IMAGE_WIDTH], e[tfrecord.IMAGE_HEIGHT])
          for e in examples] == [(b'2007_000033', 500, 366), (b'2007_000042', 500, 335),
                                 (b'2007_000061', 500, 333)]
  assert set(examples[0]) == set(tfrecord.EXAMPLE_KEYS)
  for example in examples:
    image = Image.open(io.BytesIO(example[tfrecord.IMAGE_ENCODED]))
    label = np.asarray(Image.open(io.BytesIO(example[tfrecord.LABEL_ENCODED])))
    assert image.format == 'JPEG' and image.size == (example[tfrecord.IMAGE_WIDTH],
                                                      example[tfrecord.IMAGE_HEIGHT])
    assert label.shape == (example[tfrecord.IMAGE_HEIGHT], example[tfrecord.IMAGE_WIDTH])
    assert label.max() > 20  # random labels: a format fixture, not a learnable one (its info.md)


# ----------------------------------------------------------------------------- image headers

def _encoded(image, fmt, **options):
  buffer = io.BytesIO()
  image.save(buffer, fmt, **options)
  return buffer.getvalue()


@pytest.mark.parametrize('mode, fmt, options, channels', [
    ('RGB', 'JPEG', {}, 3), ('RGB', 'JPEG', {'progressive': True}, 3), ('L', 'JPEG', {}, 1),
    ('RGB', 'PNG', {}, 3), ('RGBA', 'PNG', {}, 4), ('L', 'PNG', {}, 1), ('P', 'PNG', {}, 3),
    ('P', 'PNG', {'transparency': 0}, 4)])
def test_image_headers(mode, fmt, options, channels):
  noise = np.random.default_rng(0).integers(0, 255, (37, 53, 4), np.uint8)
  image = Image.fromarray(noise[..., :3], 'RGB').convert(mode) if mode != 'RGBA' else \
      Image.fromarray(noise, 'RGBA')
  info = imagefile.inspect(_encoded(image, fmt, **options))
  assert (info.format, info.height, info.width, info.channels) == (fmt.lower(), 37, 53, channels)


@pytest.mark.skipif(not (FIXTURES / 'raw').is_dir(), reason='real samples absent')
def test_image_headers_of_real_files():
  for path in sorted((FIXTURES / 'raw').rglob('*')):
    if path.suffix in ('.jpg', '.png'):
      info = imagefile.inspect(path.read_bytes())
      with Image.open(path) as image:
        assert (info.width, info.height) == image.size, path


def test_damaged_images_are_named():
  data = _encoded(Image.new('RGB', (40, 30), (10, 200, 30)), 'PNG')
  with pytest.raises(imagefile.BadImage, match='truncated PNG'):
    imagefile.inspect(data[:-5])
  jpeg = _encoded(Image.new('RGB', (40, 30)), 'JPEG')
  with pytest.raises(imagefile.BadImage, match='no end-of-image marker'):
    imagefile.inspect(jpeg[:-2])
  with pytest.raises(imagefile.BadImage, match='not a JPEG or PNG'):
    imagefile.inspect(b'GIF89a')
