"""predict over shards of an image set, merged back by merge_predictions, and --images as a list
file of paths and mounted object-store URLs."""
import hashlib
import json
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_error_line, run_step
from steps import artifacts

NUM_SHARDS = 3


def write_images(folder, count=7):
  """`count` small photos-like images (JPEG and PNG), some in a subfolder."""
  rng = np.random.default_rng(0)
  for i in range(count):
    path = folder / ('sub' if i % 3 == 0 else '.') / f'img{i}.{"png" if i % 2 else "jpg"}'
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (40 + i, 52, 3), dtype=np.uint8)).save(path)
  return folder


def manifest_of(archive):
  with tarfile.open(archive) as tar:
    return json.load(tar.extractfile(artifacts.PREDICTIONS_JSON))


@pytest.fixture(scope='module')
def runs(tiny_model, tmp_path_factory):
  """The images, one unsharded run, and each of NUM_SHARDS shard runs in a `shards` folder."""
  root = tmp_path_factory.mktemp('shards')
  images = write_images(root / 'images')
  whole = root / 'whole.tar.gz'
  run_step('predict', f'--model={tiny_model}', f'--images={images}', f'--output={whole}')
  shards = root / 'shards'
  for index in range(NUM_SHARDS):
    run_step('predict', f'--model={tiny_model}', f'--images={images}', f'--num_shards={NUM_SHARDS}',
             f'--shard_index={index}', f'--output={shards / f"shard{index}.tar.gz"}')
  return {'root': root, 'images': images, 'whole': whole, 'shards': shards}


def test_shards_merged_equal_one_unsharded_run_byte_for_byte(runs, tmp_path):
  merged = tmp_path / 'merged.tar.gz'
  result = run_step('merge_predictions', f'--shards={runs["shards"]}', f'--output={merged}')
  assert merged.read_bytes() == runs['whole'].read_bytes()
  assert result.last('images') == 7 and result.last('shards') == NUM_SHARDS
  manifests = [manifest_of(runs['shards'] / f'shard{i}.tar.gz') for i in range(NUM_SHARDS)]
  # Every image in exactly one shard, the one its name hashes to; the shards split 7 images.
  names = [name for m in manifests for name in m['images']]
  assert sorted(names) == sorted(set(names)) and len(names) == 7
  for index, manifest in enumerate(manifests):
    assert (manifest['num_shards'], manifest['shard_index']) == (NUM_SHARDS, index)
    assert all(artifacts.shard_of(name, NUM_SHARDS) == index for name in manifest['images'])
  whole = manifest_of(runs['whole'])
  assert (whole['num_shards'], whole['shard_index'], whole['image_set']['count']) == (1, 0, 7)
  entry = whole['images']['sub/img0']
  assert entry['source'] == 'sub/img0.jpg'
  assert entry['image_sha256'] == artifacts.file_sha256(runs['images'] / 'sub' / 'img0.jpg')
  assert whole['settings']['overlay_format'] == 'jpeg' and whole['model']['format']


def test_shard_assignment_is_the_documented_rule_and_balanced():
  # The rule as docs/batch_prediction.md states it, written from the statement: the first 8 bytes
  # of the sha256 of the name, big-endian, modulo the shard count.
  for name in ('a', 'sub/img0', 'photos/2024/IMG_0001', 'é'):
    assert artifacts.shard_of(name, 7) == int(hashlib.sha256(name.encode()).hexdigest()[:16], 16) % 7
  counts = np.bincount([artifacts.shard_of(f'photo{i}', 4) for i in range(4000)], minlength=4)
  assert counts.min() > 900  # balanced: about 1000 each


@pytest.mark.parametrize('flags, fragments, status', [
    (['--num_shards=3', '--shard_index=3'], ('--shard_index=3', '0 to 2'), 1),
    (['--num_shards=0'], ('--num_shards', '>= 1'), 2),
    (['--num_shards=10001'], ('--num_shards', '<= 10000'), 2),
    (['--images_mount=bucket=/tmp'], ('--images_mount=bucket=/tmp', 'PREFIX=FOLDER'), 1),
])
def test_bad_shard_and_mount_flags_are_one_line(runs, tiny_model, tmp_path, flags, fragments,
                                                  status):
  out = tmp_path / 'out' / 'p.tar.gz'
  result = run_step('predict', f'--model={tiny_model}', f'--images={runs["images"]}',
                    f'--output={out}', *flags, check=False)
  assert_one_error_line(result, *fragments, status=status)
  assert not (tmp_path / 'out').exists()


def _merge_refused(folder, shard_files, *fragments):
  """merge_predictions of copies of `shard_files` in `folder`/given refused with one line naming
  `fragments`, writing nothing."""
  given = folder / 'given'
  given.mkdir(parents=True)
  for i, path in enumerate(shard_files):
    (given / f'{i}-{path.name}').write_bytes(path.read_bytes())
  out = folder / 'out' / 'merged.tar.gz'
  result = run_step('merge_predictions', f'--shards={given}', f'--output={out}', check=False)
  assert_one_error_line(result, *fragments)
  assert [p.name for p in folder.iterdir()] == ['given']


