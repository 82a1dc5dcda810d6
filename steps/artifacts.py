"""The step contract: where inputs and outputs live, tarball artifacts, JSON metric lines.

- An input flag names a directory, a `.tar`/`.tar.gz`/`.zip` archive, or a suffix-less path (as
  Kubeflow passes artifacts); archives are recognised by content and extracted safely. When the flag
  is absent the input is the Valohai input folder of that name (valohai-utils' local folder off
  Valohai).
- Outputs are deterministic tarballs (sorted members, fixed mtimes and owners, gzip mtime 0) so that
  DVC sees unchanged stages as unchanged, written atomically (temp file + rename) so that a failed
  step never leaves a partial artifact.
- Metrics are one JSON object per stdout line, flushed; logs go to stderr.
- A write that fails for lack of space (or quota, or on a read-only file system) ends the step with
  one line naming what was being written (`writing`), never a traceback, and removes the partial
  output like any other failure.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import json
import logging
import lzma
import math
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tarfile
import tempfile
import traceback
import zipfile
import zlib
from typing import TYPE_CHECKING, Callable, ClassVar, Iterator, Optional, Tuple

from deeplab.errors import UserError

if TYPE_CHECKING:
  from deeplab.checkpoint import ModelCard

log = logging.getLogger('steps')

# Fixed member metadata: the same content always gives the same bytes.
_MTIME = 0
_GZIP_LEVEL = 6


def setup_logging() -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's C++ banner off stderr
  logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                      format='%(asctime)s %(name)s %(levelname)s %(message)s')
  logging.getLogger('tensorflow').setLevel(logging.ERROR)  # tf.compat.v1 deprecation notices


class Interrupted(BaseException):
  """SIGTERM or SIGINT arrived: unwinds the step so every `with` removes what it was writing."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def _raise_interrupted(signum, frame):
  raise Interrupted(signum)


def run_step(main: Callable[[], None]) -> None:
  """Runs a step's main(): one clear line and exit 1 on bad input, exit 1 with traceback on a bug.

  SIGTERM and SIGINT end the step with `error: interrupted` and exit 128 + the signal number, after
  its partial output, staging and extraction folders are removed (a step may install its own
  handler instead, as train does to save a checkpoint first).
  """
  setup_logging()
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, _raise_interrupted)
  try:
    main()
  except UserError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  except Interrupted as e:
    print(f'error: interrupted ({e}); partial outputs removed', file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except Exception as e:
    failure = _write_failure(e)
    if failure:  # a full disk, outside the places `writing` names: the system's path, if any
      reason, path = failure
      print(f'error: {reason} writing {path or "a file the system did not name"}',
            file=sys.stderr, flush=True)
      sys.exit(1)
    # A bug: keep the traceback, but end with one line that names it.
    traceback.print_exc()
    print(f'error: unexpected {type(e).__name__}: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


def emit_metrics(**values) -> None:
  """Prints one JSON metric line on stdout (Valohai metadata; DVC/KFP glue parse the same lines).

  JSON has no NaN or infinity: such a value is printed as the string "nan", "inf" or "-inf" (so it
  is not mistaken for a missing value) and named in a warning on stderr.
  """
  clean = {}
  for key, value in values.items():
    if hasattr(value, 'item'):  # numpy scalar
      value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
      log.warning('metric %s is %s', key, value)
      value = str(value)
    clean[key] = value
  print(json.dumps(clean, sort_keys=False), flush=True)


def stderr_is_terminal() -> bool:
  """Whether progress is shown: only to a person at a terminal, never into CI or Valohai logs."""
  return sys.stderr.isatty()


def progress_bar(total: Optional[int], unit: str, description: str, delay: float = 3.0):
  """A tqdm progress bar on stderr, shown only when `stderr_is_terminal()` and only once the run has
  lasted `delay` seconds (short runs print nothing). Metric lines printed while it shows go through
  `bar.external_write_mode()`, so the bar does not cut them."""
  from tqdm import tqdm
  return tqdm(total=total, unit=unit, desc=description, delay=delay, file=sys.stderr,
              disable=not stderr_is_terminal(), dynamic_ncols=True)


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


def output_location(step: str, name: str, flag: Optional[str], filename: str, inputs: dict) -> str:
  """The file path of output `name`: the flag if given (a folder gets `filename`), else Valohai's.

  Checked before the step does any work (see `check_output`) against `inputs`, the step's input
  flags and the paths they resolved to.
  """
  if flag:
    path = os.path.join(flag, filename) if flag.endswith(os.sep) or os.path.isdir(flag) else flag
  else:
    path = os.path.join(_valohai_paths(step).get_outputs_path(), filename)
  return check_output(name, path, inputs)


# ----------------------------------------------------------------------------- reading inputs

# Extraction bound: an archive may not expand to more than the free space of the folder it is
# extracted into, less this margin, nor more than DEEPLAB_MAX_EXTRACT_BYTES when that is set.
MAX_EXTRACT_ENV = 'DEEPLAB_MAX_EXTRACT_BYTES'
FREE_SPACE_MARGIN = 1 << 30
# What a tar member may be; everything else (links, devices, fifos) is refused by name.
_TAR_KINDS = (('issym', 'a symbolic link'), ('islnk', 'a hard link'), ('ischr', 'a device'),
              ('isblk', 'a device'), ('isfifo', 'a fifo'))
# The errors a damaged archive raises while it is read (zlib, bz2, lzma, tar and zip framing).
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, KeyError,
                   ValueError, lzma.LZMAError)


def is_archive(path: str) -> bool:
  try:
    return os.path.isfile(path) and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))
  except _ARCHIVE_ERRORS:
    return False


