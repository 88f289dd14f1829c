"""Triton kernels for the sliding window recurrence (SWR) and the fused Phalanx core.

Public API (docs/CONTRACTS.md): ``swr``, ``swr_step``, ``phalanx_core``, ``phalanx_core_step``,
``SWRState`` and ``HAS_TRITON``. Each function has the signature of its PyTorch counterpart in
``modeling_phalanx.swr_torch`` and dispatches per call on the tensors' device: CPU tensors (or any call
while ``PHALANX_FORCE_TORCH=1``) take the PyTorch path, CUDA tensors take the Triton kernels.
"""

from modeling_phalanx.swr_torch import SWRState

from .ops import HAS_TRITON, phalanx_core, phalanx_core_step, swr, swr_step

__all__ = ["HAS_TRITON", "SWRState", "phalanx_core", "phalanx_core_step", "swr", "swr_step"]
