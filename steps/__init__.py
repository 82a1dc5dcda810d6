"""Pipeline steps: one thin CLI per step (`python -m steps.<name>`), sharing `flags` and `artifacts`.

Every step enters through this package, so the Python floor is checked here, before any step module
imports anything: safe extraction of input archives relies on tarfile's extraction filters (PEP 706),
which CPython 3.11 gained in 3.11.4. On an older Python a step exits with one line naming the version
it found instead of a traceback at its first archive.
"""
import sys

PYTHON_FLOOR = (3, 11, 4)


def require_python(version_info=sys.version_info) -> None:
  """Exits with status 1 and one `error:` line when `version_info` is older than PYTHON_FLOOR."""
  if tuple(version_info[:3]) < PYTHON_FLOOR:
    found = '.'.join(map(str, version_info[:3]))
    sys.exit(f'error: Python {found} ({sys.executable}) is too old: the steps need Python '
             f'{".".join(map(str, PYTHON_FLOOR))} or newer (tarfile extraction filters)')


require_python()
