"""Triton kernels for the sliding window recurrence (SWR) and the fused Phalanx core.

Public API (same signatures as the PyTorch functions in ``swr_torch``): every call dispatches on the
tensors' device. CPU tensors (or any device when Triton is unavailable or ``PHALANX_FORCE_TORCH=1``) go to
the PyTorch implementation; CUDA tensors go to the Triton kernels. The package imports only torch, Triton
and the standard library, so it also ships as a Hub kernel (``phalanx export-kernels``).
"""

if __name__ == "kernels":
    # Python was started in the repository root, so this folder is importable as a top-level `kernels`, the name of
    # the Hugging Face `kernels` library, which Transformers imports (5.25 whenever it loads a model). Where that
    # library is installed, load it in our place; else look like an empty namespace package (no `__file__`, no
    # `__version__`), so that Transformers' probe ignores us.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _spec = importlib.machinery.PathFinder.find_spec(
        "kernels", [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    )
    if _spec is not None and _spec.loader is not None:
        _library = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _library  # what `import kernels` returns once this file has run
        _spec.loader.exec_module(_library)
    else:
        del __file__
else:
    from .ops import HAS_TRITON, phalanx_core, phalanx_core_step, swr, swr_step
    from .swr_torch import SWRState

    __all__ = ["HAS_TRITON", "SWRState", "phalanx_core", "phalanx_core_step", "swr", "swr_step"]
