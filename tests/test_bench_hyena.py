"""``benchmarks/bench_hyena.py`` in its CPU smoke mode (kernels interpreted): every row has its timings and floors;
every peer row times Hyena-LI and says why each other peer did not run on the CPU; the JSON is written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from by_path import imported_file

REPO = Path(__file__).resolve().parents[1]


def test_cpu_tiny_smoke_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "hyena.json"
    with imported_file(REPO / "benchmarks" / "bench_hyena.py", "bench_hyena") as bench:
        rows, peers = bench.main(["--device", "cpu", "--size", "tiny", "--reps", "1", "--json", str(out),
                                  "--widths", "32", "--lengths", "64"])
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and saved["peers"] == peers and saved["device"] == "cpu"
    assert [(r["width"], r["seqlen"]) for r in peers] == [(32, 64)]
    for name in bench.PEERS[:-1]:
        said = peers[0][name]
        assert said in ("not installed", "needs CUDA") or said.startswith("off: wrong values when Triton"), (name, said)
        assert peers[0][f"{name}_seconds"] >= 0
    assert bench.PEERS[-1] == "hyena_li"  # ours (PyTorch FFT path): it runs on the CPU too
    assert peers[0]["hyena_li_fwd_ms"] > 0 and peers[0]["hyena_li_fwd_bwd_ms"] > 0
    assert [(r["taps"], r["mixer"]) for r in rows] == [(7, "hyena_se"), (24, "hyena_mr")]
    assert 0 < rows[0]["elapsed_s"] <= rows[1]["elapsed_s"] <= peers[0]["elapsed_s"]
    names = ["mixer_torch", "phalanx_core", "fir_floor", "mixer_floor"]
    if os.environ.get("TRITON_INTERPRET") == "1":  # conftest sets it without a GPU: the kernels run interpreted
        names += ["fir", "mixer", "mixer_per_channel"]
    for row in rows:
        for name in names:
            for mode in ("fwd", "fwd_bwd"):
                assert row[f"{name}_{mode}_ms"] > 0, (name, mode)


def test_peers_option_runs_only_those_peers() -> None:
    with imported_file(REPO / "benchmarks" / "bench_hyena.py", "bench_hyena") as bench:
        rows, peers = bench.main(["--device", "cpu", "--size", "tiny", "--reps", "1", "--parts", "peers",
                                  "--peers", "hyena_li", "mlstm"])
        table = bench.format_peer_table(peers)
    assert rows == [] and len(peers) == 1
    assert {k for k in peers[0] if k.endswith("_seconds")} == {"hyena_li_seconds", "mlstm_seconds"}
    assert "gla" not in peers[0] and peers[0]["hyena_li_fwd_ms"] > 0
    assert "hyena_li fwd" in table and "mlstm fwd" in table and "gla" not in table


def test_fir_sweep_checks_every_configuration(tmp_path: Path) -> None:
    """``benchmarks/sweep_fir.py`` on the CPU: each launch configuration of the filter-gradient, FIR, direct,
    scanned and Hyena-MR walk launchers matches the script's reference, one per launcher, pass and shape is the
    default (the multi-pass backward, the path the scans and walks replace, runs once, unswept), and the JSON holds
    them all."""
    out = tmp_path / "sweep.json"
    with imported_file(REPO / "benchmarks" / "sweep_fir.py", "sweep_fir") as sweep:
        results = sweep.main(["--device", "cpu", "--size", "tiny", "--json", str(out)])
        configs, shapes = sweep.CONFIGS["tiny"], sweep.SHAPES["tiny"]
    assert json.loads(out.read_text())["results"] == results
    # passes per shape, each over the configurations
    swept = {"dw": 1, "fir": 2, "core": 1, "scan": 1, "scanbwd": 1, "mr": 3, "mrbwd": 3}
    once = len(shapes["scanbwd"]) + 2 * len(shapes["mrbwd"])  # the multi-pass backward (MR: also packed)
    groups = {(r["kernel"], r["pass"], r["channels"], r["taps"]) for r in results}
    assert len(groups) == sum(swept[k] * len(shapes[k]) for k in sweep.KERNELS) + once
    assert len(results) == sum(swept[k] * len(shapes[k]) * len(configs[k]) for k in sweep.KERNELS) + once
    assert sum(r["default"] for r in results) == len(groups) - once
    if os.environ.get("TRITON_INTERPRET") == "1":
        for row in results:
            assert row["rel_err"] < 1e-5 and row["ms"] > 0 and row["x_floor"] > 0, row


def test_sweep_shape_option_replaces_the_sizes_shapes() -> None:
    """``--shape`` sweeps one given shape (here one sequence, which the MR walk cuts into segments) instead of the
    size's, and the table names it."""
    with imported_file(REPO / "benchmarks" / "sweep_fir.py", "sweep_fir") as sweep:
        results = sweep.main(["--device", "cpu", "--size", "tiny", "--kernels", "mr",
                              "--shape", "1", "256", "32", "128"])
        table = sweep.format_table(results)
    assert len(results) == 3 * len(sweep.CONFIGS["tiny"]["mr"])
    assert {(r["batch"], r["seqlen"], r["channels"], r["taps"]) for r in results} == {(1, 256, 32, 128)}
    assert "| mr fwd | 1 x 256 x 32 x 128 |" in table
    if os.environ.get("TRITON_INTERPRET") == "1":
        assert all(r["rel_err"] < 1e-5 for r in results), results


