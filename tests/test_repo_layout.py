"""Repository layout: the `kernels/` folder does not break Transformers from the repo root; import rules."""

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_transformers_models_import_from_the_repository_root():
    """With the repo root on sys.path, `kernels/` is importable as `kernels`, the name of the Hugging Face kernels
    library, which Transformers imports (5.25 whenever it loads a model): the installed library is what that name
    gives, and without the library an empty namespace that Transformers' probe ignores."""
    code = ("import transformers; from transformers import LlamaForCausalLM; import kernels; "
            "from transformers.utils.import_utils import is_kernels_available; "
            "print(getattr(kernels, '__file__', None), is_kernels_available())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    where, available = out.stdout.split()[-2:]
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        assert (where, available) == ("None", "False")
    else:
        assert where != "None" and Path(where).resolve().parent != REPO / "kernels", where


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one Python file (relative imports stay in its package)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_kernels_import_only_torch_triton_and_the_standard_library():
    allowed = {"torch", "triton", "__future__"} | set(sys.stdlib_module_names)
    for path in sorted((REPO / "kernels").glob("*.py")):
        assert _imported_roots(path) <= allowed, f"{path.name} imports {sorted(_imported_roots(path) - allowed)}"


def test_one_pytorch_swr_linked_into_the_flat_model_package():
    link = REPO / "modeling_phalanx" / "swr_torch.py"
    assert link.is_symlink() and link.resolve() == (REPO / "kernels" / "swr_torch.py").resolve()
    allowed = {"torch", "__future__"} | set(sys.stdlib_module_names)
    assert _imported_roots(link) <= allowed
