"""build_data: every layout from the synthetic generator and from real samples, determinism, and
one clear error (no artifact) for every kind of bad input."""
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from PIL import Image

from deeplab.config import BuildConfig
from deeplab.datasets import build, layouts, manifest, synthetic, tfrecord
from deeplab.errors import UserError
from tests.conftest import FIXTURES, REPO

RAW = FIXTURES / 'raw'
needs_fixtures = pytest.mark.skipif(not RAW.is_dir(), reason=f'real samples not found at {RAW}')
TINY = dict(seed=3, num_train=5, num_val=3, image_size=(40, 48))


def build_into(tmp_path, dataset, raw, **kwargs):
  out = tmp_path / f'out{len(list(tmp_path.glob("out*")))}'
  out.mkdir()
  kwargs.setdefault('num_workers', 1)
  progress = kwargs.pop('progress', False)
  return build.build(dataset, str(raw), str(out), BuildConfig(**kwargs), progress=progress)


def records(result, split):
  built, _ = result
  return [tfrecord.parse_example(r) for path in built.shard_paths(split)
          for r in tfrecord.read_records(path)]


def decode(example):
  image = np.asarray(Image.open(io.BytesIO(example[tfrecord.IMAGE_ENCODED])).convert('RGB'))
  label = Image.open(io.BytesIO(example[tfrecord.LABEL_ENCODED]))
  assert label.mode == 'L'
  return image, np.asarray(label)


def check_against_sources(examples, sources, label_of=lambda path: np.asarray(Image.open(path))):
  """Each example holds its source image's bytes and its label's class ids."""
  assert [e[tfrecord.IMAGE_FILENAME].decode() for e in examples] == [s.id for s in sources]
  for example, source in zip(examples, sources):
    image_bytes = Path(source.image).read_bytes()
    assert example[tfrecord.IMAGE_ENCODED] == image_bytes
    image, label = decode(example)
    assert (example[tfrecord.IMAGE_HEIGHT], example[tfrecord.IMAGE_WIDTH]) == image.shape[:2]
    assert example[tfrecord.IMAGE_CHANNELS] == 3
    assert example[tfrecord.IMAGE_FORMAT] == (b'png' if image_bytes[:4] == b'\x89PNG' else b'jpeg')
    assert example[tfrecord.LABEL_FORMAT] == b'png'
    np.testing.assert_array_equal(label, label_of(source.label))


# ----------------------------------------------------------------------------- synthetic layouts

def test_folder_layout_from_synthetic(tmp_path):
  raw = synthetic.write_dataset('folder', str(tmp_path / 'raw'), **TINY)
  result = build_into(tmp_path, layouts.get('folder'), raw, num_shards=2)
  built, stats = result
  assert (built.name, built.num_classes, built.ignore_label) == ('folder', 4, 255)
  assert built.class_names == list(synthetic.CLASS_NAMES)
  assert {k: v.num_examples for k, v in built.splits.items()} == {'train': 5, 'val': 3}
  assert [s['file'] for s in built.splits['train'].shards] == [
      'train-00000-of-00002.tfrecord', 'train-00001-of-00002.tfrecord']
  assert [s['num_examples'] for s in built.splits['train'].shards] == [2, 3]
  assert stats.images == 8 and stats.split_counts == {'train': 5, 'val': 3}
  dataset = layouts.get('folder').with_root(raw)
  for split in ('train', 'val'):
    examples = records(result, split)
    sources, problems = dataset.scan(raw, split)
    assert not problems
    check_against_sources(examples, sources)
    labels = np.concatenate([decode(e)[1].ravel() for e in examples])
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 255}
    assert built.splits[split].label_histogram == np.bincount(
        labels[labels != 255], minlength=4).tolist()
  assert manifest.load_dataset(built.folder).to_json() == built.to_json()


