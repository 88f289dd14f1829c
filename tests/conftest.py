"""Test setup: run Triton kernels through the interpreter on CPU; skip GPU-marked tests without CUDA; shared fixtures."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

# Tests import the project as installed, as users do. With the repository root on `sys.path` (as `python -m pytest`
# puts it), the folder `kernels/` would shadow the Hugging Face `kernels` library, which some Transformers
# releases (5.20) import when they are imported.
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _ROOT]

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any import of triton


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run on the GPU machine, results in benchmarks/results/")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def offline_env() -> Iterator[dict[str, str]]:
    """Every test runs with the Hub and datasets offline (nothing may be downloaded); yields the variables
    for tests that build a subprocess environment from scratch."""
    variables = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in variables.items():
            mp.setenv(key, value)
        yield variables


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 3-layer hybrid (Phalanx, sliding, full attention) with the byte tokenizer, saved to a folder."""
    from modeling_phalanx import PhalanxConfig, PhalanxForCausalLM
    from phalanx_training.tokenizer import BYTE_VOCAB_SIZE, load_byte_tokenizer

    tokenizer = load_byte_tokenizer()
    torch.manual_seed(0)
    config = PhalanxConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
        layer_types=["linear_attention", "sliding_attention", "full_attention"], sliding_window=24,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    path = tmp_path_factory.mktemp("model") / "tiny"
    PhalanxForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
