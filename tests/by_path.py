"""Import a script or task file by its path, as `python benchmarks/x.py` and lm-eval's task loader do."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType


def import_file(path: Path, name: str) -> ModuleType:
    """Run the file at ``path`` as module ``name``, registered in ``sys.modules`` (dataclasses look it up there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@contextmanager
def imported_file(path: Path, name: str) -> Iterator[ModuleType]:
    """:func:`import_file` for the duration of a ``with`` block (a fixture's lifetime)."""
    module = import_file(path, name)
    try:
        yield module
    finally:
        sys.modules.pop(name, None)