def test_pascal_layout_from_synthetic(tmp_path):
  raw = synthetic.write_dataset('pascal_voc_seg', str(tmp_path / 'raw'), **TINY)
  result = build_into(tmp_path, layouts.get('pascal_voc_seg'), raw)
  built, _ = result
  assert {k: v.num_examples for k, v in built.splits.items()} == {'train': 5, 'trainval': 8, 'val': 3}
  voc = layouts.get('pascal_voc_seg')
  sources, _ = voc.scan(voc.locate(raw), 'val')
  assert Image.open(sources[0].label).mode == 'P'  # palette masks: the indices are the ids
  check_against_sources(records(result, 'val'), sources)
  assert set(np.flatnonzero(built.splits['train'].label_histogram)) <= {0, 8, 12, 15}


def test_pascal_raw_labels_and_train_aug(tmp_path):
  raw = Path(synthetic.write_dataset('pascal_voc_seg', str(tmp_path / 'raw'), **TINY))
  voc_root = raw / 'VOCdevkit' / 'VOC2012'
  lists = voc_root / 'ImageSets' / 'Segmentation'
  (lists / 'train_aug.txt').write_text((lists / 'train.txt').read_text())
  voc = layouts.get('pascal_voc_seg')
  assert voc.splits(str(voc_root)) == ['train', 'trainval', 'val']  # no SegmentationClassAug/
  # Raw labels (plain class ids) win over the palette ones; train_aug reads SegmentationClassAug.
  for name in ('SegmentationClassRaw', 'SegmentationClassAug'):
    (voc_root / name).mkdir()
    for path in (voc_root / 'SegmentationClass').glob('*.png'):
      Image.fromarray(np.asarray(Image.open(path)), 'L').save(voc_root / name / path.name)
  assert voc.splits(str(voc_root)) == ['train', 'train_aug', 'trainval', 'val']
  examples, _ = voc.scan(str(voc_root), 'train_aug')
  assert all('SegmentationClassAug' in e.label for e in examples)
  examples, _ = voc.scan(str(voc_root), 'val')
  assert all('SegmentationClassRaw' in e.label for e in examples)
  result = build_into(tmp_path, voc, raw, splits=['train_aug'])
  check_against_sources(records(result, 'train_aug'), voc.scan(str(voc_root), 'train_aug')[0])


def test_ade20k_layout_from_synthetic(tmp_path):
  raw = synthetic.write_dataset('ade20k', str(tmp_path / 'raw'), **TINY)
  result = build_into(tmp_path, layouts.get('ade20k'), raw, splits=['val'])
  built, _ = result
  assert list(built.splits) == ['val'] and built.num_classes == 151 and built.ignore_label == 0
  ade = layouts.get('ade20k')
  sources, _ = ade.scan(ade.locate(raw), 'val')
  check_against_sources(records(result, 'val'), sources)
  assert built.splits['val'].label_histogram[0] == 0  # the ignore label is not counted


def test_cityscapes_label_ids_are_mapped_to_train_ids(tmp_path):
  raw = Path(synthetic.write_dataset('cityscapes', str(tmp_path / 'raw'), **TINY))
  train_ids = {p.name.replace('_labelTrainIds', '_labelIds'): np.asarray(Image.open(p))
               for p in raw.glob('gtFine/*/*/*_labelTrainIds.png')}
  for path in raw.glob('gtFine/*/*/*_labelTrainIds.png'):
    path.unlink()  # only label ids left: the builder converts them
  result = build_into(tmp_path, layouts.get('cityscapes'), raw)
  built, _ = result
  assert {k: v.num_examples for k, v in built.splits.items()} == {'train_fine': 5, 'val_fine': 3}
  city = layouts.get('cityscapes')
  sources, _ = city.scan(str(raw), 'train_fine')
  assert all(s.label.endswith('_gtFine_labelIds.png') for s in sources)
  check_against_sources(records(result, 'train_fine'), sources,
                        label_of=lambda path: train_ids[os.path.basename(path)])
  assert set(np.flatnonzero(built.splits['train_fine'].label_histogram)) <= {0, 8, 11, 13}


