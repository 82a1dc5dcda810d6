"""Reading inputs: a folder, or an archive from anywhere extracted safely.

An input flag names a folder, a `.tar` (any compression) / `.zip` archive, or a suffix-less path (as
some orchestrators pass artifacts); archives are recognised by content. Every member is checked before the
first byte is written: links of any kind, devices and fifos, absolute names and `..` are refused,
tar members also pass Python's `data` extraction filter, and the total size is bounded. Paths named
inside an input's files are contained by deeplab/containment.py.
"""
from __future__ import annotations

import contextlib
import lzma
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from typing import Callable, Iterator, Optional

from deeplab.errors import UserError
from steps.files import scratch_dir, temp_folder_named, writing

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


def delivered_file(path: str, accepts: Callable[[str], bool]) -> Optional[str]:
  """The file input `path` names, if `accepts` it: `path` itself, or the one entry of a folder that
  holds nothing else (how orchestrators deliver a file input); else None."""
  if os.path.isdir(path):
    entries = [e for e in os.listdir(path) if not e.startswith('.')]
    if len(entries) != 1:
      return None
    path = os.path.join(path, entries[0])
  return path if os.path.isfile(path) and accepts(path) else None


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
    with writing(temp_folder_named(f'extracting {archive}')):
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

  A folder holding exactly one archive (how orchestrators deliver a tarball input) is extracted.
  With `marker` (e.g. 'dataset.json'), a single wrapping folder inside the content is looked through,
  so `tar czf x.tgz mydir/` works as well as archives made by the steps. An error about a file in
  the extraction folder names it inside the user's archive instead (the folder is gone by then).
  """
  with scratch_dir('input') as tmp:
    root = delivered_file(path, is_archive) or path
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