def test_parts_measures_one_part(tmp_path: Path) -> None:
    """``--parts peers`` times the peers alone (a short GPU call), ``--parts hyena`` the Hyena rows alone."""
    with imported_file(REPO / "benchmarks" / "bench_hyena.py", "bench_hyena") as bench:
        common = ["--device", "cpu", "--size", "tiny", "--reps", "1", "--widths", "32", "--lengths", "64"]
        rows, peers = bench.main([*common, "--parts", "peers"])
        assert rows == [] and [(r["width"], r["seqlen"]) for r in peers] == [(32, 64)]
        rows, peers = bench.main([*common, "--parts", "hyena", "--json", str(tmp_path / "h.json")])
        assert peers == [] and [r["mixer"] for r in rows] == ["hyena_se", "hyena_mr"]


def test_plot_hyena_renders_the_committed_run(tmp_path: Path) -> None:
    """The README's operator table is the raw JSON's kernel times: each cell recomputed from the file, points ordered
    by width then tokens a row, a peer that did not run says so, and the plot is written."""
    runs = REPO / "benchmarks" / "results" / "hyena_h100_s33"
    paths = [runs / "call2" / "bench_hyena.json", runs / "call3" / "b" / "bench_hyena.json"]
    png = tmp_path / "ops.png"
    with imported_file(REPO / "benchmarks" / "plot_hyena.py", "plot_hyena") as plot:
        points, _ = plot.load(paths)
        text = plot.table(points)
        assert plot.main([*map(str, paths), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p["key"] for p in points] == [(2048, 8, 4096), (2048, 4, 8192), (2048, 2, 16384), (2048, 1, 32768),
                                          (4096, 8, 4096), (4096, 4, 8192)]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()[2:]]
    lines = {row[0]: row[1:] for row in cells}
    raw = json.loads(paths[0].read_text())
    mr = next(r for r in raw["rows"] if r["mixer"] == "hyena_mr" and r["batch"] == 1)
    assert lines["Hyena-MR core (128 taps, bf16 filter)"][3] == (
        f"{mr['mixer_fwd_kernel_ms']:.3f} / {mr['mixer_fwd_bwd_kernel_ms']:.3f} ({mr['mixer_fwd_kernel_x_floor']:.2f}x)")
    gla = next(r for r in raw["peers"] if r["batch"] == 8)
    assert lines["FLA chunked GLA"][0] == f"{gla['gla_fwd_kernel_ms']:.3f} / {gla['gla_fwd_bwd_kernel_ms']:.3f}"
    assert set(lines["FLA gated DeltaNet"]) == {"did not run (RuntimeError)"}
    wide = json.loads(paths[1].read_text())["rows"][-1]
    assert (wide["width"], wide["batch"]) == (4096, 4)
    assert lines["Hyena memory floor, fwd"][-1] == f"{wide['mixer_floor_fwd_ms']:.3f}"


def test_plot_hyena_refuses_a_missing_run(tmp_path: Path, capsys) -> None:
    with imported_file(REPO / "benchmarks" / "plot_hyena.py", "plot_hyena") as plot, pytest.raises(SystemExit) as stop:
        plot.main([str(tmp_path / "none.json")])
    assert stop.value.code == 2
    assert "no such file" in capsys.readouterr().err