def extraction_limit(dest: str) -> int:
  """How many bytes an archive may expand to in `dest` (see MAX_EXTRACT_ENV)."""
  existing = os.path.abspath(dest)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  limit = shutil.disk_usage(existing).free - FREE_SPACE_MARGIN
  configured = os.environ.get(MAX_EXTRACT_ENV, '').strip()
  if configured:
    try:
      limit = min(limit, int(configured))
    except ValueError:
      raise UserError(f'{MAX_EXTRACT_ENV}={configured!r}: expected a number of bytes') from None
  return max(limit, 0)


def _refuse(archive: str, member: str, why: str):
  raise UserError(f'{archive}: member {member!r} {why}; refusing to extract '
                  '(input archives may hold regular files and folders only)')


def _too_large(archive: str, limit: int, dest: str):
  raise UserError(f'{archive}: expands to more than {limit} bytes; refusing to extract (the bound '
                  f'is the free space in {os.path.dirname(dest)} less {FREE_SPACE_MARGIN >> 30} GiB, '
                  f'or {MAX_EXTRACT_ENV}; raise it or free space to accept this archive)')


def _member_parts(archive: str, name: str) -> list:
  """The path components of archive member `name`; refuses absolute names and `..`."""
  normalized = name.replace('\\', '/')
  if normalized.startswith('/') or re.match(r'^[A-Za-z]:', normalized) or '\0' in normalized:
    _refuse(archive, name, 'has an absolute path')
  parts = [p for p in normalized.split('/') if p not in ('', '.')]
  if '..' in parts:
    _refuse(archive, name, 'points outside the archive (..)')
  return parts


def _extract_zip(archive: str, dest: str, limit: int) -> None:
  with zipfile.ZipFile(archive) as zf:
    infos = zf.infolist()
    declared = 0
    for info in infos:  # every member is checked before anything is written
      _member_parts(archive, info.filename)
      kind = stat.S_IFMT(info.external_attr >> 16)
      if kind not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: written by a tool without Unix modes
        _refuse(archive, info.filename, 'is a symbolic link' if kind == stat.S_IFLNK
                else 'is a device, fifo or other special file')
      declared += info.file_size
      if declared > limit:
        _too_large(archive, limit, dest)
    # zipfile reads no more than each member's declared size (a longer stream fails its CRC), so
    # the declared total bounds what is written.
    zf.extractall(dest)