def _shard(runs, index):
  return runs['shards'] / f'shard{index}.tar.gz'


def test_merge_refuses_an_overlap(runs, tmp_path, step_tmpdir):
  _merge_refused(tmp_path / 'run', [_shard(runs, 0), _shard(runs, 1), _shard(runs, 1),
                                    _shard(runs, 2)], 'both shard 1 of 3', 'overlap')
  assert not list(step_tmpdir.iterdir())


def test_merge_refuses_a_gap(runs, tmp_path, step_tmpdir):
  _merge_refused(tmp_path / 'run', [_shard(runs, 0), _shard(runs, 2)], 'shard 1 of 3 missing',
                 'gap')
  assert not list(step_tmpdir.iterdir())


def test_merge_refuses_shards_of_another_run(runs, tiny_model, tmp_path, step_tmpdir):
  """Another shard count, another model, other inference settings: each refused by name."""
  # Another model: the same export without its SavedModel (the format run is the same, TFLite).
  model = tmp_path / 'model'
  with tarfile.open(tiny_model) as tar:
    tar.extractall(model, filter='data')
  (model_json,) = model.rglob('model.json')
  saved_models = [p for p in model_json.parent.iterdir() if 'saved_model' in p.name]
  assert saved_models
  for path in saved_models:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  others = {
      'num_shards': ['--num_shards=2', '--shard_index=1', f'--model={tiny_model}'],
      'model': [f'--num_shards={NUM_SHARDS}', '--shard_index=2', f'--model={model}'],
      'inference settings': [f'--num_shards={NUM_SHARDS}', '--shard_index=2',
                             f'--model={tiny_model}', '--overlay_alpha=0.3'],
  }
  for i, (what, flags) in enumerate(others.items()):
    other = tmp_path / f'other{i}.tar.gz'
    run_step('predict', *flags, f'--images={runs["images"]}', f'--output={other}')
    _merge_refused(tmp_path / f'run{i}', [_shard(runs, 0), _shard(runs, 1), other],
                   f'differ in {what}')
  assert not list(step_tmpdir.iterdir())


def test_merge_refuses_a_shard_with_a_damaged_file(runs, tmp_path, step_tmpdir):
  damaged = tmp_path / 'damaged'
  with tarfile.open(_shard(runs, 0)) as tar:
    tar.extractall(damaged, filter='data')
  (label,) = list((damaged / 'labels').rglob('*.png'))[:1]
  label.write_bytes(label.read_bytes() + b'x')
  folder = tmp_path / 'run' / 'given'
  folder.mkdir(parents=True)
  shutil.copytree(damaged, folder / 'a')
  for index in (1, 2):
    shutil.copy(_shard(runs, index), folder)
  result = run_step('merge_predictions', f'--shards={folder}', f'--output={tmp_path / "run/out"}',
                    check=False)
  assert_one_error_line(result, 'differs from the sha256', 'damaged')
  assert not (tmp_path / 'run' / 'out').exists()
  assert not list(step_tmpdir.iterdir())


def _labels(archive):
  with tarfile.open(archive) as tar:
    return {m.name: tar.extractfile(m).read() for m in tar.getmembers()
            if m.name.startswith('labels/') and m.isfile()}


def test_a_list_file_of_relative_paths_and_mounted_urls(runs, tiny_model, tmp_path):
  """Relative entries resolve in the list file's folder, URLs in their mount; the outputs are
  those of the same images read from a folder. A folder holding only the list (as an
  orchestrator delivers a file input) works the same."""
  listed = tmp_path / 'listed'
  listed.mkdir()
  shutil.copytree(runs['images'] / 'sub', listed / 'sub')
  (listed / 'list.txt').write_text('# photos\nsub/img0.jpg\n\n  ./sub/img3.png  \n'
                                   'gs://bucket/photos/img1.png\n')
  mount = f'--images_mount=gs://bucket/photos/={runs["images"]}'
  out = tmp_path / 'list.tar.gz'
  run_step('predict', f'--model={tiny_model}', f'--images={listed / "list.txt"}', mount,
           f'--output={out}')
  whole = _labels(runs['whole'])
  assert _labels(out) == {'labels/sub/img0.png': whole['labels/sub/img0.png'],
                          'labels/sub/img3.png': whole['labels/sub/img3.png'],
                          'labels/bucket/photos/img1.png': whole['labels/img1.png']}
  manifest = manifest_of(out)
  assert manifest['images']['bucket/photos/img1']['source'] == 'gs://bucket/photos/img1.png'
  assert manifest['images']['sub/img3']['source'] == './sub/img3.png'
  delivered = tmp_path / 'delivered'
  delivered.mkdir()
  (delivered / 'images.txt').write_text('gs://bucket/photos/img1.png\n')
  run_step('predict', f'--model={tiny_model}', f'--images={delivered}', mount,
           f'--output={tmp_path / "delivered.tar.gz"}')
  assert _labels(tmp_path / 'delivered.tar.gz') == {
      'labels/bucket/photos/img1.png': whole['labels/img1.png']}


