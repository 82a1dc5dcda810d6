"""What every dataset layout is made of: the records a scan yields, the base class, and the
file-pairing helpers the layouts share.

A layout class knows its dataset's classes (names, colormap, ignore label) and how to find the
dataset's splits and examples in a raw folder; it never reads image or label pixels.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from deeplab import containment
from deeplab.errors import UserError


@dataclasses.dataclass(frozen=True)
class Example:
  """One raw example: its split, id and the paths of its image and label files."""
  split: str
  id: str
  image: str
  label: str


@dataclasses.dataclass(frozen=True)
class Problem:
  """An example that cannot be built, found while pairing files (before reading them)."""
  split: str
  id: str
  message: str  # one line naming the file


class Dataset:
  """A dataset's classes and raw layout; subclasses define the layout."""
  name = ''
  layout_help = ''  # what `locate` looks for, for the error message
  root_candidates: Tuple[str, ...] = ()  # subfolders of the given path where the root may be
  # What the builder says when a label file is RGB instead of class ids.
  rgb_label_hint = 'expected a single-channel PNG of class ids (mode L, or P with ids as indices)'

  def __init__(self, num_classes: int, ignore_label: int, class_names: Sequence[str],
               colormap: Sequence[Sequence[int]]):
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self.class_names = list(class_names)
    self.colormap = [list(c) for c in colormap]

  def __repr__(self):
    return f'{type(self).__name__}(name={self.name!r}, num_classes={self.num_classes})'

  # Layout: overridden per dataset.
  def _is_root(self, folder: str) -> bool:
    raise NotImplementedError

  def splits(self, root: str) -> List[str]:
    raise NotImplementedError

  def scan(self, root: str, split: str) -> Tuple[List[Example], List[Problem]]:
    raise NotImplementedError

  def label_table(self, label_path: str) -> Optional[np.ndarray]:
    """A uint8[256] lookup from the values stored in `label_path` to class ids; None = identity."""
    del label_path
    return None

  def with_root(self, root: str) -> 'Dataset':
    """This dataset with whatever the root folder says about its classes (folder layout)."""
    del root
    return self

  def locate(self, path: str) -> str:
    """The dataset root inside `path`: itself, a known subfolder, or through single wrapping folders."""
    current = path
    while True:
      for candidate in ('',) + self.root_candidates:
        folder = os.path.join(current, candidate) if candidate else current
        if os.path.isdir(folder) and self._is_root(folder):
          return folder
      entries = [e for e in os.listdir(current) if not e.startswith('.')]
      if len(entries) != 1 or not os.path.isdir(os.path.join(current, entries[0])):
        raise UserError(f'{path}: not a {self.name} dataset; expected {self.layout_help}')
      current = os.path.join(current, entries[0])

  def check_split(self, root: str, split: str) -> None:
    known = self.splits(root)
    if split not in known:
      raise UserError(f'--splits: split {split!r} not found in {root} ({self.name} layout; '
                      f'splits found: {", ".join(known) or "none"})')


# ----------------------------------------------------------------------------- pairing files

def read_id_list(root: str, path: str, split: str) -> Tuple[List[str], List[int]]:
  """Example ids of the split list file `path` in the dataset `root`, the first word of each
  non-empty line, and their line numbers. The list must lie inside the dataset, and so must what
  an id names: one that could lead out of it (absolute, `..`) is refused, naming the line."""
  ids, lines = [], []
  with open(contained_file(root, path), encoding='utf-8') as f:
    try:
      for number, line in enumerate(f, 1):
        if line.strip():
          ids.append(line.split()[0])
          lines.append(number)
          containment.check_name(ids[-1], path, number)
    except UnicodeDecodeError as e:
      raise UserError(f'{path}: not UTF-8 text ({e.reason}); expected one example id per '
                      'line') from None
  if not ids:
    raise UserError(f'{path}: split {split!r} is empty; expected one example id per line')
  return ids, lines


def pair_files(split: str, root: str, ids: Sequence[str],
               image_of: Callable[[str], Optional[str]], label_of: Callable[[str], Optional[str]],
               where: str, expected: Tuple[str, str], lines: Sequence[int] = ()
               ) -> Tuple[List[Example], List[Problem]]:
  """Examples for `ids` in order; missing files and repeated ids become Problems.

  `where` names the id list in messages (`lines`: the line of each id in it, when it is a file);
  `expected` says where an image and a label belong. Every image and label path must lie inside
  the dataset's `root`, symbolic links followed (`containment.resolve`): one that leads out is an
  error, not a Problem to skip.
  """
  examples, problems, seen = [], [], set()
  for index, example_id in enumerate(ids):
    if example_id in seen:
      problems.append(Problem(split, example_id, f'{where}: duplicate id {example_id!r} in split '
                              f'{split!r}; expected each example once'))
      continue
    seen.add(example_id)
    image, label = image_of(example_id), label_of(example_id)
    for path in (image, label):
      if path is not None:
        contained_file(root, path, where, lines[index] if lines else None)
    if image is None:
      problems.append(Problem(split, example_id, f'{where}: no image for id {example_id!r} '
                              f'(split {split!r}); expected it in {expected[0]}'))
    elif label is None:
      problems.append(Problem(split, example_id, f'{image}: label missing (split {split!r}, id '
                              f'{example_id!r}); expected it in {expected[1]}'))
    else:
      examples.append(Example(split, example_id, image, label))
  return examples, problems


def contained_file(root: str, path: str, source: Optional[str] = None,
                   line: Optional[int] = None) -> str:
  """`path`, a file of the dataset `root` (named at `line` of `source`, else found in `root`), once
  its real location is known to be inside the dataset (`containment.resolve`): a symbolic link out
  is refused."""
  return containment.resolve(root, os.path.relpath(path, root), source or root, line)


def existing_file(path: str) -> Optional[str]:
  return path if os.path.isfile(path) else None


_SHARED_SUFFIX_RE = re.compile(r'_[A-Za-z][A-Za-z0-9]*$')


def files_by_stem(folder: str, extensions: Sequence[str], strip_suffix: bool = False
                  ) -> Dict[str, str]:
  """{id: path} of the files in `folder` with one of `extensions` (case-insensitive).

  With `strip_suffix`, a `_word` suffix that every file shares (e.g. `_img`) is not part of the id.
  Two files with the same id (e.g. a.jpg and a.png) make the id ambiguous: it maps to None.
  """
  paths = {}
  for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    stem, ext = os.path.splitext(entry)
    if ext.lower() in extensions and os.path.isfile(os.path.join(folder, entry)):
      paths[entry] = stem
  stems = list(paths.values())
  suffix = ''
  if strip_suffix and stems:
    match = _SHARED_SUFFIX_RE.search(stems[0])
    if match and all(s.endswith(match.group()) and s != match.group() for s in stems):
      suffix = match.group()
  by_id: Dict[str, Optional[str]] = {}
  for entry, stem in paths.items():
    example_id = stem[:len(stem) - len(suffix)]
    by_id[example_id] = None if example_id in by_id else os.path.join(folder, entry)
  return by_id