@pytest.mark.process
def test_archive_input_through_the_step(tmp_path):
  raw = synthetic.write_dataset('pascal_voc_seg', str(tmp_path / 'raw'), **TINY)
  archive = tmp_path / 'VOCtrainval.tar'
  with tarfile.open(archive, 'w') as tar:
    tar.add(os.path.join(raw, 'VOCdevkit'), arcname='VOCdevkit')
  result = run_step(tmp_path, archive, '--dataset=pascal_voc_seg', '--splits=train,val')
  assert result.returncode == 0, result.stderr
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert metrics['images'] == 8 and metrics['examples_train'] == 5 and metrics['examples_val'] == 3
  assert metrics['skipped'] == 0 and metrics['bytes_written'] > 0 and metrics['images_per_sec'] > 0


@pytest.mark.process
def test_output_is_identical_whatever_the_worker_count(tmp_path):
  raw = synthetic.write_dataset('folder', str(tmp_path / 'raw'), seed=5, num_train=12, num_val=4,
                                image_size=(32, 32))
  outputs = []
  for workers in (1, 2):
    out = tmp_path / f'w{workers}.tar.gz'
    result = run_step(tmp_path, raw, f'--num_workers={workers}', '--num_shards=3', output=out)
    assert result.returncode == 0, result.stderr
    outputs.append(out.read_bytes())
  assert outputs[0] == outputs[1]


# ----------------------------------------------------------------------------- real samples

@needs_fixtures
def test_real_folder_sample_with_suffixed_names(tmp_path):
  result = build_into(tmp_path, layouts.get('folder'), RAW / 'folder')
  built, _ = result
  assert {k: v.num_examples for k, v in built.splits.items()} == {'train': 4, 'val': 1}
  assert built.num_classes == 4  # auto: labels go up to 3
  dataset = layouts.get('folder')
  sources, _ = dataset.scan(str(RAW / 'folder'), 'train')
  assert [s.id for s in sources] == ['00000', '00001', '00002', '00003']
  check_against_sources(records(result, 'train'), sources)


@needs_fixtures
def test_real_pascal_sample(tmp_path):
  result = build_into(tmp_path, layouts.get('pascal_voc_seg'), RAW / 'pascal_voc')
  built, _ = result
  assert {k: v.num_examples for k, v in built.splits.items()} == {'train': 2, 'trainval': 3, 'val': 1}
  voc = layouts.get('pascal_voc_seg')
  sources, _ = voc.scan(voc.locate(str(RAW / 'pascal_voc')), 'trainval')
  check_against_sources(records(result, 'trainval'), sources)
  present = set(np.flatnonzero(built.splits['trainval'].label_histogram))
  assert present == {0, 5, 6, 7, 9, 15, 18}


@needs_fixtures
def test_real_ade20k_sample(tmp_path):
  result = build_into(tmp_path, layouts.get('ade20k'), RAW / 'ade20k')
  built, _ = result
  assert {k: v.num_examples for k, v in built.splits.items()} == {'train': 1}
  example = records(result, 'train')[0]
  assert example[tfrecord.IMAGE_FILENAME] == b'ADE_train_00000001'
  assert (example[tfrecord.IMAGE_HEIGHT], example[tfrecord.IMAGE_WIDTH]) == (512, 683)
  ade = layouts.get('ade20k')
  check_against_sources([example], ade.scan(ade.locate(str(RAW / 'ade20k')), 'train')[0])


@needs_fixtures
def test_real_cityscapes_sample_train_ids_and_label_ids(tmp_path):
  result = build_into(tmp_path, layouts.get('cityscapes'), RAW / 'cityscapes')
  shipped = records(result, 'val')[0]
  assert shipped[tfrecord.IMAGE_FILENAME] == b'frankfurt_000000_000294'
  assert shipped[tfrecord.IMAGE_FORMAT] == b'png'
  # Without the shipped train ids, the label ids are converted; the two files were downscaled
  # separately, so they agree on most pixels, not all (fixtures README).
  copy = tmp_path / 'cityscapes'
  shutil.copytree(RAW / 'cityscapes', copy)
  for path in copy.glob('gtFine/*/*/*_labelTrainIds.png'):
    path.unlink()
  converted_dir = tmp_path / 'converted'
  converted_dir.mkdir()
  converted, _ = build.build(layouts.get('cityscapes'), str(copy), str(converted_dir),
                             BuildConfig(num_workers=1), progress=False)
  example = tfrecord.parse_example(next(tfrecord.read_records(converted.shard_paths('val')[0])))
  agreement = np.mean(decode(example)[1] == decode(shipped)[1])
  assert agreement > 0.995