@pytest.mark.parametrize('entry, fragments', [
    ('../outside.jpg', ("'..' component",)),
    ('/etc/hostname.jpg', ('absolute path',)),
    ('link.jpg', ('leads outside', 'symbolic link')),
    ('s3://other/img1.png', ('no --images_mount maps this URL', 'downloads nothing')),
    ('gs://bucket/../img1.png', ("'..' component",)),
    ('https://example.com/img1.png', ('no --images_mount maps this URL',)),
    ('gs://bucket/img1.bmp', ('not a .jpg/.jpeg/.png file',)),
    ('gs://bucket/missing.jpg', ('missing.jpg does not exist',)),
    ('gs://bucket/sub/img0.jpg', ('as line 2 is', 'list each image once')),
])
def test_a_bad_list_entry_is_one_line_with_its_line_number(runs, tiny_model, tmp_path, entry,
                                                           fragments):
  listed = tmp_path / 'listed'
  listed.mkdir()
  (tmp_path / 'outside.jpg').write_bytes((runs['images'] / 'sub' / 'img0.jpg').read_bytes())
  (listed / 'link.jpg').symlink_to(tmp_path / 'outside.jpg')
  (listed / 'list.txt').write_text(f'# two good entries, then the bad one\n'
                                   f'gs://bucket/sub/img0.jpg\ngs://bucket/img1.png\n{entry}\n')
  out = tmp_path / 'out' / 'p.tar.gz'
  result = run_step('predict', f'--model={tiny_model}', f'--images={listed / "list.txt"}',
                    f'--images_mount=gs://bucket/={runs["images"]}', f'--output={out}',
                    check=False)
  assert_one_error_line(result, f'{listed / "list.txt"}, line 4', *fragments)
  assert not (tmp_path / 'out').exists()


def test_a_mount_that_is_not_a_folder_is_refused(runs, tiny_model, tmp_path):
  (tmp_path / 'list.txt').write_text('gs://bucket/img1.png\n')
  result = run_step('predict', f'--model={tiny_model}', f'--images={tmp_path / "list.txt"}',
                    f'--images_mount=gs://bucket/={tmp_path / "absent"}',
                    f'--output={tmp_path / "out" / "p.tar.gz"}', check=False)
  assert_one_error_line(result, f'{tmp_path / "absent"} is not a folder')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['list.txt']


def test_a_mount_without_a_list_file_is_refused(runs, tiny_model, tmp_path):
  result = run_step('predict', f'--model={tiny_model}', f'--images={runs["images"]}',
                    f'--images_mount=gs://bucket/={runs["images"]}',
                    f'--output={tmp_path / "p.tar.gz"}', check=False)
  assert_one_error_line(result, '--images_mount is given', 'not a list file')
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('change, fragments', [
    (lambda m: m['images'].update({'../../escaped': next(iter(m['images'].values()))}),
     ("entry '../../escaped'", "'..' component")),
    (lambda m: m.update(shard_index=5), ('num_shards 1 to 10000 and shard_index 0 to',)),
    (lambda m: m.update(images=[]), ('an object with images',)),
])
def test_merge_refuses_a_manifest_predict_could_not_have_written(runs, tmp_path, step_tmpdir,
                                                                 change, fragments):
  shard = tmp_path / 'given' / 'hostile'
  with tarfile.open(_shard(runs, 0)) as tar:
    tar.extractall(shard, filter='data')
  manifest = json.loads((shard / artifacts.PREDICTIONS_JSON).read_text())
  change(manifest)
  (shard / artifacts.PREDICTIONS_JSON).write_text(json.dumps(manifest))
  for index in (1, 2):
    shutil.copy(_shard(runs, index), tmp_path / 'given')
  result = run_step('merge_predictions', f'--shards={tmp_path / "given"}',
                    f'--output={tmp_path / "out" / "merged.tar.gz"}', check=False)
  assert_one_error_line(result, f'{shard}: {artifacts.PREDICTIONS_JSON}', *fragments)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['given', 'tmpdir']
  assert not list(step_tmpdir.iterdir())


def test_merge_needs_a_folder_of_shards(runs, tmp_path):
  result = run_step('merge_predictions', f'--shards={_shard(runs, 0)}',
                    f'--output={tmp_path / "merged.tar.gz"}', check=False)
  assert_one_error_line(result, 'expected a folder holding the shard artifacts')
  assert not list(tmp_path.iterdir())