def _extract_tar(archive: str, dest: str, limit: int) -> None:
  with tarfile.open(archive) as tf:
    members, declared = [], 0
    for member in tf:  # every member is checked before anything is written
      _member_parts(archive, member.name)
      for test, what in _TAR_KINDS:
        if getattr(member, test)():
          _refuse(archive, member.name, f'is {what}')
      if not (member.isfile() or member.isdir()) or member.issparse():
        _refuse(archive, member.name, 'is not a regular file or folder')
      try:
        tarfile.data_filter(member, dest)
      except tarfile.FilterError as e:
        _refuse(archive, member.name, f'is unsafe ({type(e).__name__}: {e})')
      declared += member.size  # a regular tar member writes exactly its size
      if declared > limit:
        _too_large(archive, limit, dest)
      members.append(member)
    tf.extractall(dest, members=members, filter='data')


def safe_extract(archive: str, dest: str) -> None:
  """Extracts a tar (any compression) or zip archive of regular files and folders into `dest`.

  Every member is checked before the first byte is written: links of any kind, devices and fifos,
  absolute names and `..` are refused with the member's name (tar members also pass through
  Python's `data` extraction filter), and the archive may not expand beyond `extraction_limit`.
  """
  limit = extraction_limit(dest)
  try:
    with writing(_temp_folder(f'extracting {archive}')):
      if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest, limit)
      else:
        _extract_tar(archive, dest, limit)
  except UserError:
    raise
  except _ARCHIVE_ERRORS as e:
    raise UserError(f'{archive}: not a readable archive ({type(e).__name__}: {e})') from None


@contextlib.contextmanager
def open_input(path: str, marker: Optional[str] = None) -> Iterator[str]:
  """Yields a directory with the contents of input `path` (a folder or an archive).

  A folder holding exactly one archive (how Valohai and DVC deliver a tarball input) is extracted.
  With `marker` (e.g. 'dataset.json'), a single wrapping folder inside the content is looked through,
  so `tar czf x.tgz mydir/` works as well as archives made by the steps. An error about a file in
  the extraction folder names it inside the user's archive instead (the folder is gone by then).
  """
  with scratch_dir('input') as tmp:
    root = path
    if os.path.isdir(path):
      entries = [e for e in os.listdir(path) if not e.startswith('.')]
      if len(entries) == 1 and is_archive(os.path.join(path, entries[0])):
        root = os.path.join(path, entries[0])
    archive = root
    if os.path.isfile(root):
      if not is_archive(root):
        raise UserError(f'{root}: expected a folder or a .tar/.tar.gz/.zip archive, '
                        'got a file of another kind')
      safe_extract(root, tmp)
      root = tmp
    if marker:
      root = find_root(root, marker)
    try:
      yield root
    except UserError as e:
      if tmp not in str(e):
        raise
      raise UserError(str(e).replace(tmp, archive)) from None


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

# Write failures the user fixes outside the step (free space, raise a quota, mount read-write), by
# errno; each ends the step with `error: <reason> writing <path>`. Not EACCES: a folder the step
# cannot write in is refused before any work (check_output), and mid-run it more likely comes from
# reading an input.
_WRITE_FAILURES = {errno.ENOSPC: 'no space left on device', errno.EDQUOT: 'disk quota exceeded',
                   errno.EROFS: 'read-only file system'}
# TensorFlow names a file it failed to save as '<path>.tempstate<digits>' before renaming it.
_TF_TEMP_SUFFIX = re.compile(r'\.tempstate\d+$')


def _write_failure(error: BaseException) -> Optional[Tuple[str, Optional[str]]]:
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
    failure = _write_failure(e)
    if failure is None:
      raise
    reason, path = failure
    if staging and path and _inside(os.path.abspath(path), os.path.abspath(staging)):
      target = os.path.join(target, os.path.relpath(path, staging))
    raise UserError(f'{reason} writing {target}') from None


