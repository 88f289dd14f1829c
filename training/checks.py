"""Checks of what a command loads, shared by every package that loads model weights (it needs only torch)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch


def check_finite_weights(tensors: Mapping[str, torch.Tensor], folder: str | Path) -> None:
    """Refuse weights (name -> tensor) that hold NaN or infinity: a damaged checkpoint would give garbage."""
    bad = [name for name, p in tensors.items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"the weights in {folder} hold NaN or infinite values ({len(bad)} tensors, e.g. {bad[0]})")
