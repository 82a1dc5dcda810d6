"""Writing outputs so that a failed step leaves nothing behind: atomic files and folders, deterministic
tarballs, scratch folders, and the leftovers of a killed run.

- Outputs appear whole or not at all (written beside their place and renamed into it).
- Tarballs are deterministic (sorted members, fixed mtimes and owners, gzip mtime 0), so a pipeline tool sees
  unchanged stages as unchanged.
- A write that fails for lack of space, quota or a writable file system is one line naming what was
  being written (`writing`), never a temp name the user cannot find.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import json
import logging
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
from typing import Iterator, Optional, Tuple

from deeplab.errors import UserError

log = logging.getLogger('steps')

# Fixed member metadata: the same content always gives the same bytes.
_MTIME = 0


_GZIP_LEVEL = 6


# Write failures the user fixes outside the step (free space, raise a quota, mount read-write), by
# errno; each ends the step with `error: <reason> writing <path>`. Not EACCES: a folder the step
# cannot write in is refused before any work (check_output), and mid-run it more likely comes from
# reading an input.
_WRITE_FAILURES = {errno.ENOSPC: 'no space left on device', errno.EDQUOT: 'disk quota exceeded',
                   errno.EROFS: 'read-only file system'}


# TensorFlow names a file it failed to save as '<path>.tempstate<digits>' before renaming it.
_TF_TEMP_SUFFIX = re.compile(r'\.tempstate\d+$')


def write_failure(error: BaseException) -> Optional[Tuple[str, Optional[str]]]:
  """(reason, path the system names or None) when `error` is one of _WRITE_FAILURES, else None.
  TensorFlow's file errors carry no errno but the C library's message after the path:
  '<path>; No space left on device'."""
  if isinstance(error, OSError):
    reason = _WRITE_FAILURES.get(error.errno)
    return (reason, error.filename) if reason else None
  tf_errors = sys.modules.get('tensorflow.python.framework.errors_impl')  # loaded if TF is
  if tf_errors is None or not isinstance(error, tf_errors.OpError):
    return None
  for code, reason in _WRITE_FAILURES.items():
    for line in error.message.splitlines():
      path, found, _ = line.rpartition(f'; {os.strerror(code)}')
      if found:
        return reason, _TF_TEMP_SUFFIX.sub('', path.strip()) or None
  return None


@contextlib.contextmanager
def writing(target: str, staging: Optional[str] = None) -> Iterator[None]:
  """Turns a write failure in the block (no space, quota, read-only file system; an OSError or
  TensorFlow's error for it) into one UserError line: `<reason> writing <target>`.

  With `staging` (the folder that becomes `target`), a failing file the system names under
  `staging` is named at its place under `target` instead: never a temp name the user cannot find.
  """
  try:
    yield
  except Exception as e:
    failure = write_failure(e)
    if failure is None:
      raise
    reason, path = failure
    if staging and path and is_inside(os.path.abspath(path), os.path.abspath(staging)):
      target = os.path.join(target, os.path.relpath(path, staging))
    raise UserError(f'{reason} writing {target}') from None


def temp_folder_named(what: str) -> str:
  """How a write failure in a scratch folder is named: the temp folder, which the user can move."""
  return (f'{tempfile.gettempdir()} (the temp folder, {what}; free space there or set TMPDIR to '
          'a larger folder)')


def is_inside(path: str, folder: str) -> bool:
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


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


# Partial files and scratch folders carry the host and pid of the run that made them, so that a run
# killed with SIGKILL (no cleanup possible) is recognised and its leftovers removed by the next run:
# `.<output name>.<host>.<pid>.<random>.partial` beside the output, `deeplab-<kind>-<host>.<pid>-*`
# in the temp folder. Only leftovers of this host whose process is gone are removed.
_HOST = re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname())[:32] or 'host'


_OWNER = f'{_HOST}.{os.getpid()}'


def _is_stale(owner: str) -> bool:
  host, _, pid = owner.rpartition('.')
  if host != _HOST or not pid.isdigit() or int(pid) == os.getpid():
    return False
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # alive, another user's
    return False
  return False


def _remove_stale(folder: str, pattern: 're.Pattern') -> None:
  with contextlib.suppress(OSError):
    for name in os.listdir(folder):
      match = pattern.fullmatch(name)
      if match and _is_stale(match.group('owner')):
        path = os.path.join(folder, name)
        log.info('removing %s, left by an interrupted run', path)
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path, ignore_errors=True)
        else:
          with contextlib.suppress(OSError):
            os.remove(path)


def _partial_pattern(base: str) -> 're.Pattern':
  """The names of the partial files or folders of output `base` (see _OWNER)."""
  return re.compile(r'\.' + re.escape(base) + r'\.(?P<owner>[^.]+\.\d+)\.[^.]+\.partial')


@contextlib.contextmanager
def _parent_folder(folder: str) -> Iterator[None]:
  """Creates `folder` and its missing parents for the block; when the block fails, removes the
  ones it created that are still empty: a failed step leaves no folder behind either."""
  created = []
  missing = os.path.abspath(folder)
  while not os.path.exists(missing):
    created.append(missing)  # deepest first
    missing = os.path.dirname(missing)
  os.makedirs(folder, exist_ok=True)
  try:
    yield
  except BaseException:
    for path in created:
      with contextlib.suppress(OSError):  # not empty: another output of the step is in it
        os.rmdir(path)
    raise


@contextlib.contextmanager
def atomic_output(out_path: str, mode: str = 'wb'):
  """A file object whose content appears at `out_path` only once the block completes.

  Written to a temp file beside `out_path` and renamed into place; on any failure the temp file
  is removed, so a failed step never leaves a partial artifact. A failed write (a full disk) in
  the block is named as writing `out_path` (see `writing`).
  """
  out_dir = os.path.dirname(os.path.abspath(out_path))
  with writing(out_path), _parent_folder(out_dir):
    base = os.path.basename(out_path)
    _remove_stale(out_dir, _partial_pattern(base))
    fd, tmp_path = tempfile.mkstemp(prefix=f'.{base}.{_OWNER}.', suffix='.partial', dir=out_dir)
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


@contextlib.contextmanager
def atomic_folder(out_path: str) -> Iterator[str]:
  """A folder to fill that replaces `out_path` (a folder, or nothing yet) only once the block completes.

  Filled beside `out_path` (same file system) and renamed into place; on any failure it is removed
  and whatever `out_path` held before stays, so a failed step never leaves a half-written folder.
  A failed write (a full disk) in the block is named at its place under `out_path` (see `writing`).
  """
  out_dir = os.path.dirname(os.path.abspath(out_path))
  with _parent_folder(out_dir):
    with writing(out_path):
      base = os.path.basename(os.path.normpath(out_path))
      _remove_stale(out_dir, _partial_pattern(base))
      staging = tempfile.mkdtemp(prefix=f'.{base}.{_OWNER}.', suffix='.partial', dir=out_dir)
    try:
      with writing(out_path, staging):
        yield staging
      os.chmod(staging, 0o755)  # mkdtemp folders are 0700; artifacts are read by other users
      if os.path.isdir(out_path):
        # A folder cannot be renamed over a non-empty one: the old one goes aside first.
        old = staging[:-len('.partial')] + '-replaced.partial'
        os.rename(out_path, old)
        os.rename(staging, out_path)
        shutil.rmtree(old, ignore_errors=True)
      else:
        os.rename(staging, out_path)
    except BaseException:
      shutil.rmtree(staging, ignore_errors=True)
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


def dump_json(obj, f) -> None:
  """Writes `obj` to text file `f` as sorted, indented JSON (every JSON file the steps write)."""
  json.dump(obj, f, indent=2, sort_keys=True)
  f.write('\n')


def write_json_atomic(obj, out_path: str) -> str:
  """Writes `obj` as sorted, indented JSON to `out_path` atomically."""
  with atomic_output(out_path, 'w') as f:
    dump_json(obj, f)
  return out_path


_SCRATCH_RE = re.compile(r'deeplab-[a-z]+-(?P<owner>[^.]+\.\d+)-[^.]+')


@contextlib.contextmanager
def scratch_dir(kind: str, assembling: str = '') -> Iterator[str]:
  """A folder in the temp folder for an artifact's contents or an extracted input, removed
  afterwards whatever happens (and by a later run, should this one be killed).

  With `assembling` (what the block writes there, e.g. 'the TFRecords'), a write failure in the
  block that no inner `writing` named is named as the temp folder's: give it only to a block whose
  other writes go through `atomic_output` (the artifact itself) or `writing`.
  """
  _remove_stale(tempfile.gettempdir(), _SCRATCH_RE)
  where = temp_folder_named(f'assembling {assembling}' if assembling else f'a folder for the {kind}')
  with writing(where):
    path = tempfile.mkdtemp(prefix=f'deeplab-{kind}-{_OWNER}-')
  try:
    with writing(where) if assembling else contextlib.nullcontext():
      yield path
  finally:
    shutil.rmtree(path, ignore_errors=True)