def _temp_folder(what: str) -> str:
  """How a write failure in a scratch folder is named: the temp folder, which the user can move."""
  return (f'{tempfile.gettempdir()} (the temp folder, {what}; free space there or set TMPDIR to '
          'a larger folder)')


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
def atomic_output(out_path: str, mode: str = 'wb'):
  """A file object whose content appears at `out_path` only once the block completes.

  Written to a temp file beside `out_path` and renamed into place; on any failure the temp file
  is removed, so a failed step never leaves a partial artifact. A failed write (a full disk) in
  the block is named as writing `out_path` (see `writing`).
  """
  with writing(out_path):
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
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
  with writing(out_path):
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
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
  where = _temp_folder(f'assembling {assembling}' if assembling else f'a folder for the {kind}')
  with writing(where):
    path = tempfile.mkdtemp(prefix=f'deeplab-{kind}-{_OWNER}-')
  try:
    with writing(where) if assembling else contextlib.nullcontext():
      yield path
  finally:
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- checking outputs

def _inside(path: str, folder: str) -> bool:
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output(flag: str, out_path: str, inputs: dict) -> str:
  """Refuses, before any work, an output that would destroy an input or cannot be written.

  `inputs` maps flag names to the paths given (None for absent ones). The output may not be the
  same file as an input nor lie inside an input folder; its folder, or the nearest existing parent
  it will be created in, must be a writable folder (tried by creating and removing a hidden file).
  Returns `out_path`.
  """
  real_out = os.path.realpath(out_path)
  for name, path in inputs.items():
    if not path:
      continue
    real_in = os.path.realpath(path)
    same = os.path.exists(out_path) and os.path.exists(path) and os.path.samefile(out_path, path)
    if same or _inside(real_out, real_in):
      raise UserError(f'--{flag}={out_path} {"is" if same or real_out == real_in else "lies inside"} '
                      f'the input --{name}={path}; refusing to overwrite an input, choose another output')
  if os.path.isdir(out_path):
    raise UserError(f'--{flag}={out_path} is a folder; expected a file path for the artifact')
  folder = os.path.dirname(os.path.abspath(out_path))
  ancestor = folder
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise UserError(f'--{flag}={out_path}: {ancestor} is a file, not a folder; expected a path '
                    'whose parents are folders')
  try:  # in the output folder, or where it will be created: nothing is left behind either way
    fd, probe = tempfile.mkstemp(prefix='.deeplab-write-test-', dir=ancestor)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise UserError(f'--{flag}={out_path}: cannot write in {ancestor} ({e.strerror}); expected a '
                    'writable folder') from None
  return out_path


# ----------------------------------------------------------------------------- typed artifacts
# Each artifact kind a step reads or writes: where its contents come from, what they must hold,
# and how they are packed. Steps use these, never each other.

def _open_artifact(stack: contextlib.ExitStack, path: str, marker: str, kind: str,
                   made_by: str) -> str:
  """The folder of an artifact input holding `marker`; another kind of artifact is named as such."""
  folder = stack.enter_context(open_input(path, marker=marker))
  if os.path.exists(os.path.join(folder, marker)):
    return folder
  found = next((what for name, what in _ARTIFACT_MARKERS if os.path.exists(os.path.join(folder, name))),
               'no artifact of this project')
  raise UserError(f'{path} holds {found}, not {kind}; expected the output of the {made_by} step')


# What tells the kinds apart, most specific first: a model holds a model.json too.
_ARTIFACT_MARKERS = (('frozen_inference_graph.pb', 'an exported model'),
                     ('saved_model', 'an exported model'), ('model.tflite', 'an exported model'),
                     ('model.json', 'a checkpoint'),
                     ('dataset.json', 'TFRecords (dataset.json)'))


