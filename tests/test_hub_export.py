"""`phalanx export`: a Hub folder that a process without the project loads and generates from; cards; errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import modeling_phalanx
from modeling_phalanx import PhalanxConfig, PhalanxForCausalLM
from phalanx_cli.main import main
from phalanx_hub.card import load_provenance, render_card
from phalanx_training.tokenizer import load_byte_tokenizer

PROMPT = "To be, or not"
NEW_TOKENS = 8
RESULTS = {
    "results": {
        "phalanx_bpb": {"alias": "phalanx_bpb", "bits_per_byte,none": 2.5, "bits_per_byte_stderr,none": "N/A"},
        "phalanx_passkey_64": {"alias": "phalanx_passkey_64", "acc,none": 0.25, "acc_stderr,none": 0.1,
                               "perplexity,none": 12.5},
    },
    "versions": {"phalanx_bpb": 1.0, "phalanx_passkey_64": 1.0},
    "config": {"max_length": 96},
}

# Runs with `python -I -S`: no site-packages processing, so the editable install's import hook is absent;
# only the environment's installed packages are put on sys.path.
CLEAN_SCRIPT = """
import importlib.util, json, sys
sys.path.extend(json.loads(sys.argv[1]))
for name in ("modeling_phalanx", "phalanx_kernels", "phalanx_hub", "phalanx_cli"):
    assert importlib.util.find_spec(name) is None, name + " is importable"
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("hub_model", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained("hub_model", trust_remote_code=True)
inputs = tokenizer(sys.argv[2], return_tensors="pt")
tokens = model.generate(**inputs, max_new_tokens=int(sys.argv[3]), do_sample=False)[0].tolist()
print(json.dumps({
    "tokens": tokens,
    "causal_lm": type(model).__module__,
    "base": type(AutoModel.from_pretrained("hub_model", trust_remote_code=True)).__name__,
    "config": type(AutoConfig.from_pretrained("hub_model", trust_remote_code=True)).__name__,
    "project_modules": sorted(m for m in sys.modules if m.startswith(("modeling_phalanx", "phalanx_"))),
}))
"""


@pytest.fixture()
def results_file(tmp_path) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULTS))
    return path


def _greedy_reference(model_dir: Path) -> list[int]:
    tokenizer = load_byte_tokenizer()
    model = PhalanxForCausalLM.from_pretrained(model_dir).eval()
    inputs = tokenizer(PROMPT, return_tensors="pt")
    return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist()


def test_export_loads_and_generates_without_the_project(tiny_model, results_file, tmp_path, offline_env):
    out = tmp_path / "export" / "phalanx-tiny"
    assert main(["export", str(tiny_model), str(out), "--eval-results", str(results_file)]) == 0

    config = json.loads((out / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    assert all((out / f"{ref.split('.')[0]}.py").is_file() for ref in config["auto_map"].values())
    package = Path(modeling_phalanx.__file__).parent
    for source in package.glob("*.py"):
        copied = out / source.name
        assert copied.is_file() == (source.name != "__init__.py")
        if copied.is_file():
            assert copied.read_bytes() == source.read_bytes() and not copied.is_symlink()  # swr_torch.py is a link here
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json", "README.md", "eval_results.json"):
        assert (out / name).is_file(), name
    assert [p.name for p in out.parent.iterdir()] == ["phalanx-tiny"]  # no temporary folders left

    clean = tmp_path / "clean"
    clean.mkdir()
    shutil.copytree(out, clean / "hub_model")
    paths = json.dumps(sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(clean), "HF_MODULES_CACHE": str(clean / "modules"), **offline_env}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CLEAN_SCRIPT, paths, PROMPT, str(NEW_TOKENS)],
        cwd=clean, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["project_modules"] == []
    assert loaded["causal_lm"].startswith("transformers_modules.")
    assert (loaded["base"], loaded["config"]) == ("PhalanxModel", "PhalanxConfig")
    assert loaded["tokens"] == _greedy_reference(tiny_model)

    card = ModelCard.load(out / "README.md")
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()
    data = card.data
    assert (data.license, data.library_name, data.pipeline_tag) == ("apache-2.0", "transformers", "text-generation")
    assert {"phalanx", "custom_code"} <= set(data.tags) and data.base_model is None
    assert data.model_name == "phalanx-tiny"
    assert {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results} == {
        ("phalanx_bpb", "bits_per_byte"): 2.5,
        ("phalanx_passkey_64", "acc"): 0.25,
        ("phalanx_passkey_64", "perplexity"): 12.5,
    }
    assert '"phalanx-tiny", trust_remote_code=True' in card.text
    assert "| 0 | Phalanx (sliding window recurrence) | 2 heads of dim 16, blocks of 16, 2 blocks" in card.text
    assert "| 1 | sliding-window attention | window 24 tokens |" in card.text
    assert "| phalanx_passkey_64 | acc | 0.25 |" in card.text


@pytest.mark.parametrize(
    ("source", "base_model"), [("Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B"), ("LOCAL", None)]
)
def test_conversion_record_gives_base_model_and_provenance(tiny_model, tmp_path, source, base_model):
    converted = tmp_path / "converted"
    converted.mkdir()
    source = str(tiny_model) if source == "LOCAL" else source  # an existing local folder is no Hub id
    record = {"model_type": "qwen3", "source": source, "converted_layers": [0, 2], "init": "attention"}
    (converted / "phalanx_conversion.json").write_text(json.dumps(record))
    card = render_card(PhalanxConfig.from_pretrained(tiny_model), model_name="m", repo_id="me/m", license="mit", provenance=load_provenance(converted))
    data = ModelCard(str(card)).data
    assert data.base_model == base_model and data.license == "mit"
    assert {"converted", "converted-from-qwen3"} <= set(data.tags)
    assert "- converted layers: 0, 2" in card.text and '- init: `"attention"`' in card.text
    assert data.eval_results is None and "No evaluation results" in card.text


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_export_errors_name_the_problem_and_write_nothing(tiny_model, results_file, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"

    def fails(argv: list[str], message: str) -> None:
        before = _entries(work)
        assert main(argv) == 1
        assert message in capsys.readouterr().err
        assert _entries(work) == before

    fails(["export", str(tmp_path / "missing"), str(out)], "model folder not found")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    (bad / "config.json").write_text("{")
    fails(["export", str(bad), str(out)], "corrupt config.json")
    (bad / "config.json").write_text(json.dumps({"model_type": "llama"}))
    fails(["export", str(bad), str(out)], "is not a Phalanx config (model_type 'llama'")
    shutil.copy2(tiny_model / "config.json", bad / "config.json")
    (bad / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes()[:200])
    fails(["export", str(bad), str(out)], "cannot load the model")
    (bad / "model.safetensors").unlink()
    fails(["export", str(bad), str(out)], "no weights in")

    (tmp_path / "not_lm_eval.json").write_text(json.dumps({"accuracy": 0.5}))
    fails(["export", str(tiny_model), str(out), "--eval-results", str(tmp_path / "not_lm_eval.json")],
          "is not lm-eval output")
    (tmp_path / "not_json.json").write_text("acc=0.5")
    fails(["export", str(tiny_model), str(out), "--eval-results", str(tmp_path / "not_json.json")], "is not JSON")
    fails(["export", str(tiny_model), str(out), "--eval-results", str(tmp_path / "none.json")],
          "results file not found")

    converted = tmp_path / "converted"
    shutil.copytree(tiny_model, converted)
    (converted / "phalanx_conversion.json").write_text("{broken")
    fails(["export", str(converted), str(out)], "corrupt phalanx_conversion.json")
    fails(["export", str(tiny_model), str(tiny_model / "inside")], "lies inside the input")

    out.mkdir()
    (out / "keep.txt").write_text("old export")
    fails(["export", str(tiny_model), str(out)], "already exists")
    assert (out / "keep.txt").read_text() == "old export"
    assert main(["export", str(tiny_model), str(out), "--force", "--eval-results", str(results_file)]) == 0
    assert not (out / "keep.txt").exists() and (out / "README.md").is_file()
    assert _entries(work) == ["out"]
