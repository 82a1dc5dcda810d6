"""The datasets DeepLab knows, by name: the one list of dataset names, and `get` to make one.

`get(name, **options)` returns a dataset object (a `base.Dataset`) with `name`, `num_classes`,
`ignore_label`, `class_names` and `colormap` (one RGB triple per class), and the layout methods
the builder uses: `locate(path)` (the dataset's root inside `path`), `splits(root)` (the split
names found), `scan(root, split)` (the split's `Example(split, id, image, label)`s and the
`Problem`s met while pairing files) and `label_table(label_path)` (a raw value -> class id
lookup, or None).

Each layout is described in its module (`pascal_voc`, `ade20k`, `cityscapes`, `folder`). The raw
data is a folder, or the contents of an archive; a single wrapping folder is looked through.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from deeplab.errors import UserError

if TYPE_CHECKING:
  from deeplab.datasets.layouts import base

# Name -> (module of this package, class). Modules are imported on first use: the build_data step
# reads NAMES for its --dataset choices and must not pay for numpy before it parses its flags.
_LAYOUTS = {
    'pascal_voc_seg': ('pascal_voc', 'PascalVoc'),
    'ade20k': ('ade20k', 'Ade20k'),
    'cityscapes': ('cityscapes', 'Cityscapes'),
    'folder': ('folder', 'Folder'),
}
NAMES = tuple(_LAYOUTS)


def get(name: str, **options) -> base.Dataset:
  """The dataset called `name`; options (num_classes, ignore_label, class_names) are for 'folder'."""
  if name not in _LAYOUTS:
    raise UserError(f'--dataset: unknown dataset {name!r}; known datasets: {", ".join(NAMES)}')
  if options and name != 'folder':
    raise UserError(f'dataset {name!r} has fixed classes; options {sorted(options)} are only '
                    'for the folder layout')
  module, class_name = _LAYOUTS[name]
  return getattr(importlib.import_module(f'{__name__}.{module}'), class_name)(**options)
