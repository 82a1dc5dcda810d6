"""The step contract: deterministic atomic tarballs, safe extraction, inputs detected by content."""
import io
import os
import tarfile
import zipfile

import pytest

from deeplab.errors import UserError
from steps import archives, files, locations


def _folder(tmp_path, contents):
  root = tmp_path / 'src'
  for name, data in contents.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(data)
  return root


def test_tarball_is_deterministic_and_round_trips(tmp_path):
  src = _folder(tmp_path, {'b.txt': b'b', 'a/c.bin': b'\x00' * 10, 'model.json': b'{}'})
  first = files.write_tarball(str(src), str(tmp_path / 'one.tar.gz'))
  os.utime(src / 'b.txt', (1, 1))  # mtimes must not matter
  second = files.write_tarball(str(src), str(tmp_path / 'two'))  # suffix-less, as KFP names it
  assert open(first, 'rb').read() == open(second, 'rb').read()
  with tarfile.open(first) as tar:
    assert tar.getnames() == ['a', 'a/c.bin', 'b.txt', 'model.json']
  with archives.open_input(second, marker='model.json') as folder:
    assert open(os.path.join(folder, 'a', 'c.bin'), 'rb').read() == b'\x00' * 10


def test_failed_write_leaves_no_partial_artifact(tmp_path, monkeypatch):
  src = _folder(tmp_path, {'x': b'x'})
  monkeypatch.setattr(tarfile.TarFile, 'addfile', lambda *a, **k: (_ for _ in ()).throw(OSError('disk full')))
  with pytest.raises(OSError):
    files.write_tarball(str(src), str(tmp_path / 'out' / 'a.tar.gz'))
  assert not (tmp_path / 'out').exists()  # nor the folder it created for it


def _tar_with(tmp_path, member, data=b'', **attributes):
  path = tmp_path / 'evil.tar'
  with tarfile.open(path, 'w') as tar:
    info = tarfile.TarInfo(member)
    for key, value in attributes.items():
      setattr(info, key, value)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)
  return path


@pytest.mark.parametrize('member, attributes, message', [
    ('/etc/passwd', {}, 'absolute path'),
    ('../escape.txt', {}, 'points outside'),
    ('a/../../escape.txt', {}, 'points outside'),
    ('link', {'type': tarfile.SYMTYPE, 'linkname': '/etc/passwd'}, 'is a symbolic link'),
    ('sub/link', {'type': tarfile.SYMTYPE, 'linkname': '../../x'}, 'is a symbolic link'),
    ('inside', {'type': tarfile.SYMTYPE, 'linkname': 'x'}, 'is a symbolic link'),  # no link at all
    ('hard', {'type': tarfile.LNKTYPE, 'linkname': '../x'}, 'is a hard link'),
    ('dev', {'type': tarfile.CHRTYPE}, 'is a device'),
    ('pipe', {'type': tarfile.FIFOTYPE}, 'is a fifo'),
])
def test_unsafe_archives_are_rejected_before_writing(tmp_path, member, attributes, message):
  archive = _tar_with(tmp_path, member, **attributes)
  with pytest.raises(UserError, match=message):
    with archives.open_input(str(archive)):
      pass
  assert not (tmp_path / 'escape.txt').exists()


def test_zip_with_parent_entry_is_rejected_and_plain_zip_works(tmp_path):
  bad = tmp_path / 'bad.zip'
  with zipfile.ZipFile(bad, 'w') as zf:
    zf.writestr('../x.txt', 'x')
  with pytest.raises(UserError, match='points outside'):
    archives.safe_extract(str(bad), str(tmp_path / 'out'))
  good = tmp_path / 'good'  # no suffix: detected by content
  with zipfile.ZipFile(good, 'w') as zf:
    zf.writestr('top/model.json', '{}')
  with archives.open_input(str(good), marker='model.json') as folder:
    assert os.path.basename(folder) == 'top'


def test_a_folder_holding_one_archive_is_opened(tmp_path):
  src = _folder(tmp_path, {'dataset.json': b'{}'})
  inputs = tmp_path / 'valohai_input'
  inputs.mkdir()
  files.write_tarball(str(src), str(inputs / 'tfrecords.tar.gz'))
  with archives.open_input(str(inputs)) as folder:
    assert os.listdir(folder) == ['dataset.json']


def test_a_plain_file_is_not_an_input(tmp_path):
  path = tmp_path / 'notes.txt'
  path.write_text('hello')
  with pytest.raises(UserError, match='expected a folder or a .tar/.tar.gz/.zip archive'):
    with archives.open_input(str(path)):
      pass


def test_a_missing_input_names_its_flag_and_a_missing_output_goes_to_the_working_directory(
    tmp_path, monkeypatch):
  with pytest.raises(UserError, match="input 'tfrecords' not given: pass --tfrecords=PATH"):
    locations.input_location('tfrecords', None)
  assert locations.input_location('checkpoint', None, optional=True) is None
  with pytest.raises(UserError, match='--tfrecords: .*nope does not exist'):
    locations.input_location('tfrecords', str(tmp_path / 'nope'))
  monkeypatch.chdir(tmp_path)
  assert locations.output_location('output', None, 'checkpoint.tar.gz', {}) == 'checkpoint.tar.gz'
  (tmp_path / 'out').mkdir()
  assert locations.output_location('output', str(tmp_path / 'out'), 'checkpoint.tar.gz', {}) == \
      str(tmp_path / 'out' / 'checkpoint.tar.gz')


def test_artifacts_are_readable_by_other_users(tmp_path):
  src = _folder(tmp_path, {'x': b'x'})
  assert os.stat(files.write_tarball(str(src), str(tmp_path / 'a.tar.gz'))).st_mode & 0o777 == 0o644
  assert os.stat(files.write_json_atomic({}, str(tmp_path / 'm.json'))).st_mode & 0o777 == 0o644


@pytest.mark.parametrize('member, attributes', [
    ('/abs.png', {}), ('../escape.png', {}),
    ('images/link.png', {'type': tarfile.SYMTYPE, 'linkname': '../../outside.png'})])
def test_a_step_refuses_an_unsafe_raw_archive_before_writing_anything(tmp_path, member, attributes):
  from tests.conftest import run_step
  archive = _tar_with(tmp_path, member, **attributes)
  result = run_step('build_data', f'--raw_data={archive}', f'--output={tmp_path / "out" / "t.tar.gz"}',
                    check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [result.error_line()]
  assert 'refusing to extract' in result.error_line() and str(archive) in result.error_line()
  assert not (tmp_path / 'out').exists() and not (tmp_path.parent / 'escape.png').exists()
