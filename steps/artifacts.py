"""The step contract: where inputs and outputs live, tarball artifacts, JSON metric lines.

- An input flag names a directory, a `.tar`/`.tar.gz`/`.zip` archive, or a suffix-less path (as
  Kubeflow passes artifacts); archives are recognised by content and extracted safely. When the flag
  is absent the input is the Valohai input folder of that name (valohai-utils' local folder off
  Valohai).
- Outputs are deterministic tarballs (sorted members, fixed mtimes and owners, gzip mtime 0) so that
  DVC sees unchanged stages as unchanged, written atomically (temp file + rename) so that a failed
  step never leaves a partial artifact.
- Metrics are one JSON object per stdout line, flushed; logs go to stderr.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import os
import shutil
import sys
import tarfile
import tempfile
import traceback
import zipfile
import zlib
from typing import Callable, Iterator, Optional

from deeplab.errors import UserError

log = logging.getLogger('steps')

# Fixed member metadata: the same content always gives the same bytes.
_MTIME = 0
_GZIP_LEVEL = 6


def setup_logging() -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's C++ banner off stderr
  logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                      format='%(asctime)s %(name)s %(levelname)s %(message)s')
  logging.getLogger('tensorflow').setLevel(logging.ERROR)  # tf.compat.v1 deprecation notices


def run_step(main: Callable[[], None]) -> None:
  """Runs a step's main(): one clear line and exit 1 on bad input, exit 1 with traceback on a bug."""
  setup_logging()
  try:
    main()
  except UserError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  except KeyboardInterrupt:
    print('error: interrupted', file=sys.stderr, flush=True)
    sys.exit(130)
  except Exception as e:  # a bug: keep the traceback, but end with one line that names it
    traceback.print_exc()
    print(f'error: unexpected {type(e).__name__}: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


def emit_metrics(**values) -> None:
  """Prints one JSON metric line on stdout (Valohai metadata; DVC/KFP glue parse the same lines)."""
  clean = {}
  for key, value in values.items():
    if hasattr(value, 'item'):  # numpy scalar
      value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
      value = None
    clean[key] = value
  print(json.dumps(clean, sort_keys=False), flush=True)


# ----------------------------------------------------------------------------- locations

def _valohai_paths(step: str):
  from valohai import paths
  from valohai.internals import global_state
  # valohai-utils keys its local folders by step name (.valohai/inputs/<step>/...).
  global_state.step_name = step.replace('_', '-')
  return paths


def input_location(step: str, name: str, flag: Optional[str], optional: bool = False) -> Optional[str]:
  """The path of input `name`: the flag if given, else the Valohai input folder."""
  if flag:
    if not os.path.exists(flag):
      raise UserError(f'--{name}: {flag} does not exist')
    return flag
  folder = _valohai_paths(step).get_inputs_path(name)
  if os.path.isdir(folder) and os.listdir(folder):
    return folder
  if optional:
    return None
  raise UserError(f'input {name!r} not given: pass --{name}=PATH (a folder or an archive), '
                  f'or provide the Valohai input (looked in {folder})')


def output_location(step: str, name: str, flag: Optional[str], filename: str) -> str:
  """The file path of output `name`: the flag if given (a folder gets `filename`), else Valohai's."""
  if flag:
    if flag.endswith(os.sep) or os.path.isdir(flag):
      return os.path.join(flag, filename)
    return flag
  return os.path.join(_valohai_paths(step).get_outputs_path(), filename)


# ----------------------------------------------------------------------------- reading inputs

def is_archive(path: str) -> bool:
  return os.path.isfile(path) and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def _check_member(archive: str, name: str, kind: str, link_target: Optional[str] = None) -> None:
  """Rejects members that would write outside the destination or are not plain files/folders."""
  normalized = name.replace('\\', '/')
  parts = [p for p in normalized.split('/') if p not in ('', '.')]
  if normalized.startswith('/') or (len(normalized) > 1 and normalized[1] == ':'):
    raise UserError(f'{archive}: member {name!r} has an absolute path; refusing to extract')
  if '..' in parts:
    raise UserError(f'{archive}: member {name!r} points outside the archive (..); refusing to extract')
  if kind == 'special':
    raise UserError(f'{archive}: member {name!r} is a device, fifo or other special file; refusing to extract')
  if link_target is not None:
    target = link_target.replace('\\', '/')
    resolved = os.path.normpath(os.path.join(os.path.dirname('/'.join(parts)), target))
    if target.startswith('/') or resolved == '..' or resolved.startswith('../'):
      raise UserError(f'{archive}: link {name!r} -> {link_target!r} points outside the archive; '
                      'refusing to extract')


def safe_extract(archive: str, dest: str) -> None:
  """Extracts a tar (any compression) or zip archive after checking every member first."""
  if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as zf:
      for info in zf.infolist():
        mode = info.external_attr >> 16
        is_link = (mode & 0o170000) == 0o120000
        _check_member(archive, info.filename, 'file',
                      zf.read(info).decode('utf-8', 'replace') if is_link else None)
        if is_link:  # zip symlinks are rare; store none rather than re-implement link creation
          raise UserError(f'{archive}: member {info.filename!r} is a symbolic link; '
                          'zip archives with links are not supported, use tar')
      zf.extractall(dest)
    return
  try:
    with tarfile.open(archive) as tf:
      members = tf.getmembers()
      for m in members:
        if m.issym() or m.islnk():
          _check_member(archive, m.name, 'link', m.linkname)
        elif m.isfile() or m.isdir():
          _check_member(archive, m.name, 'file')
        else:
          _check_member(archive, m.name, 'special')
      tf.extractall(dest, members=members, filter='fully_trusted')  # already checked above
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise UserError(f'{archive}: not a readable archive ({e})') from None


@contextlib.contextmanager
def open_input(path: str, marker: Optional[str] = None) -> Iterator[str]:
  """Yields a directory with the contents of input `path` (a folder or an archive).

  A folder holding exactly one archive (how Valohai and DVC deliver a tarball input) is extracted.
  With `marker` (e.g. 'dataset.json'), a single wrapping folder inside the content is looked through,
  so `tar czf x.tgz mydir/` works as well as archives made by the steps.
  """
  with tempfile.TemporaryDirectory(prefix='deeplab-input-') as tmp:
    root = path
    if os.path.isdir(path):
      entries = [e for e in os.listdir(path) if not e.startswith('.')]
      if len(entries) == 1 and is_archive(os.path.join(path, entries[0])):
        root = os.path.join(path, entries[0])
    if os.path.isfile(root):
      if not is_archive(root):
        raise UserError(f'{root}: expected a folder or a .tar/.tar.gz/.zip archive, '
                        'got a file of another kind')
      safe_extract(root, tmp)
      root = tmp
    if marker:
      root = find_root(root, marker)
    yield root


def find_root(folder: str, marker: str) -> str:
  """`folder`, or its only subfolder (recursively), whichever holds `marker`; else `folder`."""
  current = folder
  while not os.path.exists(os.path.join(current, marker)):
    entries = [e for e in os.listdir(current) if not e.startswith('.')]
    if len(entries) != 1 or not os.path.isdir(os.path.join(current, entries[0])):
      return folder
    current = os.path.join(current, entries[0])
  return current


# ----------------------------------------------------------------------------- writing outputs

def _tarinfo(arcname: str, size: int, is_dir: bool) -> tarfile.TarInfo:
  info = tarfile.TarInfo(arcname)
  info.mtime = _MTIME
  info.uid = info.gid = 0
  info.uname = info.gname = ''
  if is_dir:
    info.type, info.mode = tarfile.DIRTYPE, 0o755
  else:
    info.size, info.mode = size, 0o644
  return info


def _sorted_members(src_dir: str):
  """(archive name, path) of every folder and file under src_dir, sorted by archive name."""
  members = []
  for dirpath, dirnames, filenames in os.walk(src_dir):
    for name in dirnames + filenames:
      full = os.path.join(dirpath, name)
      members.append((os.path.relpath(full, src_dir).replace(os.sep, '/'), full))
  return sorted(members)


@contextlib.contextmanager
def atomic_output(out_path: str, mode: str = 'wb'):
  """A file object whose content appears at `out_path` only once the block completes.

  Written to a temp file beside `out_path` and renamed into place; on any failure the temp file
  is removed, so a failed step never leaves a partial artifact.
  """
  out_dir = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(prefix='.' + os.path.basename(out_path) + '.', suffix='.partial',
                                  dir=out_dir)
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    # mkstemp files are 0600; artifacts are read by other users (non-root images, shared volumes).
    os.chmod(tmp_path, 0o644)
    os.replace(tmp_path, out_path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp_path)
    raise


def write_tarball(src_dir: str, out_path: str) -> str:
  """Packs `src_dir` into a deterministic `out_path` (.tar.gz), atomically. Returns out_path."""
  with atomic_output(out_path) as raw:
    with gzip.GzipFile(filename='', mode='wb', fileobj=raw, mtime=0,
                       compresslevel=_GZIP_LEVEL) as gz:
      with tarfile.open(fileobj=gz, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for arcname, full in _sorted_members(src_dir):
          if os.path.isdir(full):
            tar.addfile(_tarinfo(arcname, 0, True))
          else:
            with open(full, 'rb') as f:
              tar.addfile(_tarinfo(arcname, os.path.getsize(full), False), f)
  return out_path


def write_json_atomic(obj, out_path: str) -> str:
  """Writes `obj` as sorted, indented JSON to `out_path` atomically."""
  with atomic_output(out_path, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')
  return out_path


@contextlib.contextmanager
def staging_dir(prefix: str) -> Iterator[str]:
  """A scratch folder for an artifact's contents, removed afterwards whatever happens."""
  path = tempfile.mkdtemp(prefix=f'deeplab-{prefix}-')
  try:
    yield path
  finally:
    shutil.rmtree(path, ignore_errors=True)
