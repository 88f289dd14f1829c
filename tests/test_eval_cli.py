"""`phalanx eval` and the plain `lm_eval` CLI on a tiny Phalanx model, checked against direct model calls."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from by_path import import_file

from modeling_phalanx import PhalanxForCausalLM
from phalanx_cli.main import main
from phalanx_eval.harness import TASK_DIR
from phalanx_eval.plots import plot_recall, recall_curves
from phalanx_training.tokenizer import BYTE_OFFSET, load_byte_tokenizer

MAX_LENGTH = 96
DISTANCES = [64, 128, 256, 512, 1024, 2048, 4096, 8192]


def _loader_docs():
    """The task folder's loader (imported by path, as lm-eval does) for the reference computation."""
    return import_file(TASK_DIR / "loader.py", "phalanx_task_loader_ref")


@pytest.fixture(scope="module")
def eval_run(tiny_model, tmp_path_factory) -> Path:
    """`phalanx eval` with the default tasks (bpb + passkey and MQAR groups), one document per task."""
    out = tmp_path_factory.mktemp("eval") / "results.json"
    argv = ["eval", str(tiny_model), "--limit", "1", "--max-length", str(MAX_LENGTH), "--batch-size", "4",
            "--device", "cpu", "--output", str(out)]
    assert main(argv) == 0
    return out


def _byte_ids(text: str) -> list[int]:
    return [b + BYTE_OFFSET for b in text.encode()]


def test_results_json_holds_every_metric_and_the_plot(eval_run):
    results = json.loads(eval_run.read_text())
    bpb = results["results"]["phalanx_bpb"]
    assert {"bits_per_byte,none", "byte_perplexity,none", "word_perplexity,none"} <= set(bpb)
    for family in ("passkey", "mqar"):
        for d in DISTANCES:
            metrics = results["results"][f"phalanx_{family}_{d}"]
            assert metrics["acc,none"] in (0.0, 1.0) and math.isfinite(metrics["perplexity,none"])
        assert "acc,none" in results["results"][f"phalanx_{family}"]  # group aggregate
    assert results["config"]["max_length"] == MAX_LENGTH
    curves = recall_curves(results)
    assert list(curves) == ["phalanx_mqar", "phalanx_passkey"]
    assert all([p.distance for p in points] == DISTANCES for points in curves.values())
    png = eval_run.with_name("results_recall.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_equal_a_direct_computation(eval_run, tiny_model):
    """Recompute every task's first document with the model itself (float64 log-softmax)."""
    results = json.loads(eval_run.read_text())["results"]
    model = PhalanxForCausalLM.from_pretrained(tiny_model).eval()
    loader = _loader_docs()

    def log_probs(inputs: list[list[int]]) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor(inputs)).logits.double().log_softmax(-1)

    names, sequences, targets = [], [], []
    for family, make_docs in (("passkey", loader.passkey_docs), ("mqar", loader.mqar_docs)):
        for d in DISTANCES:
            doc = make_docs(d)[0]
            names.append(f"phalanx_{family}_{d}")
            targets.append(_byte_ids(doc["target"]))
            sequences.append((_byte_ids(doc["context"]) + targets[-1])[-(MAX_LENGTH + 1) :])  # cut from the left
    assert {len(s) for s in sequences} == {MAX_LENGTH + 1}  # every context is longer than MAX_LENGTH
    lp_all = log_probs([s[:-1] for s in sequences])
    for name, target, lp in zip(names, targets, lp_all):
        lp = lp[-len(target) :]
        ll = sum(lp[i, t].item() for i, t in enumerate(target))
        greedy = all(lp[i].argmax().item() == t for i, t in enumerate(target))
        assert results[name]["acc,none"] == float(greedy), name
        assert results[name]["perplexity,none"] == pytest.approx(math.exp(-ll), rel=1e-4), name

    # Rolling windows: the first sees <bos> then the text; each later one predicts the next MAX_LENGTH
    # bytes (or the rest) from the MAX_LENGTH bytes before them.
    text = loader.heldout_text()["test"][0]["text"]
    ids = _byte_ids(text)
    bos = load_byte_tokenizer().bos_token_id
    windows, predicted = [([bos] + ids[: MAX_LENGTH - 1], ids[:MAX_LENGTH])], MAX_LENGTH
    while predicted < len(ids):
        n = min(MAX_LENGTH, len(ids) - predicted)
        windows.append((ids[predicted + n - MAX_LENGTH - 1 : predicted + n - 1], ids[predicted : predicted + n]))
        predicted += n
    lp_all = log_probs([w for w, _ in windows])
    total = sum(lp[-len(t) :].gather(-1, torch.tensor(t)[:, None]).sum().item() for lp, (_, t) in zip(lp_all, windows))
    bits_per_byte = -total / (len(text.encode()) * math.log(2))
    assert results["phalanx_bpb"]["bits_per_byte,none"] == pytest.approx(bits_per_byte, rel=1e-4)


def test_plain_lm_eval_cli_gives_the_same_metrics(eval_run, tiny_model, tmp_path, offline_env):
    """`lm_eval --include_path` in a fresh process (the folder's remote code) matches `phalanx eval`."""
    tasks = ["phalanx_bpb", "phalanx_passkey_64", "phalanx_mqar_512"]
    env = {**os.environ, **offline_env, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    cmd = [
        sys.executable, "-m", "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={tiny_model},trust_remote_code=True,max_length={MAX_LENGTH}",
        "--tasks", ",".join(tasks), "--include_path", str(TASK_DIR), "--device", "cpu", "--batch_size", "4",
        "--limit", "1", "--output_path", str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp_path / "out").rglob("results_*.json")
    plain = json.loads(path.read_text())["results"]
    ours = json.loads(eval_run.read_text())["results"]
    for task in tasks:
        for key, value in ours[task].items():
            if isinstance(value, float):
                assert plain[task][key] == pytest.approx(value, rel=1e-4), (task, key)  # batches differ


def test_plot_needs_a_distance_task(eval_run, tmp_path):
    results = json.loads(eval_run.read_text())
    only_bpb = {**results, "results": {"phalanx_bpb": results["results"]["phalanx_bpb"]}}
    assert plot_recall(only_bpb, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_cli_errors_are_one_clear_line(tiny_model, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    assert main(["eval", str(tiny_model), "--tasks", "phalanx_bpb", "phalanx_passkey_3", "--output", out]) == 1
    err = capsys.readouterr().err
    assert "unknown task(s): phalanx_passkey_3" in err and "phalanx_passkey_64" in err and "phalanx_bpb" in err

    assert main(["eval", str(tmp_path / "missing"), "--output", out]) == 1
    assert "model folder not found" in capsys.readouterr().err

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert main(["eval", str(broken), "--output", out]) == 1
    assert "corrupt config.json" in capsys.readouterr().err

    shutil.copytree(tiny_model, broken, dirs_exist_ok=True)
    (broken / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes()[:-100])
    assert main(["eval", str(broken), "--tasks", "phalanx_passkey_64", "--output", out]) == 1
    assert f"cannot load the model {broken}" in capsys.readouterr().err

    assert main(["eval", str(tiny_model), "--output", str(tmp_path / "r.txt")]) == 1
    assert "--output must end in .json" in capsys.readouterr().err
    assert not list(tmp_path.glob("r*"))
