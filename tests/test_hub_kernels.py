"""`phalanx export-kernels` and exported remote code that loads it through the Hugging Face `kernels` library.

The loading runs in a process started with `python -I -S` whose working directory is outside the repository
(there the repository's `kernels/` folder would shadow the `kernels` library): only the environment's
installed packages are on its path, not this project. The Triton path runs on CPU under the Triton
interpreter (`TRITON_INTERPRET=1` with `PHALANX_FORCE_TRITON=1`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from phalanx_cli.main import main

pytest.importorskip("triton", reason="needs triton")
try:  # not imported here: from the repository root, `import kernels` would find the repository's folder
    importlib.metadata.version("kernels")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("needs the `kernels` library (test extra)", allow_module_level=True)

LOAD_SCRIPT = """
import importlib.util, json, sys
sys.path.extend(json.loads(sys.argv[1]))
if sys.argv[3] == "no-kernels":
    sys.modules["kernels"] = None  # the `kernels` library is not installed
for name in ("modeling_phalanx", "phalanx_kernels", "phalanx_hub"):
    assert importlib.util.find_spec(name) is None, name + " is importable"
import os
import torch
from transformers import AutoModelForCausalLM
overrides = {"phalanx_kernel_repo": sys.argv[4]} if len(sys.argv) > 4 else {}
model = AutoModelForCausalLM.from_pretrained("hub_model", trust_remote_code=True, **overrides).eval()
kernels = model.model.layers[0].mixer.kernels
calls = []
if kernels is not None:
    ops = sys.modules[kernels[1].__module__]
    triton_core = ops.phalanx_core_triton
    ops.phalanx_core_triton = lambda *a, **k: calls.append(1) or triton_core(*a, **k)
ids = torch.tensor(json.loads(sys.argv[2]))
packed = torch.tensor([list(range(20)) + list(range(ids.shape[1] - 20))] * ids.shape[0])
with torch.no_grad():
    logits = model(ids).logits
    packed_logits = model(ids, position_ids=packed).logits
    tokens = model.generate(ids, max_new_tokens=4, do_sample=False).tolist()
    os.environ["PHALANX_FORCE_TORCH"] = "1"
    torch_logits = model(ids).logits
print(json.dumps({
    "kernel_module": None if kernels is None else kernels[1].__module__,
    "triton_calls": len(calls),
    "logits": logits.tolist(), "packed_logits": packed_logits.tolist(), "tokens": tokens,
    "max_diff_to_torch_path": (logits - torch_logits).abs().max().item(),
}))
"""


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


def _load(clean: Path, mode: str, ids: torch.Tensor, offline_env: dict[str, str], *repo: str) -> tuple[dict, str]:
    paths = json.dumps(sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}))
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(clean), "HF_MODULES_CACHE": str(clean / "modules"),
        "TRITON_INTERPRET": "1", "PHALANX_FORCE_TRITON": "1", **offline_env,
    }
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", LOAD_SCRIPT, paths, json.dumps(ids.tolist()), mode, *repo],
        cwd=clean, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _reference(tiny_model: Path, ids: torch.Tensor) -> dict:
    """The installed package's PyTorch path (CPU tensors) on the same inputs."""
    from modeling_phalanx import PhalanxForCausalLM

    model = PhalanxForCausalLM.from_pretrained(tiny_model).eval()
    packed = torch.tensor([list(range(20)) + list(range(ids.shape[1] - 20))] * ids.shape[0])
    with torch.no_grad():
        return {
            "logits": model(ids).logits, "packed_logits": model(ids, position_ids=packed).logits,
            "tokens": model.generate(ids, max_new_tokens=4, do_sample=False).tolist(),
        }


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


def test_exported_model_runs_the_hub_kernel_like_the_pytorch_path(exported, tiny_model, offline_env):
    clean, _ = exported
    ids = torch.randint(3, 200, (2, 37))
    loaded, _ = _load(clean, "kernels", ids, offline_env)
    assert loaded["kernel_module"].startswith("_phalanx_kernels_")  # the module the kernels library loaded
    assert loaded["triton_calls"] >= 3  # forward, packed forward and the prefill went through Triton
    assert loaded["max_diff_to_torch_path"] < 1e-4
    reference = _reference(tiny_model, ids)
    torch.testing.assert_close(torch.tensor(loaded["logits"]), reference["logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(loaded["packed_logits"]), reference["packed_logits"], atol=1e-4, rtol=1e-4)
    assert loaded["tokens"] == reference["tokens"]


def _transformers_requires_kernels() -> bool:
    """Whether the installed Transformers depends on the `kernels` library outright (5.25 does, and refuses to load
    any model without it), so that no environment where it runs lacks the library."""
    from packaging.requirements import Requirement

    return any(req.name == "kernels" and req.marker is None
               for req in map(Requirement, importlib.metadata.requires("transformers") or []))


def test_without_the_kernels_library_it_falls_back_with_one_log_line(exported, tiny_model, offline_env):
    if _transformers_requires_kernels():
        pytest.skip(f"transformers {importlib.metadata.version('transformers')} requires the kernels library: "
                    "no environment lacks it")
    clean, _ = exported
    ids = torch.randint(3, 200, (2, 37))
    loaded, stderr = _load(clean, "no-kernels", ids, offline_env)
    assert loaded["kernel_module"] is None and loaded["triton_calls"] == 0
    assert [line for line in stderr.splitlines() if "phalanx_kernel_repo" in line] == [
        next(line for line in stderr.splitlines() if "needs the `kernels` library" in line)
    ]
    torch.testing.assert_close(torch.tensor(loaded["logits"]), _reference(tiny_model, ids)["logits"], atol=1e-5, rtol=1e-5)


def test_a_hub_kernel_that_cannot_be_loaded_falls_back_with_one_warning(exported, tiny_model, offline_env):
    """A Hub id (not a folder) goes to `kernels.get_kernel`; offline and not cached, the model says so once and
    runs the PyTorch path."""
    clean, _ = exported
    ids = torch.randint(3, 200, (1, 21))
    loaded, stderr = _load(clean, "kernels", ids, offline_env, "someone/phalanx-kernels")
    assert loaded["kernel_module"] is None and loaded["triton_calls"] == 0
    warnings = [line for line in stderr.splitlines() if "phalanx_kernel_repo" in line]
    assert len(warnings) == 1 and "cannot load phalanx_kernel_repo='someone/phalanx-kernels'" in warnings[0], stderr
    torch.testing.assert_close(torch.tensor(loaded["logits"]), _reference(tiny_model, ids)["logits"], atol=1e-5, rtol=1e-5)
