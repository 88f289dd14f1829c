"""Which Triton kernels the mixers run, chosen once per process and kernel repository when a mixer is built.

The installed `phalanx_kernels` package; else the kernel repository named by `config.phalanx_kernel_repo` (a local
folder or a Hub id, written by `phalanx export-kernels`) through the `kernels` library; else none, and the mixers
run their PyTorch paths (said in one log line). Every mixer takes its kernels from the one package chosen here.
"""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path
from types import ModuleType

from transformers.utils import logging

logger = logging.get_logger(__name__)

# API version of the Hub kernel repository (`phalanx export-kernels`): its metadata.json says it, and the model
# loads it with `kernels.get_kernel(repo, version=...)`, which reads the branch `v<version>`.
PHALANX_KERNEL_VERSION = 1


@functools.cache
def kernel_package(repo: str | None = None) -> ModuleType | None:
    """The kernels package (installed `phalanx_kernels`, else `repo` through the `kernels` library), or None.

    Resolved when a mixer is built, not at import, so a config that names a repository is read first. The
    kernels dispatch on device themselves (CPU tensors go to their PyTorch path).
    """
    try:
        import phalanx_kernels as package
    except ImportError:
        package = _load_kernel_repo(repo) if repo else None
    if package is None and not repo:
        logger.info("Phalanx mixers run the PyTorch SWR (no phalanx_kernels package, no phalanx_kernel_repo)")
    return package


def kernel_module(repo: str | None, name: str) -> ModuleType | None:
    """Module `name` (e.g. `"fir_ops"`) of the chosen kernels package, or None when there is no package or the
    module cannot load there (it needs Triton)."""
    package = kernel_package(repo)
    if package is None:
        return None
    try:
        return importlib.import_module(f"{package.__name__}.{name}")
    except ImportError:
        return None


def _load_kernel_repo(repo: str) -> ModuleType | None:
    """The kernel repository `repo` loaded by the `kernels` library, or None after one warning saying why."""
    try:
        from kernels import get_kernel, get_local_kernel
    except ImportError:
        logger.warning(f"phalanx_kernel_repo={repo!r} needs the `kernels` library (pip install kernels): PyTorch SWR")
        return None
    try:
        if os.path.isdir(repo):
            return get_local_kernel(Path(repo))
        # The model's own remote code, which the user trusted, names the repository.
        return get_kernel(repo, version=PHALANX_KERNEL_VERSION, trust_remote_code=True)
    except Exception as err:  # the kernels library raises many types (offline, missing variant, bad metadata)
        logger.warning(f"cannot load phalanx_kernel_repo={repo!r} ({type(err).__name__}: {err}): PyTorch SWR")
        return None
