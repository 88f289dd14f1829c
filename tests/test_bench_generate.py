"""``benchmarks/bench_generate.py`` in its CPU smoke mode: every model and cache gives a point with finite speeds,
the static cache's size does not depend on the tokens generated, the table lists every model."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_smoke_run_writes_every_point(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_generate", REPO / "benchmarks" / "bench_generate.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    try:
        spec.loader.exec_module(bench)
        out = tmp_path / "generate.json"
        argv = ["--size", "tiny", "--device", "cpu", "--prompts", "17", "--batches", "2", "--new-tokens", "3",
                "--repeats", "1", "--no-compile", "--models", "transformer", "phalanx_hybrid", "--out", str(out)]
        assert bench.main(argv) == 0
    finally:
        del sys.modules[spec.name]
    points = json.loads(out.read_text())["points"]
    assert {(p["model"], p["cache"]) for p in points} == {
        (m, c) for m in ("transformer", "phalanx_hybrid") for c in ("default", "static")}
    for p in points:
        assert p["batch"] == 2 and p["prompt"] == 17 and not p["compiled_step"]
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "fraction_of_weight_bandwidth_limit", "cache_bytes_per_seq"):
            assert math.isfinite(p[key]) and p[key] > 0, (p["model"], p["cache"], key)
    dyn = {p["model"]: p["cache_bytes_per_seq"] for p in points if p["cache"] == "default"}
    assert dyn["phalanx_hybrid"] < dyn["transformer"]  # 1 of 4 layers keeps keys; the others a fixed state
    table = capsys.readouterr().out
    assert "| transformer | static |" in table and "| phalanx_hybrid | default |" in table
