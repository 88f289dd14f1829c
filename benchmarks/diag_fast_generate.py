"""Which decoder parts from eager `generate` on the GPU: for each tiny mix and dtype, the first position where
`generate` (static cache, auto-compiled), `fast_generate` eager and `fast_generate` compiled differ from eager
`generate` (static cache, disable_compile=True). Issue 20's failing CUDA-graph test, in detail."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_generation_equivalence import GREEDY, mix_model  # noqa: E402
from test_model_cache import VOCAB  # noqa: E402

from modeling_phalanx.generation_phalanx import fast_generate  # noqa: E402


def first_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    diff = (a != b).nonzero()
    return "equal" if diff.numel() == 0 else f"row {diff[0, 0].item()} pos {diff[0, 1].item()} ({len(diff)} differ)"


@torch.no_grad()
def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("error: diag_fast_generate.py compares CUDA decoders and found no CUDA GPU")
    torch.manual_seed(0)
    for name in ("phalanx_only", "hybrid"):
        model = mix_model(name).to("cuda")
        prompt = torch.randint(3, VOCAB, (2, 37), device="cuda")
        mask = torch.ones_like(prompt)
        mask[1, :5] = 0
        for dtype in (torch.float32, torch.bfloat16):
            model.to(dtype)
            for label, kwargs in (("full", {}), ("left-pad", {"attention_mask": mask})):
                ref = model.generate(prompt, cache_implementation="static", pad_token_id=0, disable_compile=True,
                                     **kwargs, **GREEDY)
                rows = {
                    "generate static compiled": lambda: model.generate(prompt, cache_implementation="static",
                                                                       pad_token_id=0, **kwargs, **GREEDY),
                    "generate dynamic": lambda: model.generate(prompt, pad_token_id=0, **kwargs, **GREEDY),
                    "fast eager": lambda: fast_generate(model, prompt, max_new_tokens=20, compile=False, **kwargs),
                    "fast compiled": lambda: fast_generate(model, prompt, max_new_tokens=20, **kwargs),
                }
                for row, fn in rows.items():
                    try:
                        result = first_difference(fn(), ref)
                        print(f"{name:13s} {str(dtype):15s} {label:9s} {row:25s} {result}", flush=True)
                    except Exception as error:  # noqa: BLE001 (a diagnostic: report and go on)
                        print(f"{name:13s} {str(dtype):15s} {label:9s} {row:25s} ERROR {type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]}", flush=True)


if __name__ == "__main__":
    main()
