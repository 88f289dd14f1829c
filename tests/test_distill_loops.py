"""`benchmarks/distill_loops.sh summarize`: the table of issue 17's loop timing, rebuilt from a run's logs and metrics
alone (run 2's committed files), against values read from those files here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "results" / "conversion_125m_h200" / "run2" / "distill_loops"


def traced_clock(log: str, name: str) -> float:
    return float(next(line for line in log.splitlines() if line.startswith(f"+ {name}=")).split("=")[1])


def test_summary_from_logs_and_metrics(tmp_path: Path) -> None:
    for name in ("old.log", "new.log", "metrics_old.json", "metrics_new.json"):
        shutil.copy(RUN / name, tmp_path / name)
    bin_dir = tmp_path / "bin"  # the script's `python3` is the interpreter running the tests
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "distill_loops.sh"), "summarize", str(tmp_path)],
                          capture_output=True, text=True, env=env, check=True)
    report = json.loads((tmp_path / "distill_loops.json").read_text())
    assert (report["steps_per_stage"], report["batch_size"], report["seq_len"]) == (50, 8, 2048)
    for loop in ("old", "new"):
        log = (tmp_path / f"{loop}.log").read_text()
        metrics = json.loads((tmp_path / f"metrics_{loop}.json").read_text())
        row = report["loops"][loop]
        wall = traced_clock(log, "end") - traced_clock(log, "start")
        assert row["wall_seconds"] == pytest.approx(wall, abs=0.01)
        tokens = metrics["tokens_stage1"] + metrics["tokens_stage2"]
        assert row["tokens_per_second_end_to_end"] == pytest.approx(tokens / wall, rel=1e-3)
        assert row["bpb_after_stage2"] == metrics["bpb_after_stage2"]
        assert row["revision"] == "unknown"  # these logs predate the revision header
    # the progress bars: stage 1 took 3 s in the new loop and 9 s in the old one, stage 2 10 s in both
    assert report["loops"]["new"]["tokens_per_second_bar_stage1"] == pytest.approx(819200 / 3, rel=1e-3)
    assert report["loops"]["old"]["tokens_per_second_bar_stage1"] == pytest.approx(819200 / 9, rel=1e-3)
    assert report["loops"]["old"]["tokens_per_second_bar_stage2"] == pytest.approx(819200 / 10, rel=1e-3)
    assert (tmp_path / "distill_loops.md").read_text() in done.stdout + "\n"
    assert re.search(r"\| new \(unknown\) \| 53\.4 \|", done.stdout)


def test_summary_names_what_is_missing(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "distill_loops.sh"), "summarize", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr == f"summarize: {tmp_path}/old.log is missing\n"
