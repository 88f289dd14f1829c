"""Triton kernels for the sliding window recurrence (SWR) and the fused Phalanx core.

Public API (same signatures as the PyTorch functions in ``swr_torch``): every call dispatches on the
tensors' device. CPU tensors (or any device when Triton is unavailable or ``PHALANX_FORCE_TORCH=1``) go to
the PyTorch implementation; CUDA tensors go to the Triton kernels. The package imports only torch, Triton
and the standard library, so it also ships as a Hub kernel (``phalanx export-kernels``).
"""

if __name__ == "kernels":
    # Python was started in the repository root, so this folder is importable as a top-level `kernels`.
    # Transformers probes for the Hugging Face `kernels` package under that name when it is imported;
    # look like an empty namespace package (no `__file__`, no `__version__`) so the probe ignores us.
    del __file__
else:
    from .ops import HAS_TRITON, phalanx_core, phalanx_core_step, swr, swr_step
    from .swr_torch import SWRState

    __all__ = ["HAS_TRITON", "SWRState", "phalanx_core", "phalanx_core_step", "swr", "swr_step"]
