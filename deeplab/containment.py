"""Paths named inside an input stay inside it.

Inputs name other files: a split list names example ids (VOC `ImageSets/Segmentation/train.txt`,
a folder layout's `splits/*.txt`), `dataset.json` names its shards, a checkpoint's `checkpoint`
index and `model.json` name its TF checkpoint prefix, and a layout joins what it lists into image
and label paths. Such a name is a path relative to the input's folder; read from a hostile input it
could be absolute (`os.path.join` then drops the folder), climb out with `..`, or go through a
symbolic link that leads out of the folder. Any of those would make a step read a file the input
does not hold, and pack its bytes into an artifact.

`check_name` refuses a name that is not a plain relative path; `resolve` also follows symbolic
links and refuses a path whose real location leaves the folder. Both raise a UserError naming the
file the name was read from, the line when there is one, and the name.
"""
from __future__ import annotations

import os
from typing import Optional

from deeplab.errors import UserError


def _where(source: str, line: Optional[int]) -> str:
  return f'{source}, line {line}' if line is not None else source


def check_name(name, source: str, line: Optional[int] = None) -> None:
  """Refuses `name`, read from `source` (at `line`), unless it is a non-empty relative path
  without `..` components."""
  if name is None:
    problem = 'is missing'
  elif not isinstance(name, str):
    problem = 'is not a text path'
  elif not name:
    problem = 'is empty'
  elif '\0' in name:
    problem = 'holds a NUL byte'
  elif os.path.isabs(name):
    problem = 'is an absolute path'
  elif '..' in name.split(os.sep):
    problem = "has a '..' component"
  else:
    return
  raise UserError(f'{_where(source, line)}: entry {name!r} {problem}; expected a path relative to '
                  'the folder of the input, inside it')


def resolve(root: str, name, source: str, line: Optional[int] = None) -> str:
  """`root`/`name`, where `name` was read from `source` (at `line`), once it is known to lie
  inside `root`: `check_name`, and its real location (symbolic links followed) inside the real
  location of `root`. The path need not exist."""
  check_name(name, source, line)
  path = os.path.join(root, name)
  real_root, real = os.path.realpath(root), os.path.realpath(path)
  if os.path.commonpath([real_root, real]) != real_root:
    raise UserError(f'{_where(source, line)}: entry {name!r} leads outside {root}: {path} is '
                    f'really {real} (through a symbolic link); expected files inside the input '
                    '(links out of it are refused)')
  return path
