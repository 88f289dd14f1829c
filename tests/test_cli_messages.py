"""What the tools print and write says what it is: the files `--data` reads, one labelled loss summary, labelled
progress bars, titled plots, a demo hint that a shell reads back, FutureWarnings once, lm-eval's comma form
of `--tasks`, a left-padding byte tokenizer, and model cards that say when lm-eval ran with `--limit`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from phalanx_cli.demo import HINT_PROMPT, generate_hint
from phalanx_cli.main import main
from phalanx_hub.card import eval_results, render_card
from phalanx_training import callbacks
from phalanx_training.callbacks import loss_summary
from phalanx_training.tokenizer import BYTE_TOKENIZER_DIR, build_byte_tokenizer, load_byte_tokenizer


def test_train_names_its_files_and_labels_bar_loss_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "my_texts"
    (corpus / "sub").mkdir(parents=True)
    text = "Now is the winter of our discontent made glorious summer by this sun of York.\n" * 4
    for name in ("a.txt", "sub/b.md", "c.text"):
        (corpus / name).write_text(text)
    (corpus / "notes.json").write_text("{}")  # not read
    titles = []
    monkeypatch.setattr(callbacks, "plot_loss_curve", lambda history, path, title: titles.append(title))
    out = tmp_path / "run"
    argv = ["train", "--model-config", "tiny-phalanx", "--data", str(corpus), "--seq-len", "16", "--batch-size", "2",
            "--max-steps", "2", "--logging-steps", "1", "--precision", "fp32", "--output", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"3 text files (*.txt *.md *.text) from {corpus}" in captured.out
    (done,) = [line for line in captured.out.splitlines() if line.startswith("phalanx train: done")]
    assert "training loss (nats/token) first logged" in done and "-> last logged" in done and "mean over the run" in done
    assert "phalanx train tiny-phalanx: 100%" in captured.err  # the progress bar's label
    assert titles and all("PhalanxForCausalLM" in t and "linear_attention" in t and str(out) in t for t in titles)

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "folders searched recursively for *.txt *.md *.text" in " ".join(capsys.readouterr().out.split())


def test_loss_summary_labels_each_number() -> None:
    history = [{"step": 1, "loss": 3.4281}, {"step": 2, "loss": 1.4942}, {"step": 2, "train_loss": 1.8931}]
    assert loss_summary(history) == ("training loss (nats/token) first logged 3.428 -> last logged 1.494, "
                                     "mean over the run 1.893")
    assert loss_summary(history[-1:]) == "training loss (nats/token) mean over the run 1.893"
    assert loss_summary([]) == "no training loss logged"


def test_demo_hint_reads_back_as_the_prompt(tmp_path: Path) -> None:
    """Run the printed hint through bash: the prompt arrives with a real newline, not backslash-n."""
    hint = generate_hint(tmp_path / "demo dir" / "export", HINT_PROMPT)
    assert hint.startswith("phalanx generate ")
    words = subprocess.run(["bash", "-c", "printf '%s\\0' " + hint.removeprefix("phalanx ")],
                           capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
    assert words == ["generate", str(tmp_path / "demo dir" / "export"), "--prompt", "CASSIUS.\n", "--do-sample"]


def test_demo_says_what_each_stage_does(tmp_path: Path, offline_env: dict[str, str]) -> None:
    """A shortened demo as a user runs it: stage messages, a labelled teacher bar, one loss summary per run
    whose numbers are labelled, no warning printed twice, and a closing hint with a real newline."""
    from test_model_cli import DEMO_ARGS

    env = {**os.environ, **offline_env}
    proc = subprocess.run([sys.executable, "-m", "phalanx_cli.main", "demo", *DEMO_ARGS, "--output-dir", str(tmp_path / "demo")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, err = proc.stdout, proc.stderr.replace("\r", "\n")
    for message in ("training the Gemma3 teacher", "converting the teacher's sliding-window layers",
                    "distilling the student"):
        assert message in out, message
    for message in ("teacher (Gemma3, sliding-window layers):", "distill: held-out bits/byte of the teacher",
                    "distill: held-out bits/byte of the student after stage 2"):
        assert message in err, message
    assert "[1/6] train hybrid: training loss (nats/token) first logged" in out
    assert not re.search(r"\bloss \d", out)  # every printed loss says which loss it is
    warned = Counter(line for line in err.splitlines() if re.search(r"\w+Warning: ", line))
    assert all(count == 1 for count in warned.values()), warned
    assert out.rstrip().endswith("--prompt $'CASSIUS.\\n' --do-sample")


def test_each_future_warning_is_printed_once(tmp_path: Path) -> None:
    """Libraries enter `warnings.catch_warnings` between stages, which makes the default filter repeat a warning."""
    script = """