# ----------------------------------------------------------------------------- bad input

def run_step(tmp_path, raw, *flags, output=None):
  output = output or tmp_path / 'artifact' / 'tfrecords.tar.gz'
  return subprocess.run(
      [sys.executable, '-m', 'steps.build_data', f'--raw_data={raw}', f'--output={output}',
       '--num_workers=1', *flags],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'PYTHONPATH': str(REPO)})


def _truncate(path, keep=0.8):
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * keep)])


def _corrupt(path, offset):
  data = bytearray(path.read_bytes())
  data[offset:offset + 16] = b'\x00' * 16
  path.write_bytes(bytes(data))


def _rgb_mask(path):
  Image.open(path).convert('RGB').save(path)


def _resize(path):
  Image.open(path).resize((20, 20), Image.NEAREST).save(path)


def _value(path, value=7):
  label = np.array(Image.open(path))
  label[0, 0] = value
  Image.fromarray(label).save(path)


# (layout, change to the synthetic raw folder, a fragment of the one-line error)
BAD_INPUTS = {
    'truncated_image': ('folder', lambda r: _truncate(r / 'images' / 'train_00001.jpg'),
                        "train_00001.jpg: truncated JPEG (no end-of-image marker after the image "
                        "data) (split 'train', id 'train_00001')"),
    'truncated_header': ('folder', lambda r: _truncate(r / 'images' / 'train_00001.jpg', 0.1),
                         'train_00001.jpg: truncated JPEG'),
    'corrupt_image': ('folder', lambda r: _corrupt(r / 'images' / 'train_00002.jpg', 4),
                      'train_00002.jpg: corrupt JPEG (invalid segment length at byte 4)'),
    'corrupt_png_image': (
        'cityscapes',
        lambda r: _corrupt(r / 'leftImg8bit/val/frankfurt/frankfurt_000000_000001_leftImg8bit.png', 200),
        "frankfurt_000000_000001_leftImg8bit.png: corrupt PNG (CRC mismatch in chunk b'IDAT') "
        "(split 'val_fine'"),
    'truncated_mask': ('folder', lambda r: _truncate(r / 'masks' / 'val_00000.png', 0.7),
                       "val_00000.png: corrupt or truncated label PNG (split 'val', id 'val_00000')"),
    'not_an_image': ('folder', lambda r: (r / 'images' / 'train_00002.jpg').write_text('hello'),
                     'train_00002.jpg: not a JPEG or PNG image'),
    'missing_mask': ('folder', lambda r: (r / 'masks' / 'val_00001.png').unlink(),
                     "val_00001.jpg: label missing (split 'val', id 'val_00001')"),
    'size_mismatch': ('folder', lambda r: _resize(r / 'masks' / 'train_00000.png'),
                      'train_00000.png: label is 20x20 but image'),
    'rgb_mask': ('folder', lambda r: _rgb_mask(r / 'masks' / 'train_00003.png'),
                 'train_00003.png: label holds colours (RGB), not class ids'),
    'label_out_of_range': ('folder', lambda r: _value(r / 'masks' / 'val_00002.png'),
                           "val_00002.png: label values 7 out of range (split 'val', id 'val_00002')"),
    'empty_split': ('folder', lambda r: (r / 'splits' / 'val.txt').write_text('\n'),
                    "val.txt: split 'val' is empty"),
    'id_without_files': ('folder', lambda r: (r / 'splits' / 'train.txt').write_text('nothing\n'),
                         "train.txt: no image for id 'nothing' (split 'train')"),
    'duplicate_id': ('folder',
                     lambda r: (r / 'splits' / 'val.txt').write_text('val_00000\nval_00001\nval_00000\n'),
                     "val.txt: duplicate id 'val_00000' in split 'val'"),
    'cityscapes_without_label': (
        'cityscapes',
        lambda r: [p.unlink() for p in r.glob('gtFine/train/*/aachen_000000_000002_gtFine_*.png')],
        "aachen_000000_000002_leftImg8bit.png: label missing (split 'train_fine'"),
    'ade20k_rgb_annotation': (
        'ade20k', lambda r: _rgb_mask(r / 'ADEChallengeData2016/annotations/validation/ADE_val_00000001.png'),
        'ADE_val_00000001.png: label holds colours (RGB), not class ids'),
    'pascal_value_out_of_range': (
        'pascal_voc_seg', lambda r: _value(next(r.glob('VOCdevkit/VOC2012/SegmentationClass/*.png')), 30),
        'label values 30 out of range'),
}


