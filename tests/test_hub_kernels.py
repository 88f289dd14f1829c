"""`phalanx export-kernels`: a kernel repository in the layout of the Hugging Face `kernels` library."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from phalanx_cli.main import main

pytest.importorskip("triton", reason="needs triton")
try:  # not imported here: from the repository root, `import kernels` would find the repository's folder
    importlib.metadata.version("kernels")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("needs the `kernels` library (test extra)", allow_module_level=True)


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """(a clean folder holding `hub_model`, an export of the tiny model that names the kernel folder; the kernel folder)."""
    root = tmp_path_factory.mktemp("hub")
    kernel_dir, model_dir = root / "phalanx-kernels", root / "clean" / "hub_model"
    assert main(["export-kernels", str(kernel_dir)]) == 0
    assert main(["export", str(tiny_model), str(model_dir)]) == 0
    config = json.loads((model_dir / "config.json").read_text())
    config["phalanx_kernel_repo"] = str(kernel_dir)
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir.parent, kernel_dir


def test_export_kernels_writes_the_kernels_library_layout(exported):
    _, kernel_dir = exported
    variant = kernel_dir / "build" / "torch-universal"
    package = Path(__file__).resolve().parent.parent / "kernels"
    assert sorted(p.name for p in (variant / "phalanx_kernels").iterdir()) == sorted(p.name for p in package.glob("*.py"))
    assert all((variant / "phalanx_kernels" / p.name).read_bytes() == p.read_bytes() for p in package.glob("*.py"))
    metadata = json.loads((variant / "metadata.json").read_text())
    assert metadata["name"] == "phalanx-kernels" and metadata["id"].startswith("_phalanx_kernels_")
    assert "hf upload" in (kernel_dir / "README.md").read_text()
    assert main(["export-kernels", str(kernel_dir)]) == 1  # never over an existing folder without --force
