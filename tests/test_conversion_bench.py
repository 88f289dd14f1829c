"""``benchmarks/conversion_bench.py`` end to end at a tiny size: a Gemma3 teacher trained on a corpus built from
installed packages, converted (every SWA layer with two warm starts, the lowest-mass layer with one), distilled
within 5% of its tokens with a recovery curve, timed, reported."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from by_path import imported_file

REPO = Path(__file__).resolve().parent.parent
TRAIN_PACKAGE, HELD_OUT_PACKAGE = "packaging", "tqdm"  # as tests/test_quality_bench.py


@pytest.fixture(scope="module")
def bench():
    with imported_file(REPO / "benchmarks" / "conversion_bench.py", "conversion_bench") as module:
        yield module


def test_distill_plan_keeps_the_budget(bench) -> None:
    plan = bench.distill_plan(29_491_200, 0.05, 0.1, 4, 8, 4096)
    assert plan["tokens"] <= 0.05 * 29_491_200 and plan["stage2_steps"] == 4 * plan["eval_every"]
    with pytest.raises(ValueError, match="at most 5%"):
        bench.distill_plan(29_491_200, 0.051, 0.1, 4, 8, 4096)
    with pytest.raises(ValueError, match="too few for stage 2"):
        bench.distill_plan(10_000, 0.05, 0.1, 4, 8, 4096)


def test_conversion_bench_end_to_end(bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the training subprocesses; the test machine is small and shared
    corpus, out = tmp_path / "corpus", tmp_path / "results"
    assert bench.main(["teacher", str(corpus), str(out)]) == 1
    assert "is not a corpus folder" in capsys.readouterr().err
    assert bench.qb.main(["corpus", str(corpus), "--packages", TRAIN_PACKAGE, "--held-out", HELD_OUT_PACKAGE]) == 0
    assert bench.main(["convert", str(out)]) == 1
    assert "run the teacher stage into it first" in capsys.readouterr().err

    assert bench.main(["teacher", str(corpus), str(out), "--shape", "tiny", "--window", "48", "--steps", "20",
                       "--seq-len", "64", "--batch-size", "2", "--eval-mb", "0.02", "--logging-steps", "1",
                       "--recall-tasks", "phalanx_passkey_64", "--recall-limit", "1",
                       "--recall-max-length", "160"]) == 0
    teacher = json.loads((out / "teacher.json").read_text())
    assert teacher["layer_types"] == ["sliding_attention"] * 3 + ["full_attention"]
    assert teacher["tokens"] == 20 * 2 * 64 and math.isfinite(teacher["heldout"]["bits_per_byte"])
    assert json.loads((out / "runs" / "teacher" / "model" / "config.json").read_text())["model_type"] == "gemma3_text"

    assert bench.main(["convert", str(out), "--inits", "avg", "random", "--lowest-mass", "1",
                       "--analyze-seq-len", "160", "--analyze-tokens", "640"]) == 0
    converted = json.loads((out / "convert.json").read_text())
    students = converted["students"]
    assert list(converted["window_probe"]) == ["32"] and converted["window_probe"]["32"] > 0  # windows under 48 only
    assert set(students) == {"all-avg", "all-random", "low1-avg"}
    assert students["all-avg"]["layers"] == [0, 1, 2] and len(students["low1-avg"]["layers"]) == 1
    # a second conversion with a wider Phalanx window, beside the first under a suffix
    assert bench.main(["convert", str(out), "--inits", "avg", "--lowest-mass", "--block-len", "32",
                       "--name-suffix", "w64", "--analyze-seq-len", "160", "--analyze-tokens", "640"]) == 0
    converted = json.loads((out / "convert.json").read_text())
    students = converted["students"]
    assert set(students) == {"all-avg", "all-random", "low1-avg", "all-avg-w64"} and converted["reach"] == 32
    assert students["all-avg-w64"]["block_len"] == 32 and students["all-avg-w64"]["layer_set"] == "all-w64"
    assert json.loads((out / "students" / "all-avg-w64" / "config.json").read_text())["swr_block_len"] == 32

    capsys.readouterr()
    assert bench.main(["distill", str(out), "--token-fraction", "0.06"]) == 1
    assert "at most 5%" in capsys.readouterr().err
    assert bench.main(["distill", str(out), "--batch-size", "1", "--seq-len", "32", "--stage1-share", "0.25",
                       "--curve-points", "3", "--data-mb", "0.1"]) == 0
    for name in students:
        r = json.loads((out / f"{name}.json").read_text())
        assert r["distill_tokens"] <= 0.05 * teacher["tokens"] and r["token_fraction"] <= 0.05
        assert r["plan"] == {"stage1_steps": 1, "stage2_steps": 3, "eval_every": 1, "tokens": 4 * 32}
        curve = r["curve"]
        assert [p["tokens"] for p in curve] == [0, 32, 64, 96, 128]  # converted, stage 1, 3 points of stage 2
        assert all(math.isfinite(p["bpb"]) and p["bpb"] > 0 for p in curve)
        assert math.isfinite(r["heldout"]["bits_per_byte"]) and set(r["recall"]["families"]) == {"phalanx_passkey"}

    timing = ["--train-steps", "4", "--decode-prompt", "16", "--new-tokens", "3", "--repeats", "1"]
    assert bench.main(["speed", str(out), "--students", "nobody", *timing]) == 1
    assert "no student matches --students nobody" in capsys.readouterr().err
    assert bench.main(["speed", str(out), "--students", "low1-*", *timing]) == 0
    assert set(json.loads((out / "speed.json").read_text())["models"]) == {"teacher", "low1"}
    assert bench.main(["speed", str(out), *timing]) == 0
    speed = json.loads((out / "speed.json").read_text())["models"]
    assert set(speed) == {"teacher", "all", "low1", "all-w64"}
    assert all(s["train_tokens_per_second"] > 0 and s["decode_tokens_per_second"] > 0 for s in speed.values())

    # a second recipe of one student, under a tag, beside the default recipe's result
    with pytest.raises(SystemExit):
        bench.main(["distill", str(out), "--tag", "bad/tag"])
    assert "must be letters, digits" in capsys.readouterr().err
    assert bench.main(["distill", str(out), "--students", "all-avg", "--tag", "b2", "--batch-size", "2",
                       "--seq-len", "16", "--stage1-share", "0.25", "--curve-points", "3", "--stage2-lr", "1e-3",
                       "--data-mb", "0.1"]) == 0
    tagged = json.loads((out / "all-avg@b2.json").read_text())
    assert tagged["config"] == "all-avg@b2" and tagged["student"] == "all-avg" and (out / "runs" / "all-avg@b2").is_dir()
    assert json.loads((out / "all-avg.json").read_text())["plan"]["tokens"] == 4 * 32  # the default recipe's result kept
    # stage 2 alone, with cross-entropy: the curve goes from the converted student straight to stage 2's points
    assert bench.main(["distill", str(out), "--students", "all-avg", "--tag", "s2", "--batch-size", "2",
                       "--seq-len", "16", "--stage1-share", "0", "--curve-points", "2", "--data-mb", "0.1",
                       "--ce-weight", "0.5"]) == 0
    alone = json.loads((out / "all-avg@s2.json").read_text())
    assert "ce" in alone["distill"]["final_losses_stage2"]  # the distillation trained with the cross-entropy term
    at = [c["at"] for c in alone["curve"]]
    assert alone["plan"]["stage1_steps"] == 0 and at[0] == "converted" and at[1] == f"stage 2 step {alone['plan']['eval_every']}"

    assert bench.main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert all(f"| {name} |" in text for name in ("teacher", *students, "all-avg@b2")) and "**Goal (issue 21):**" in text
    assert "The teacher with its SWA window cut, untrained (held-out bits/byte; 48 tokens as trained:" in text
    assert "| all-avg-w64 | 0,1,2 | avg | 32 x 2 |" in text and "| all-avg | 0,1,2 | avg | 16 x 2 |" in text
    assert "| all-avg@b2 | 2 x 16; stage 1: 1 steps, lr 0.001; stage 2: 3 steps, lr 0.001 (other weights 3e-05) |" in text
    steps = alone["plan"]["stage2_steps"]
    assert (f"| all-avg@s2 | 2 x 16; no stage 1; stage 2: {steps} steps, lr 0.0003 (other weights 3e-05), "
            "cross-entropy weight 0.5 |") in text
    assert (out / "recovery.png").stat().st_size > 0 and (out / "attention_mass.png").stat().st_size > 0
