"""``benchmarks/quality_bench.py`` end to end on a tiny slice: corpus from installed packages, two tiny
configurations trained with ``phalanx train`` at equal tokens and one at equal wall-clock time, the report."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
from by_path import imported_file

REPO = Path(__file__).resolve().parent.parent
TRAIN_PACKAGE, HELD_OUT_PACKAGE = "packaging", "tqdm"  # pure Python; tqdm is a dependency, packaging one of transformers


@pytest.fixture(scope="module")
def bench():
    with imported_file(REPO / "benchmarks" / "quality_bench.py", "quality_bench") as module:
        yield module


def fake_package(root: Path, name: str) -> Path:
    """An importable package with a non-UTF-8 file, CRLF line ends, a duplicate of its own file and a copy of a
    held-out file."""
    pkg = root / name
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 'é'\n", encoding="utf-8")
    (pkg / "sub" / "same.py").write_text("VALUE = 'é'\n", encoding="utf-8")  # exact duplicate of __init__.py
    (pkg / "latin1.py").write_bytes("NAME = 'café'\n".encode("latin-1"))  # not UTF-8
    (pkg / "crlf.py").write_bytes(b"x = 1\r\ny = 2\r\n")  # copied byte for byte
    held_out_root = Path(importlib.util.find_spec(HELD_OUT_PACKAGE).origin).parent
    shutil.copy(held_out_root / "__init__.py", pkg / "copied.py")  # duplicate of a held-out file
    return pkg


def test_decode_source_is_strict(bench) -> None:
    assert bench.decode_source("é = 1\n".encode()) == "é = 1\n"
    assert bench.decode_source("é = 1\n".encode("latin-1")) is None
    assert bench.decode_source(b"\xef\xbb\xbfx = 1\n") == "\ufeffx = 1\n"  # a BOM is kept, not hidden


def test_configurations_differ_only_where_named(bench) -> None:
    base = bench.model_config("125m-phalanx", 259).to_dict()
    for name in bench.CONFIG_NAMES:
        if name.startswith("125m-"):
            cfg = bench.model_config(name, 259).to_dict()
            changed = {k for k in base if cfg.get(k) != base[k]}
            recipe = bench.RECIPES[name.removeprefix("125m-")]
            assert changed <= {"layer_types", "sliding_window", *recipe.overrides}, name
    multi = bench.model_config("125m-multi-swa512", 259)
    assert multi.layer_types[:4] == ["linear_attention", "sliding_attention", "linear_attention", "full_attention"]
    assert multi.sliding_window == 512 and len(multi.layer_types) == 12
    assert bench.model_config("125m-phalanx-full1to1", 259).layer_types.count("full_attention") == 6
    assert bench.model_config("125m-stripedhyena", 259).layer_types[:4] == ["hyena_se", "hyena_mr", "hyena_li", "full_attention"]
    assert bench.model_config("125m-multihybrid", 259).layer_types[:4] == [
        "linear_attention", "linear_attention", "hyena_li", "full_attention"]
    swax_config = bench.model_config("125m-swax", 259)
    assert swax_config.layer_types[:2] == ["sliding_attention", "mlstm"] and "full_attention" not in swax_config.layer_types
    assert bench.recipe_of("125m-swax").train_args == bench.SWAX_ARGS
    with pytest.raises(ValueError, match="unknown configuration"):
        bench.model_config("125m-nope", 259)
    args = bench.parser().parse_args(["run", "c", "o", "--configs", "125m-swa", "--steps", "9", "--seq-len", "8",
                                      "--batch-size", "2"])
    swax = bench.recipe_of("125m-multi-swax").train_args
    assert bench.train_command(args, Path("c.json"), Path("m"), 9, swax)[-3:] == ["--swax", "--swax-long-window", "2048"]
    assert "--swax" not in bench.train_command(args, Path("c.json"), Path("m"), 9, bench.recipe_of("125m-multi").train_args)


def test_bench_with_a_bpe_tokenizer(bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The tokenizer command learns BPE on the training files; run trains and scores with it and records it;
    a results folder holds one tokenizer's runs."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    corpus, out = tmp_path / "corpus", tmp_path / "results"
    assert bench.main(["corpus", str(corpus), "--packages", TRAIN_PACKAGE, "--held-out", HELD_OUT_PACKAGE]) == 0
    assert bench.main(["tokenizer", str(corpus), "--vocab-size", "400"]) == 0
    assert "bytes per token" in capsys.readouterr().out
    folder = corpus / "tokenizer-bpe400"
    assert bench.main(["tokenizer", str(corpus), "--vocab-size", "400"]) == 1  # exists: needs --force
    capsys.readouterr()
    common = ["--steps", "3", "--seq-len", "32", "--batch-size", "2", "--eval-mb", "0.02", "--logging-steps", "1",
              "--recall-tasks"]
    assert bench.main(["run", str(corpus), str(out), "--configs", "tiny-phalanx", *common, "--tokenizer", str(folder)]) == 0
    r = json.loads((out / "tiny-phalanx.tokens.json").read_text())
    assert r["tokenizer"]["name"] == "tokenizer-bpe400" and r["tokenizer"]["vocab_size"] == 400
    assert json.loads((out / "runs" / "tiny-phalanx.tokens" / "config.json").read_text())["vocab_size"] == 400
    assert 0 < r["heldout"]["bits_per_byte"] < 20 and r["tokens"] == 3 * 32 * 2
    assert bench.main(["run", str(corpus), str(out), "--configs", "tiny-swa", *common]) == 1
    assert "another tokenizer than byte" in capsys.readouterr().err
    assert bench.main(["report", str(out)]) == 0
    assert "tokenizer-bpe400 tokenizer" in capsys.readouterr().out


def test_steady_speed_skips_warm_up(bench) -> None:
    """Tokens/s between the logged step at a quarter of the run and the last: a slow first step is left out."""
    log = [{"loss": 1.0, "step": s, "num_input_tokens_seen": 100 * s, "train_runtime": 10.0 + 0.5 * s} for s in range(1, 9)]
    log.append({"step": 8, "num_input_tokens_seen": 800, "train_runtime": 15.0, "train_loss": 1.0})  # the summary
    assert bench.steady_tokens_per_second(log) == pytest.approx(200.0)
    with pytest.raises(ValueError, match="fewer than two steps"):
        bench.steady_tokens_per_second(log[:1])


def test_bench_end_to_end(bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the training subprocesses; the test machine is small and shared
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    fake_package(tmp_path / "site", "qb_fake_pkg")
    corpus, out = tmp_path / "corpus", tmp_path / "results"

    # corpus: missing packages named, non-UTF-8 skipped and counted, duplicates dropped (held-out kept)
    assert bench.main(["corpus", str(corpus), "--packages", TRAIN_PACKAGE, "qb_fake_pkg", "no_such_pkg_qb",
                       "--held-out", HELD_OUT_PACKAGE]) == 0
    printed = capsys.readouterr().out
    assert "not installed (skipped): no_such_pkg_qb" in printed and "| qb_fake_pkg | train |" in printed
    info = json.loads((corpus / "corpus.json").read_text())
    fake = info["packages"]["qb_fake_pkg"]
    assert fake["not_utf8"] == ["latin1.py"] and fake["duplicates"] == 2 and fake["files"] == 2
    assert info["packages"][TRAIN_PACKAGE]["version"] == f"{TRAIN_PACKAGE} {importlib.metadata.version(TRAIN_PACKAGE)}"
    assert info["missing"] == ["no_such_pkg_qb"] and info["held_out"] == HELD_OUT_PACKAGE
    held = sorted(p.relative_to(corpus / "heldout" / HELD_OUT_PACKAGE).as_posix()
                  for p in (corpus / "heldout").rglob("*.txt"))
    assert "__init__.py.txt" in held and info["heldout"]["files"] == len(held)
    train_files = list((corpus / "train").rglob("*.py.txt"))
    assert len(train_files) == info["train"]["files"] == info["packages"][TRAIN_PACKAGE]["files"] + 2
    assert sum(len(p.read_bytes()) for p in train_files) == info["train"]["bytes"]
    assert (corpus / "train" / "qb_fake_pkg" / "crlf.py.txt").read_bytes() == b"x = 1\r\ny = 2\r\n"
    assert not list((corpus / "train").rglob("copied.py.txt")) and not list((corpus / "train").rglob("latin1.py.txt"))

    # equal tokens: two configurations, recall through lm-eval on one short distance
    common = ["--seq-len", "32", "--batch-size", "2", "--eval-mb", "0.02", "--logging-steps", "1"]
    assert bench.main(["run", str(corpus), str(out), "--configs", "tiny-transformer", "tiny-phalanx", "--steps", "4", *common,
                       "--recall-tasks", "phalanx_passkey_64", "phalanx_mqar_64", "--recall-limit", "1"]) == 0
    assert "| tiny-phalanx | " in capsys.readouterr().out
    results = {}
    for name in ("tiny-transformer", "tiny-phalanx"):
        r = results[name] = json.loads((out / f"{name}.tokens.json").read_text())
        assert r["steps"] == 4 and r["tokens"] == 4 * 32 * 2 and r["bucket_edges"] == [0, 4, 32]
        assert len(r["train"]["loss_curve"]) == 4 and r["train"]["final_loss"] == r["train"]["loss_curve"][-1][1]
        for value in (r["train"]["tokens_per_second"], r["train"]["final_loss"], r["parameters"]):
            assert math.isfinite(value) and value > 0
        for split in ("heldout", "train_sample"):
            score = r[split]
            assert 0 < score["bits_per_byte"] < 20 and score["files"] >= 1
            buckets = score["buckets"]
            assert sum(b["bytes"] for b in buckets) == score["bytes"]
            mean = sum(b["bits_per_byte"] * b["bytes"] for b in buckets) / score["bytes"]
            assert mean == pytest.approx(score["bits_per_byte"], rel=1e-9)
        families = r["recall"]["families"]
        assert set(families) == {"phalanx_passkey", "phalanx_mqar"}
        assert all(0 <= f["mean_acc"] <= 1 and f["by_distance"][0]["distance"] == 64 for f in families.values())
        run_dir = out / "runs" / f"{name}.tokens"
        assert {"config.json", "train.log", "trainer_state.json", "loss_curve.png", "recall_results.json"} <= {
            p.name for p in run_dir.iterdir()}
        assert not (run_dir / "model").exists()  # weights dropped without --keep-models
        assert json.loads((run_dir / "config.json").read_text())["layer_types"] == r["layer_types"]
    assert results["tiny-transformer"]["layer_types"] != results["tiny-phalanx"]["layer_types"]
    def schedule(cmd: list[str]) -> list[str]:  # the command without the config file and output folder
        return [a for i, a in enumerate(cmd) if i > 0 and cmd[i - 1] not in ("--model-config", "--output")]

    assert schedule(results["tiny-transformer"]["train_command"]) == schedule(results["tiny-phalanx"]["train_command"])

    # an existing result is skipped; a wall-clock budget needs an equal-token result of the same configuration
    assert bench.main(["run", str(corpus), str(out), "--configs", "tiny-transformer", "--steps", "4", *common]) == 0
    assert "exists, skipped" in capsys.readouterr().out
    assert bench.main(["run", str(corpus), str(out), "--configs", "tiny-swa", *common,
                       "--budget", "seconds", "--seconds", "5"]) == 1
    assert "run tiny-swa with --budget tokens first" in capsys.readouterr().err
    assert bench.main(["run", str(corpus), str(out), "--configs", "tiny-phalanx", "--steps", "4", *common,
                       "--budget", "seconds", "--seconds", "5"]) == 1
    assert "--steps goes with --budget tokens" in capsys.readouterr().err

    # equal wall-clock: steps from the configuration's measured speed; recall skipped and says why
    seconds = 2.0
    assert bench.main(["run", str(corpus), str(out), "--configs", "tiny-phalanx", *common,
                       "--budget", "seconds", "--seconds", str(seconds), "--recall-tasks"]) == 0
    clock = json.loads((out / "tiny-phalanx.seconds-2.json").read_text())
    speed = results["tiny-phalanx"]["train"]["tokens_per_second"]
    assert clock["steps"] == max(1, int(seconds * speed / (32 * 2))) and clock["seconds_budget"] == seconds
    assert clock["recall"] == {"skipped": "no --recall-tasks given"}

    other = json.loads((out / "tiny-transformer.tokens.json").read_text())
    other["corpus"]["fingerprint"] = "0" * 64
    (out / "elsewhere.tokens.json").write_text(json.dumps(other))
    assert bench.main(["run", str(corpus), str(out), "--configs", "tiny-swa", "--steps", "4", *common]) == 1
    assert "holds results measured on another corpus" in capsys.readouterr().err
    (out / "elsewhere.tokens.json").unlink()

    # the speed command measures a configuration's training speed again; tables and plots then use that figure
    swa = json.loads((out / "tiny-transformer.tokens.json").read_text())
    assert bench.throughput(out, swa) == swa["train"]["tokens_per_second"]
    assert bench.main(["speed", str(corpus), str(out), "--configs", "tiny-transformer", "--seq-len", "32",
                       "--batch-size", "2", "--steps", "8", "--logging-steps", "1"]) == 0
    measured = json.loads((out / "tiny-transformer.speed.json").read_text())
    assert measured["steps"] == 8 and measured["tokens_per_second"] > 0
    assert bench.throughput(out, swa) == measured["tokens_per_second"]
    assert not (out / "runs" / "tiny-transformer.speed" / "model").exists()

    assert bench.main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "### Equal tokens" in text and "### Equal wall-clock time" in text
    assert "phalanx_passkey acc @ 64" in text and text.count("| tiny-phalanx |") >= 3
    assert (out / "report.md").read_text() in text
    assert (out / "frontier.png").stat().st_size > 10_000
    assert bench.main(["report", str(tmp_path / "empty")]) == 1
    assert "no results" in capsys.readouterr().err
