"""The repository's `kernels/` folder must not break Transformers when Python starts in the repo root."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_transformers_models_import_from_the_repository_root():
    # With the repo root on sys.path, `kernels/` is importable as `kernels`, the name under which
    # Transformers probes for the Hugging Face kernels package.
    code = "import transformers; from transformers import LlamaForCausalLM; import kernels; from transformers.utils.import_utils import is_kernels_available; print(is_kernels_available())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("False")
