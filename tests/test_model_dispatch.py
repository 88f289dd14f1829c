"""The model finds the Triton kernels whatever was imported first (a silent PyTorch fallback was a bug)."""

import subprocess
import sys

import pytest

CODE = """
import {first}
from modeling_phalanx import PhalanxConfig, PhalanxForCausalLM
import phalanx_kernels
config = PhalanxConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, layer_types=["linear_attention", "full_attention"])
mixer = PhalanxForCausalLM(config).model.layers[0].mixer
assert mixer.kernels is not None and mixer.kernels[1] is phalanx_kernels.phalanx_core, mixer.kernels
print("ok")
"""


@pytest.mark.parametrize("first", ["phalanx_kernels", "modeling_phalanx", "phalanx_kernels.ops"])
def test_mixer_uses_phalanx_kernels_whatever_the_import_order(first, tmp_path):
    out = subprocess.run([sys.executable, "-c", CODE.format(first=first)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