@pytest.mark.process
@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_bad_input_is_one_line_error_and_no_artifact(tmp_path, case):
  layout, change, message = BAD_INPUTS[case]
  raw = Path(synthetic.write_dataset(layout, str(tmp_path / 'raw'), **TINY))
  change(raw)
  flags = [f'--dataset={layout}']
  if layout == 'folder' and case == 'label_out_of_range':
    flags.append('--num_classes=4')
  result = run_step(tmp_path, raw, *flags)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  assert message in lines[0]
  assert not (tmp_path / 'artifact').exists() or not any((tmp_path / 'artifact').iterdir())


@pytest.mark.process
def test_skip_invalid_reports_what_it_left_out(tmp_path):
  raw = Path(synthetic.write_dataset('folder', str(tmp_path / 'raw'), **TINY))
  _truncate(raw / 'images' / 'train_00001.jpg')
  (raw / 'masks' / 'val_00002.png').unlink()
  result = run_step(tmp_path, raw, '--skip_invalid')
  assert result.returncode == 0, result.stderr
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert metrics['skipped'] == 2
  assert metrics['skipped_examples'] == ['val/val_00002', 'train/train_00001']
  assert (metrics['examples_train'], metrics['examples_val']) == (4, 2)
  with tarfile.open(tmp_path / 'artifact' / 'tfrecords.tar.gz') as tar:
    data = json.load(tar.extractfile('dataset.json'))
  assert [(s['split'], s['id']) for s in data['skipped']] == [('val', 'val_00002'),
                                                              ('train', 'train_00001')]
  assert all(s['reason'] for s in data['skipped'])


def test_split_with_only_invalid_examples_fails_even_when_skipping(tmp_path):
  raw = Path(synthetic.write_dataset('folder', str(tmp_path / 'raw'), **TINY))
  for path in (raw / 'masks').glob('val_*.png'):
    path.unlink()
  with pytest.raises(UserError, match="split 'val' has no valid examples"):
    build_into(tmp_path, layouts.get('folder'), raw, skip_invalid=True)


def test_unknown_split_and_wrong_layout_name_what_was_expected(tmp_path):
  raw = synthetic.write_dataset('folder', str(tmp_path / 'raw'), **TINY)
  with pytest.raises(UserError, match=r"split 'test' not found .* splits found: train, val"):
    build_into(tmp_path, layouts.get('folder'), raw, splits=['test'])
  with pytest.raises(UserError, match='not a cityscapes dataset; expected leftImg8bit'):
    build_into(tmp_path, layouts.get('cityscapes'), raw)


@pytest.mark.process
def test_help_is_fast_and_does_not_import_tensorflow():
  code = ('import sys, time; t = time.time()\n'
          'from steps import build_data\n'
          'try:\n  build_data.main(["--help"])\n'
          'except SystemExit:\n  pass\n'
          'assert "tensorflow" not in sys.modules\n'
          'print(time.time() - t, file=sys.stderr)')
  start = time.monotonic()
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert result.returncode == 0, result.stderr
  assert time.monotonic() - start < 1.0
