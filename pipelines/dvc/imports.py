"""The repository's Python files a module runs: the closure of its imports, read statically (`ast`).

A DVC stage depends on these files, so that editing a module re-runs exactly the stages whose
commands import it. Every import statement counts, wherever it is (a function-level import runs
when the function does); importing `a.b.c` runs the packages `a` and `a.b` too. Only modules of the
repository count (a file or a package folder under the root); third-party imports are left out.

`importlib.import_module(f'package.{name}')` (a registry picking a module by name) counts as
importing every module of `package`, the modules it can reach; `__name__` at the start of the
f-string is the importing module's name. A dynamic import whose package cannot be read this way is
an error, not a silently missing dependency.
"""
from __future__ import annotations

import ast
import os
from typing import Iterator, List, Optional

# importlib.import_module(name) and __import__(name), however importlib was imported.
_DYNAMIC_IMPORTS = {'import_module', '__import__'}


class Modules:
  """The modules of the repository at `root`."""

  def __init__(self, root: str):
    self.root = root
    self._imports = {}

  def _path(self, name: str) -> str:
    return os.path.join(self.root, *name.split('.'))

  def is_package(self, name: str) -> bool:
    """A folder of the repository (namespace packages, without __init__.py, included)."""
    return bool(name) and os.path.isdir(self._path(name))

  def file(self, name: str) -> Optional[str]:
    """The file a module of the repository runs, relative to the root; None for a namespace package
    or a module that is not the repository's."""
    for candidate in (self._path(name) + '.py', os.path.join(self._path(name), '__init__.py')):
      if os.path.isfile(candidate):
        return os.path.relpath(candidate, self.root)
    return None

  def exists(self, name: str) -> bool:
    return self.file(name) is not None or self.is_package(name)

  def closure(self, entry_modules) -> List[str]:
    """The sorted repository files (relative to the root) that running `entry_modules` can import."""
    seen, files, pending = set(), set(), list(entry_modules)
    while pending:
      name = pending.pop()
      if name in seen:
        continue
      seen.add(name)
      parts = name.split('.')
      pending += ['.'.join(parts[:i]) for i in range(1, len(parts))]  # the packages above it run first
      path = self.file(name)
      if path is None:
        if not self.is_package(name):
          raise ValueError(f'{name} is not a module of the repository')
        continue
      files.add(path)
      pending += self.imports_of(name)
    return sorted(files)

  def imports_of(self, name: str) -> List[str]:
    """The repository modules module `name` imports (read once per Modules)."""
    if name not in self._imports:
      path = self.file(name)
      with open(os.path.join(self.root, path), encoding='utf-8') as f:
        self._imports[name] = imported_modules(self, name, f.read(), path)
    return self._imports[name]

  def package_modules(self, package: str) -> Iterator[str]:
    """Every module under the package `package`, its subpackages' included."""
    top = self._path(package)
    for folder, subfolders, files in os.walk(top):
      subfolders[:] = sorted(d for d in subfolders if d != '__pycache__')
      relative = os.path.relpath(folder, top)
      prefix = '.'.join([package] + ([] if relative == os.curdir else relative.split(os.sep)))
      for name in sorted(files):
        if name.endswith('.py'):
          yield prefix if name == '__init__.py' else f'{prefix}.{name[:-3]}'


def _dynamic_prefix(argument: ast.expr, module: str) -> Optional[str]:
  """The constant start of a dynamic import's module name (`__name__` read as `module`)."""
  if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
    return argument.value
  if not isinstance(argument, ast.JoinedStr):
    return None
  prefix = ''
  for part in argument.values:
    if isinstance(part, ast.Constant):
      prefix += part.value
    elif isinstance(part.value, ast.Name) and part.value.id == '__name__':
      prefix += module
    else:
      return prefix + '\0'  # marks the computed rest
  return prefix


def imported_modules(modules: Modules, module: str, source: str, filename: str) -> List[str]:
  """The repository modules that the import statements and dynamic imports of `source` name."""
  is_package = os.path.basename(filename) == '__init__.py'
  package = module if is_package else module.rpartition('.')[0]
  found = []
  for node in ast.walk(ast.parse(source, filename)):
    if isinstance(node, ast.Import):
      found += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        anchor = '.'.join(parts[:len(parts) - node.level + 1])
        base = f'{anchor}.{base}' if base else anchor
      found.append(base)
      found += [f'{base}.{alias.name}' for alias in node.names if modules.exists(f'{base}.{alias.name}')]
    elif isinstance(node, ast.Call) and _DYNAMIC_IMPORTS & {getattr(node.func, 'attr', None),
                                                             getattr(node.func, 'id', None)}:
      found += _dynamic_targets(modules, node, module, filename)
  return [name for name in found if modules.exists(name)]


def _dynamic_targets(modules: Modules, call: ast.Call, module: str, filename: str) -> List[str]:
  """The modules a dynamic import can import: the one named, or every module of its package."""
  prefix = _dynamic_prefix(call.args[0], module) if call.args and not call.keywords else None
  if prefix is not None and '\0' not in prefix:
    return [prefix]
  known = (prefix or '').partition('\0')[0]
  package = known.rpartition('.')[0]
  if modules.is_package(package):
    return list(modules.package_modules(package))
  if not known or modules.exists(known.split('.')[0]):
    raise ValueError(f'{filename}:{call.lineno}: cannot tell which modules this dynamic import can import')
  return []  # a third-party package's module
