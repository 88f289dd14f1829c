"""Test setup: run Triton kernels through the interpreter on CPU; skip GPU-marked tests without CUDA."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any import of triton


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run on the GPU machine, results in benchmarks/results/")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