import sys, types, warnings
from phalanx_cli import main as cli
def run(args):
    for _ in range(3):
        with warnings.catch_warnings():
            pass
        warnings.warn("an old argument", FutureWarning)
    return 0
sys.modules["fake_command"] = types.SimpleNamespace(add_arguments=lambda parser: None, run=run)
cli.COMMANDS["fake"] = ("fake_command", "emits a FutureWarning three times")
sys.exit(cli.main(["fake"]))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("FutureWarning: an old argument") == 1


def test_eval_takes_comma_separated_tasks(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "r.json")
    assert main(["eval", str(tiny_model), "--tasks", "phalanx_bpb,phalanx_passkey_3", "--output", out]) == 1
    assert "unknown task(s): phalanx_passkey_3." in capsys.readouterr().err  # phalanx_bpb was recognised


def test_byte_tokenizer_pads_left_and_matches_its_builder(tmp_path: Path) -> None:
    build_byte_tokenizer().save_pretrained(tmp_path)
    for shipped in BYTE_TOKENIZER_DIR.iterdir():
        assert (tmp_path / shipped.name).read_bytes() == shipped.read_bytes(), shipped.name
    tokenizer = load_byte_tokenizer()
    assert tokenizer.padding_side == "left"
    batch = tokenizer(["To be", "To be, or not"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0] == tokenizer.pad_token_id and batch["input_ids"][0, -1] != tokenizer.pad_token_id


def test_padded_batch_predicts_like_each_prompt_alone(tiny_model: Path) -> None:
    """With the tokenizer's own (left) padding, a short prompt's next-token logits in a batch equal its logits alone:
    generation continues from the prompt's last token, not from padding."""
    tokenizer = load_byte_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompts = ["To be", "To be, or not to be"]
    with torch.no_grad():
        batch = model(**tokenizer(prompts, padding=True, return_tensors="pt")).logits[:, -1]
        alone = [model(**tokenizer(p, return_tensors="pt")).logits[0, -1] for p in prompts]
    torch.testing.assert_close(batch, torch.stack(alone), atol=1e-5, rtol=1e-4)


RESULTS = {
    "results": {"phalanx_bpb": {"bits_per_byte,none": 2.5}, "phalanx_passkey_64": {"acc,none": 0.25}},
    "config": {"max_length": 96, "limit": 8},
    "n-samples": {"phalanx_passkey_64": {"original": 50, "effective": 8}, "phalanx_bpb": {"original": 80, "effective": 8}},
}


def test_model_card_says_when_lm_eval_ran_with_a_limit() -> None:
    from modeling_phalanx import PhalanxConfig

    config = PhalanxConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           layer_types=["linear_attention", "full_attention"])
    card = render_card(config, model_name="m", repo_id="org/m", license="apache-2.0", results=RESULTS)
    assert "lm-eval ran with `--limit 8`" in card.text
    assert "documents scored: phalanx_bpb 8 of 80, phalanx_passkey_64 8 of 50" in card.text
    assert {r.source_name for r in card.data.eval_results} == {"lm-evaluation-harness (--limit 8)"}
    full = {**RESULTS, "config": {"max_length": 96}}
    assert "--limit" not in render_card(config, model_name="m", repo_id="org/m", license="apache-2.0", results=full).text
    assert {r.source_name for r in eval_results(full)} == {"lm-evaluation-harness"}