class TFRecords:
  """tfrecords.tar.gz of build_data (shards + dataset.json), or a folder of original DeepLab shards
  (then `dataset` names the dataset they hold)."""
  filename = 'tfrecords.tar.gz'

  @staticmethod
  def open(stack: contextlib.ExitStack, path: str, dataset: str = ''):
    """The dataset Manifest, its shards in a folder that lives as long as `stack`."""
    from deeplab.datasets.manifest import MANIFEST_NAME, load_dataset
    return load_dataset(stack.enter_context(open_input(path, marker=MANIFEST_NAME)), dataset)

  @staticmethod
  def write(staging: str, out_path: str) -> str:
    return write_tarball(staging, out_path)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """checkpoint.tar.gz of train: model.json + a TF checkpoint (relative index) + TensorBoard events."""
  card: 'ModelCard'
  prefix: str  # the TF checkpoint prefix inside the opened folder
  filename: ClassVar[str] = 'checkpoint.tar.gz'

  @classmethod
  def open(cls, stack: contextlib.ExitStack, path: str) -> 'Checkpoint':
    from deeplab import checkpoint
    folder = _open_artifact(stack, path, checkpoint.MODEL_JSON, 'a checkpoint', 'train')
    return cls(checkpoint.ModelCard.read(folder), checkpoint.resolve_checkpoint_path(folder))

  @staticmethod
  def write(out_path: str, prefix: str, events_dir: str, card: 'ModelCard') -> str:
    """Packs checkpoint `prefix` (a path), the events in `events_dir` and `card`."""
    from deeplab import checkpoint
    with scratch_dir('checkpoint', 'the checkpoint') as staging:
      name = os.path.basename(prefix)
      for filename in os.listdir(os.path.dirname(prefix)):
        if filename.startswith(name + '.'):
          shutil.copy2(os.path.join(os.path.dirname(prefix), filename), staging)
      for filename in os.listdir(events_dir):
        if filename.startswith('events.out.tfevents'):
          shutil.copy2(os.path.join(events_dir, filename), staging)
      checkpoint.write_index(staging, name)
      dataclasses.replace(card, checkpoint=name).write(staging)
      return write_tarball(staging, out_path)


@dataclasses.dataclass(frozen=True)
class Model:
  """model.tar.gz of export: model.json + the formats asked for (frozen_inference_graph.pb,
  saved_model/, model.tflite)."""
  card: 'ModelCard'
  folder: str
  filename: ClassVar[str] = 'model.tar.gz'

  @classmethod
  def open(cls, stack: contextlib.ExitStack, path: str) -> 'Model':
    from deeplab import checkpoint, inference
    folder = _open_artifact(stack, path, checkpoint.MODEL_JSON, 'an exported model', 'export')
    if not any(inference.find_models(folder).values()):
      found = 'a checkpoint' if any(n.endswith('.index') for n in os.listdir(folder)) else 'no model'
      raise UserError(f'{path} holds {found}, not an exported model; expected the output of the '
                      'export step')
    return cls(checkpoint.ModelCard.read(folder), folder)

  def load(self, model_format: str = 'auto'):
    """The model of `model_format` ('auto': the first format the folder holds), with
    `predict(image uint8 [H, W, 3]) -> labels int32 [H, W]` and `close()`."""
    from deeplab import inference
    found, path = inference.find_model(self.folder, None if model_format == 'auto' else model_format)
    return inference.load_model(path, found)

  @staticmethod
  def write(out_path: str, card: 'ModelCard', fill: Callable[[str], None]) -> str:
    """Packs `card` and what `fill(folder)` writes into the folder (the model files)."""
    with scratch_dir('model', 'the model') as staging:
      fill(staging)
      card.write(staging)
      return write_tarball(staging, out_path)


class Predictions:
  """predictions.tar.gz of predict: `labels/<name>.png` (class ids) + `overlays/<name>.jpg` (or
  `.png`: `overlay_format`), filled one image at a time in a scratch folder that lives as long as
  `stack`; `add` may be called from several threads."""
  filename = 'predictions.tar.gz'

  def __init__(self, stack: contextlib.ExitStack, overlay_format: str):
    self.staging = stack.enter_context(scratch_dir('predictions', 'the predictions'))
    self.overlay_format = overlay_format

  def add(self, name: str, labels, overlay) -> None:
    from deeplab import visualize
    visualize.save_label_png(labels, self._path('labels', name, '.png'))
    visualize.write_overlay(
        overlay, self._path('overlays', name, visualize.OVERLAY_SUFFIXES[self.overlay_format]),
        self.overlay_format)

  def _path(self, kind: str, name: str, suffix: str) -> str:
    path = os.path.join(self.staging, kind, name + suffix)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path

  def write(self, out_path: str) -> str:
    return write_tarball(self.staging, out_path)
