"""``benchmarks/bench_generate.py`` in its CPU smoke mode: every model and cache gives a point with finite speeds,
the static cache's size does not depend on the tokens generated, the table lists every model; a bad ``--points``
value is refused by name; a point that fails is recorded as an error point and the run goes on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from by_path import imported_file

REPO = Path(__file__).resolve().parent.parent
SMOKE = ["--size", "tiny", "--device", "cpu", "--points", "2x17", "--new-tokens", "3", "--repeats", "1", "--no-compile"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    with imported_file(REPO / "benchmarks" / "bench_generate.py", "bench_generate") as module:
        yield module


def test_smoke_run_writes_every_point(bench, tmp_path: Path, capsys) -> None:
    out = tmp_path / "generate.json"
    assert bench.main([*SMOKE, "--models", "transformer", "phalanx_hybrid", "--out", str(out),
                       "--plot", str(tmp_path / "generate.png")]) == 0
    assert (tmp_path / "generate.png").stat().st_size > 1000
    points = json.loads(out.read_text())["points"]
    assert {(p["model"], p["cache"]) for p in points} == {
        (m, c) for m in ("transformer", "phalanx_hybrid") for c in ("default", "static", "fast")}
    for p in points:
        assert p["batch"] == 2 and p["prompt"] == 17 and not p["compiled_step"]
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "fraction_of_weight_bandwidth_limit", "cache_bytes_per_seq"):
            assert math.isfinite(p[key]) and p[key] > 0, (p["model"], p["cache"], key)
    fixed = {(p["model"], p["cache"]): p["cache_bytes_per_seq"] for p in points if p["cache"] != "default"}
    assert all(fixed[m, "fast"] == fixed[m, "static"] for m in ("transformer", "phalanx_hybrid"))  # one cache
    dyn = {p["model"]: p["cache_bytes_per_seq"] for p in points if p["cache"] == "default"}
    assert dyn["phalanx_hybrid"] < dyn["transformer"]  # 1 of 4 layers keeps keys; the others a fixed state
    table = capsys.readouterr().out
    assert "| transformer | static |" in table and "| phalanx_hybrid | fast |" in table and "| phalanx_hybrid | default |" in table


@pytest.mark.parametrize("bad", ["4096", "0x4096", "2x", "ax17", "2x-5"])
def test_bad_points_are_refused_by_name(bench, capsys, bad: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*SMOKE[:4], "--points", bad])
    assert exit_info.value.code == 2
    assert f"points must look like 1x4096 (positive batch x prompt), got '{bad}'" in capsys.readouterr().err


def test_a_failing_point_is_recorded_and_the_run_goes_on(bench, tmp_path: Path, capsys, monkeypatch) -> None:
    real = bench.generate_kwargs

    def static_fails(cache: str, *args, **kwargs) -> dict:
        if cache == "static":
            raise RuntimeError("CUDA out of memory (pretend)\nsecond line")
        return real(cache, *args, **kwargs)

    monkeypatch.setattr(bench, "generate_kwargs", static_fails)
    out = tmp_path / "sub" / "generate.json"
    assert bench.main([*SMOKE, "--models", "phalanx_hybrid", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"environment", "args", "points"}
    by_cache = {p["cache"]: p for p in result["points"]}
    assert set(by_cache) == {"default", "static", "fast"}
    assert by_cache["static"] == {"model": "phalanx_hybrid", "cache": "static", "batch": 2, "prompt": 17,
                                  "error": "RuntimeError: CUDA out of memory (pretend)"}
    assert "error" not in by_cache["default"] and by_cache["default"]["decode_tokens_per_s"] > 0
    assert [p.name for p in out.parent.iterdir()] == ["generate.json"]  # no temporary file left behind
    assert "| phalanx_hybrid | static | error |" in capsys.readouterr().out


def test_deadline_stops_before_the_next_point(bench, tmp_path: Path, capsys) -> None:
    out = tmp_path / "generate.json"
    assert bench.main([*SMOKE, "--models", "transformer", "--deadline-s", "0", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["points"] == []
    assert capsys.readouterr().out.count("bench_generate: deadline reached, skipping the rest") == 1


def test_from_json_renders_an_earlier_run_without_measuring(bench, tmp_path: Path, capsys, monkeypatch) -> None:
    """--from-json prints the committed run's table and plots it; nothing is built or timed."""
    monkeypatch.setattr(bench, "run", lambda *a: pytest.fail("--from-json must not measure"))
    committed = REPO / "benchmarks" / "results" / "generate_h200.json"
    assert bench.main(["--from-json", str(committed), "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "| phalanx_hybrid | static | 236.0 (15%) | 5,349.9 (10%) | 234.6 (15%) |" in out
    assert (tmp_path / "p.png").is_file()
    with pytest.raises(SystemExit):
        bench.main(["--from-json", str(tmp_path / "missing.json")])
    assert "no such file" in capsys.readouterr().err


def test_resume_measures_only_the_missing_points(bench, tmp_path: Path, monkeypatch) -> None:
    """A run cut short and run again with --resume keeps its points and measures only the others; a model with
    nothing left is not even built."""
    out = tmp_path / "generate.json"
    assert bench.main([*SMOKE, "--models", "transformer", "--caches", "default", "--out", str(out)]) == 0
    first = json.loads(out.read_text())["points"]
    built = []
    real_build = bench.build
    monkeypatch.setattr(bench, "build", lambda name, args: built.append(name) or real_build(name, args))
    assert bench.main([*SMOKE, "--models", "transformer", "phalanx_hybrid", "--caches", "default", "--out", str(out),
                       "--resume"]) == 0
    result = json.loads(out.read_text())
    assert built == ["phalanx_hybrid"]
    assert result["points"][0] == first[0] and len(first) == 1
    assert [(p["model"], p["repeats"]) for p in result["points"]] == [("transformer", 1), ("phalanx_hybrid", 1)]
    assert result["earlier_args"][0]["models"] == "['transformer']"
    assert bench.main([*SMOKE, "--models", "transformer", "phalanx_hybrid", "--caches", "default", "--out", str(out),
                       "--resume"]) == 0
    assert built == ["phalanx_hybrid"] and len(json.loads(out.read_text())["points"]) == 2  # nothing left to do


def test_resume_and_from_json_refuse_what_is_not_a_result(bench, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        bench.main([*SMOKE, "--resume"])
    assert "--resume needs --out" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    for text in ("{not json", '{"points": []}', '{"args": {}, "points": [{"model": "x"}]}'):
        bad.write_text(text)
        for argv in ([*SMOKE, "--out", str(bad), "--resume"], ["--from-json", str(bad)]):
            with pytest.raises(SystemExit):
                bench.main(argv)
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert f"{bad} is not a bench_generate result" in err
    assert bad.read_text() == '{"args": {}, "points": [{"model": "x"}]}'  # never overwritten


def test_from_json_merges_several_runs(bench, tmp_path: Path, capsys) -> None:
    """Points of several committed runs in one table (run 4's SWA hybrid and run 5's all-attention model)."""
    results = REPO / "benchmarks" / "results"
    assert bench.main(["--from-json", str(results / "generate_h200_run4" / "default.json"),
                       str(results / "generate_h200_run5" / "configs.json")]) == 0
    out = capsys.readouterr().out
    assert "| swa_hybrid | default | 49.5 (3%) | 1,067.9 (2%) | - |" in out
    assert "| phalanx_full | static | - | 2,931.6 (6%) | 172.0 (11%) |" in out


def test_each_static_point_decodes_over_a_cache_of_its_own_size(bench, tmp_path: Path) -> None:
    """`generate` would size a later, shorter point's static cache to the longest before (`--caches` picks static)."""
    out = tmp_path / "generate.json"
    args = [*SMOKE, "--models", "transformer", "--caches", "static", "--out", str(out)]
    args[args.index("--points") + 1 : args.index("--points") + 2] = ["1x40", "1x10"]
    assert bench.main(args) == 0
    per_seq = {p["prompt"]: p["cache_bytes_per_seq"] for p in json.loads(out.read_text())["points"]}
    assert set(per_seq) == {40, 10}
    assert per_seq[10] / per_seq[40] == pytest.approx((10 + 3 - 1) / (40 + 3 - 1), rel=0.02)


def test_multi_hybrid_presets_decode_through_every_path(bench, tmp_path: Path) -> None:
    """The multi-hybrid presets build at the benchmarks' size (same width and depth as the Phalanx hybrid, their
    flavour's mixers) and give a finite point for the default, static and fast paths."""
    from model_zoo import PRESET_MODELS, build_model

    from phalanx_training.presets import FLAVOURS

    reference = build_model("phalanx_hybrid", "tiny").config
    for name in PRESET_MODELS:
        config = build_model(name, "tiny").config
        assert (config.hidden_size, config.num_hidden_layers) == (reference.hidden_size, reference.num_hidden_layers)
        assert set(FLAVOURS[name]) <= set(config.layer_types), name
    out = tmp_path / "generate.json"
    assert bench.main([*SMOKE, "--models", "multihybrid", "swax", "--out", str(out)]) == 0
    points = json.loads(out.read_text())["points"]
    assert {(p["model"], p["cache"]) for p in points} == {(m, c) for m in ("multihybrid", "swax") for c in bench.CACHES}
    assert all(math.isfinite(p["decode_tokens_per_s"]) for p in points), points
    assert {p["attn_implementation"] for p in points} == {"sdpa"}  # swax trains with FlexAttention, decodes with SDPA


def test_the_swa_hybrid_decodes_through_sdpa(bench, tmp_path: Path) -> None:
    """The SWA hybrid (which trains with FlexAttention) decodes through SDPA: FlexAttention made the compiled static
    path re-record CUDA graphs for new shapes on the H200."""
    out = tmp_path / "generate.json"
    assert bench.main([*SMOKE, "--models", "swa_hybrid", "--caches", "static", "--out", str(out)]) == 0
    (point,) = json.loads(out.read_text())["points"]
    assert point["attn_implementation"] == "sdpa" and math.isfinite(point["decode_tokens_per_s"])


def test_generate_profile_splits_a_decoding_step(monkeypatch, tmp_path: Path) -> None:
    """``profile_gpu.py generate`` on CPU: the difference of a 1-token and a (1 + n)-token call gives each model's
    wall time per decoding step and the host operators a step adds. 32 steps (about 3 ms each here) keep the
    difference above the host's jitter when another job shares the cores (6 steps once came out negative)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    with imported_file(REPO / "benchmarks" / "profile_gpu.py", "profile_gpu") as profile:
        assert profile.main(["generate", "--out", str(tmp_path), "--size", "tiny", "--context", "24",
                             "--new-tokens", "32", "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "profile_generate.json").read_text())
    assert set(result["models"]) == {"transformer", "phalanx_hybrid"} and result["new_tokens"] == 32
    for step in result["models"].values():
        assert step["wall_ms_per_step"] > 0 and step["kernel_ms_per_step"] == 0  # no GPU kernels on CPU
        ops = step["host_ops_per_step"]
        assert ops and all(op["calls"] > 0 for op in ops.values())  # only operators the decoding steps call
    assert "decoding steps through generate" in (tmp_path / "profile_generate.txt").read_text()
