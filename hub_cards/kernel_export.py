"""`phalanx export-kernels OUT`: the Triton SWR kernels as a Hugging Face kernel repository.

The `kernels` library (PyPI `kernels`) loads a pure-Python Triton kernel from
``build/torch-universal/``: a ``metadata.json`` there and the package in ``phalanx_kernels/`` beside it
(the layout every `kernels` release from 0.15 reads). The package is the files of ``kernels/`` as they
are: they import only torch, Triton and the standard library (tests/test_repo_layout.py). A model
exported with ``phalanx export`` loads it when its config names the repository in
``phalanx_kernel_repo``. Written through ``phalanx_training.folders.output_folder``: never half-written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

KERNEL_NAME = "phalanx-kernels"
PACKAGE = "phalanx_kernels"
VARIANT = "torch-universal"

README = """# {name}

Triton kernels of the Phalanx sliding window recurrence (forward, backward, one-token decode step and the
fused Phalanx core), written by `phalanx export-kernels` in the layout the Hugging Face
[`kernels`](https://pypi.org/project/kernels/) library loads: `build/{variant}/metadata.json` and the
package `build/{variant}/{package}/`. They import only torch and Triton, and run on CUDA tensors
(CPU tensors go to the PyTorch path in the same package).

## Use

```python
from kernels import get_kernel, get_local_kernel

phalanx = get_kernel("ORG/{name}", version={version}, trust_remote_code=True)  # from the Hub
phalanx = get_local_kernel("path/to/this/folder")                            # or this folder
y = phalanx.phalanx_core(proj, num_heads=H, head_dim=D, num_gate_groups=H)
```

A Phalanx model exported with `phalanx export` uses it when its `config.json` names this repository in
`phalanx_kernel_repo` (a Hub id, or a local folder) and the `kernels` library is installed; an installed
`phalanx_kernels` package comes first, and without either the model runs its PyTorch path.

## Push to the Hub

`get_kernel(..., version={version})` loads the branch `v{version}`. From this folder (with `hf auth login` done):

```bash
hf repos create ORG/{name} --repo-type kernel
hf upload ORG/{name} . . --repo-type kernel
hf repos branch create ORG/{name} v{version} --repo-type kernel
```

Then set `"phalanx_kernel_repo": "ORG/{name}"` in the model's `config.json` (or pass
`phalanx_kernel_repo="ORG/{name}"` to `from_pretrained`).
"""


def kernel_files() -> list[Path]:
    """The files of the `phalanx_kernels` package (``kernels/*.py``)."""
    import phalanx_kernels

    return sorted(Path(phalanx_kernels.__file__).resolve().parent.glob("*.py"))


def metadata(files: list[Path]) -> dict:
    """``metadata.json`` of the variant. ``id`` (the module name the `kernels` library imports it under, and so
    the namespace of its torch ops) is unique to the files' contents, so two versions load side by side."""
    from modeling_phalanx.kernel_choice import PHALANX_KERNEL_VERSION

    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {
        "id": f"_{PACKAGE}_{digest.hexdigest()[:12]}",
        "name": KERNEL_NAME,
        "version": PHALANX_KERNEL_VERSION,
        "license": "Apache-2.0",
        "backend": {"type": "cuda"},
        "python-depends": [],
    }


def export_kernels(out_dir: str | Path, *, force: bool = False) -> Path:
    """Write the kernel repository to ``out_dir`` (see the module docstring); returns ``out_dir``."""
    from modeling_phalanx.kernel_choice import PHALANX_KERNEL_VERSION
    from phalanx_training.folders import check_output, output_folder

    out_dir = Path(out_dir)
    files = kernel_files()
    check_output(out_dir, inputs=[files[0].parent], force=force, create_parents=True)
    with output_folder(out_dir, inputs=[files[0].parent], force=force, create_parents=True) as tmp:
        variant = tmp / "build" / VARIANT
        (variant / PACKAGE).mkdir(parents=True)
        for path in files:
            (variant / PACKAGE / path.name).write_bytes(path.read_bytes())
        (variant / "metadata.json").write_text(json.dumps(metadata(files), indent=2) + "\n", encoding="utf-8")
        readme = README.format(name=KERNEL_NAME, variant=VARIANT, package=PACKAGE, version=PHALANX_KERNEL_VERSION)
        (tmp / "README.md").write_text(readme, encoding="utf-8")
    return out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="folder to write (must not exist unless --force)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    out = export_kernels(args.out, force=args.force)
    print(f"exported the Triton kernels -> {out} (push it with the commands in {out / 'README.md'})")
    return 0
