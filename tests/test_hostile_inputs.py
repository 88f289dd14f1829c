"""The hostile-input sweep (issue 13) kept as tests: nothing lost, nothing silently wrong, no model code run
without consent. docs/HOSTILE_INPUTS.md lists what is refused and how; every test here failed on the code
before its fix (CPU, tiny models, nothing downloaded)."""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import phalanx_conversion.convert as convert_module
import phalanx_hub.export as export_module
from modeling_phalanx import PhalanxConfig, PhalanxForCausalLM
from phalanx_kernels.swr_torch import swr_torch
from phalanx_cli.main import main
from phalanx_conversion.convert import convert_checkpoint
from phalanx_conversion.distill import bits_per_byte
from phalanx_eval.harness import evaluate
from phalanx_hub.export import export
from phalanx_kernels import SWRState, swr, swr_step
from phalanx_training.data import read_texts
from phalanx_training.folders import CLAIM_MARK, output_folder
from phalanx_training.options import resume_checkpoint

from fakes import ChunkTokenizer, UniformModel
from swr_oracle import swr_oracle
from test_conversion_families import make_source

ROOT = Path(__file__).resolve().parent.parent


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def claims(parent: Path) -> list[Path]:
    """Temporary claim folders (or files) of the output writer left in ``parent``."""
    return [p for p in parent.iterdir() if CLAIM_MARK in p.name]


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The one error line of a failed command (asserts there is exactly one and no traceback; progress
    bars of loading are not errors)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("phalanx ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Gemma3 checkpoint with sliding-window layers."""
    return make_source("gemma3_text", tmp_path_factory.mktemp("src") / "gemma3")


@pytest.fixture(scope="module")
def student(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("student") / "student"
    convert_checkpoint(source, out)
    return out


# ------------------------------------------------------------------ 1, 10: --force never deletes an input


def test_convert_never_writes_over_or_inside_its_source(source: Path, tmp_path: Path) -> None:
    work = tmp_path / "p"
    src = work / "src"
    shutil.copytree(source, src)
    (work / "notes.txt").write_text("user data")
    before = snapshot(work)
    with pytest.raises(ValueError, match=r"output .*p contains the input .*src; replacing it would delete that input"):
        convert_checkpoint(src, work, force=True)
    with pytest.raises(ValueError, match=r"output .*src is the input .*src; choose another output"):
        convert_checkpoint(src, src, force=True)
    with pytest.raises(ValueError, match=r"output .*out lies inside the input .*src; choose an output outside it"):
        convert_checkpoint(src, src / "out")
    assert snapshot(work) == before


def test_export_never_writes_over_its_model(tiny_model: Path, tmp_path: Path) -> None:
    work = tmp_path / "p"
    shutil.copytree(tiny_model, work / "model")
    before = snapshot(work)
    with pytest.raises(ValueError, match="contains the input"):
        export(work / "model", work, force=True)
    with pytest.raises(ValueError, match="is the input"):
        export(work / "model", work / "model", force=True)
    assert snapshot(work) == before


def test_distill_out_never_overlaps_teacher_or_student(source: Path, student: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "p"
    shutil.copytree(source, work / "teacher")
    shutil.copytree(student, work / "student")
    before = snapshot(work)
    teacher_arg, student_arg = str(work / "teacher"), str(work / "student")
    assert main(["distill", teacher_arg, student_arg, "--out", student_arg, "--force"]) == 1
    assert "is the input" in one_error_line(capsys)
    assert main(["distill", teacher_arg, student_arg, "--out", str(work), "--force"]) == 1
    assert "contains the input" in one_error_line(capsys)
    assert snapshot(work) == before
    assert main(["distill", str(tmp_path / "no-teacher"), student_arg, "--out", str(tmp_path / "o")]) == 1
    assert "teacher " in (line := one_error_line(capsys)) and "is not a local checkpoint folder" in line


def test_demo_output_never_replaces_the_shipped_data(capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--output-dir", str(ROOT / "data"), "--steps", "1"]) == 1
    assert "contains the input" in one_error_line(capsys)


# ---------------------------------------------------------- 5, 10: atomic, claimed, cleaned-up outputs


def test_failed_write_keeps_the_replaced_output_and_leaves_nothing(source: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous result")

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert_module.shutil, "copy2", disk_full)  # fails after the weights are written
    with pytest.raises(OSError, match="No space left"):
        convert_checkpoint(source, out, force=True)
    assert snapshot(out) == {"keep.txt": hashlib.sha256(b"previous result").hexdigest()}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_second_writer_of_the_same_output_is_refused(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_folder(out) as staging:
        (staging / "first.txt").write_text("first writer")
        with pytest.raises(ValueError, match=r"another process is writing .*out right now"):
            convert_checkpoint(source, out)
    assert snapshot(out) == {"first.txt": hashlib.sha256(b"first writer").hexdigest()}

    # An output that appears while a writer works (written by a tool that does not claim) is not replaced.
    late = tmp_path / "late"
    with pytest.raises(ValueError, match="already exists; pass --force"):
        with output_folder(late) as staging:
            (staging / "mine.txt").write_text("x")
            late.mkdir()
            (late / "theirs.txt").write_text("y")
    assert [p.name for p in late.iterdir()] == ["theirs.txt"] and claims(tmp_path) == []


def test_claim_of_a_killed_writer_is_reported_and_removed(source: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    script = ("import sys, time; from phalanx_training.folders import output_folder\n"
              "with output_folder(sys.argv[1]) as t:\n"
              "    (t / 'half.bin').write_bytes(b'x' * 100); print('ready', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(ValueError, match="another process is writing"):  # alive: its claim holds
            convert_checkpoint(source, out)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(claims(tmp_path)) == 1 and not out.exists()  # kill -9 ran no cleanup
    convert_checkpoint(source, out)
    assert "left by an interrupted run" in capsys.readouterr().err
    assert claims(tmp_path) == [] and (out / "model.safetensors").is_file()


def test_output_moved_aside_by_a_killed_force_swap_is_put_back(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    previous = tmp_path / f".out{CLAIM_MARK}dead" / "previous"  # killed between the two renames of --force
    previous.mkdir(parents=True)
    (previous / "keep.txt").write_text("the only copy")
    with pytest.raises(ValueError, match="already exists"):
        with output_folder(out):
            pass
    assert (out / "keep.txt").read_text() == "the only copy" and claims(tmp_path) == []
    assert "restored" in capsys.readouterr().err


def test_ctrl_c_prints_one_line_cleans_up_and_exits_130(tiny_model: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    def interrupted(model_dir: Path, tmp: Path, *args: object) -> None:
        (tmp / "README.md").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_write_folder", interrupted)
    assert main(["export", str(tiny_model), str(tmp_path / "out")]) == 130
    assert one_error_line(capsys) == "phalanx export: interrupted"
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------- planted bugs the suite must catch


def test_truncated_source_is_refused_by_the_truncation_check(tmp_path: Path) -> None:
    src = make_source("mistral", tmp_path / "src")
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    # The project's own message (no path of this test contains these words), not a substring of the path.
    with pytest.raises(ValueError, match=r"truncated safetensors file \(tensor '[^']+' ends at byte \d+, data holds \d+\)"):
        convert_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and claims(tmp_path) == []


def test_gemma3_embedding_models_are_refused(source: Path, tmp_path: Path) -> None:
    src = tmp_path / "bidirectional"
    shutil.copytree(source, src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "use_bidirectional_attention": True}))
    with pytest.raises(ValueError, match=r"use_bidirectional_attention=True \(embedding models\) are not causal LMs"):
        convert_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bits_per_byte_divides_by_bytes_when_tokens_span_several() -> None:
    text = "abcdefghij"  # 4 tokens (abc def ghi j); the first token's 3 bytes are not predicted
    got = bits_per_byte(UniformModel(10), ChunkTokenizer(), [text], seq_len=16)
    assert got == pytest.approx(3 * math.log2(10) / 7, rel=1e-6)  # 3 predicted tokens over 7 bytes


# --------------------------------------------------------------- 2: no model code without consent


def hostile_folder(tmp_path: Path, model_type: str, like: Path) -> tuple[Path, Path]:
    """A model folder (tokenizer, weights of ``like``) whose config maps AutoConfig to its own Python file,
    which leaves a marker file when it runs."""
    folder = tmp_path / f"hostile-{model_type}"
    shutil.copytree(like, folder)
    marker = tmp_path / f"ran-{model_type}"
    (folder / "configuration_hostile.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n"
        f"class HostileConfig(PretrainedConfig):\n    model_type = {model_type!r}\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "configuration_hostile.HostileConfig",
                                                   "AutoModelForCausalLM": "configuration_hostile.HostileConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_generate_and_eval_run_no_folder_code_without_the_flag(tiny_model: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    folder, marker = hostile_folder(tmp_path, "hostile", tiny_model)
    assert main(["generate", str(folder), "--prompt", "x", "--device", "cpu"]) == 1
    assert "ships its own model code" in (line := one_error_line(capsys)) and "--trust-remote-code" in line
    with pytest.raises(ValueError, match="pass --trust-remote-code"):
        evaluate(str(folder), ["phalanx_bpb"], limit=1)
    assert not marker.exists()


def test_a_folder_of_the_installed_phalanx_type_uses_the_installed_code(tiny_model: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    folder, marker = hostile_folder(tmp_path, "phalanx", tiny_model)
    assert main(["generate", str(folder), "--prompt", "x", "--max-new-tokens", "2", "--device", "cpu"]) == 0
    assert not marker.exists()


# ------------------------------------------------------------------------- 3, 6: the SWR operator


KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # Triton: interpreted on CPU (conftest)


def swr_impls() -> list:
    """The PyTorch path, and the Triton kernels (on CUDA, else interpreted on CPU) when Triton is installed."""
    impls = [pytest.param(swr_torch, id="torch")]
    try:
        from phalanx_kernels.triton_ops import swr_triton
    except ImportError:
        return impls
    def on_kernel_device(x: torch.Tensor, g: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return swr_triton(x.to(KERNEL_DEVICE), g.to(KERNEL_DEVICE), **kwargs).cpu()

    return [*impls, pytest.param(on_kernel_device, id="triton")]


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 40, 2, 16, generator=gen), torch.nn.functional.logsigmoid(torch.randn(2, 40, 2, generator=gen))


@pytest.mark.parametrize("impl", swr_impls())
def test_gate_zero_gives_the_finite_answer(impl) -> None:
    x, g = inputs()
    g[0, 7, 0] = g[1, 16, 1] = g[1, 17, 1] = float("-inf")  # a = 0: the recurrence restarts there
    y = impl(x, g, block_len=16, window_blocks=2)
    ref, _ = swr_oracle(x, g, 16, 2)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    all_zero = torch.full_like(g, float("-inf"))
    assert torch.equal(impl(x, all_zero, block_len=16, window_blocks=2), x)  # y == x exactly


@pytest.mark.parametrize("impl", swr_impls())
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nonfinite_token_never_reaches_earlier_tokens(impl, bad: float) -> None:
    x, g = inputs(1)
    clean = impl(x, g, block_len=16, window_blocks=2)
    x[0, 5, 1, 3] = bad
    y = impl(x, g, block_len=16, window_blocks=2)
    assert torch.equal(y[0, :5], clean[0, :5]) and torch.equal(y[1], clean[1])


def test_a_huge_window_costs_no_more_than_the_sequence() -> None:
    x, g = inputs(2)
    start = time.perf_counter()
    y = swr(x, g, window_blocks=10**6)  # 40 tokens = 3 blocks: any window of >= 3 blocks sees everything
    assert time.perf_counter() - start < 5.0  # was 67 s
    torch.testing.assert_close(y, swr(x, g, window_blocks=3), rtol=0, atol=0)
    ref, ref_state = swr_oracle(x, g, 16, 300)
    y, state = swr(x, g, window_blocks=300, output_final_state=True)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.h.double(), ref_state, rtol=1e-5, atol=1e-5)


STATE = SWRState(torch.zeros(2, 2, 2, 16), torch.zeros(2, dtype=torch.long))
X1, G1 = torch.randn(2, 2, 16), -torch.rand(2, 2)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: swr(*inputs()[:1], inputs()[1].abs() + 5.0), ValueError, "log_gates must be <= 0"),
        (lambda: swr(inputs()[0], torch.full((2, 40, 2), float("nan"))), ValueError, "log_gates must be <= 0"),
        (lambda: swr_step(X1, G1.abs() + 100.0, STATE, 16), ValueError, "log_gates must be <= 0"),
        (lambda: swr_step(X1, G1, STATE, 7), ValueError, "block_len must be one of"),
        (lambda: swr_step(X1, G1, STATE, 0), ValueError, "block_len must be one of"),
        (lambda: swr_step(X1, G1, tuple(STATE), 16), TypeError, "state must be an SWRState"),
        (lambda: swr_step(X1, G1, SWRState(STATE.h, torch.zeros(3, dtype=torch.long)), 16), ValueError,
         r"state.pos must be an integer tensor of shape \(2,\)"),
        (lambda: swr_step(X1.long(), G1, STATE, 16), TypeError, "x must be a floating-point tensor"),
        (lambda: swr(inputs()[0][:1], inputs()[1][:1], cu_seqlens=torch.tensor([0, 10, 40], device="meta")),
         ValueError, "cu_seqlens is on the meta device"),
    ],
    ids=["positive-gates", "nan-gates", "step-positive-gates", "block-len-7", "block-len-0", "tuple-state",
         "pos-batch", "integer-x", "meta-cu-seqlens"],
)
def test_swr_entry_points_refuse_bad_arguments(call, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


# ---------------------------------------------------------------------------- 9: PhalanxConfig


BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            layer_types=["linear_attention", "full_attention"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(num_attention_heads=0), "num_attention_heads must be a positive integer"),
        (dict(num_key_value_heads=0), "num_key_value_heads must be a positive integer"),
        (dict(phalanx_num_gate_groups=0), "phalanx_num_gate_groups must be a positive integer"),
        (dict(head_dim=0), "head_dim must be a positive integer"),
        (dict(vocab_size=0), "vocab_size must be a positive integer"),
        (dict(intermediate_size=0), "intermediate_size must be a positive integer"),
        (dict(max_position_embeddings=0), "max_position_embeddings must be a positive integer"),
        (dict(pad_token_id=64), r"pad_token_id=64 must lie in the vocabulary \[0, 64\)"),
        (dict(hidden_act="foo"), "hidden_act='foo' is unknown"),
        (dict(layer_types="linear_attention", num_hidden_layers=1), "layer_types must be a list"),
        (dict(swr_window_blocks=10**5), "swr_window_blocks=100000 spans more than max_position_embeddings"),
    ],
)
def test_config_refuses_impossible_sizes(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PhalanxConfig(**{**BASE, **fields})


# ----------------------------------------------------------------------------- 4: resume checkpoints


def test_resume_never_takes_a_half_written_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    for step in (8, 16, 24):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"weights")
    (run / "checkpoint-8" / "trainer_state.json").write_text(json.dumps({"global_step": 8}))
    (run / "checkpoint-24" / "trainer_state.json").write_text('{"global_step": 2')  # killed while writing it
    args = argparse.Namespace(resume="auto", output=str(run), force=False, data=None, eval_data=None, tokenizer=None)
    assert resume_checkpoint(args) == str(run / "checkpoint-8")
    assert capsys.readouterr().err.count("skipping incomplete checkpoint") == 2
    args.resume = str(run / "checkpoint-16")
    with pytest.raises(ValueError, match="checkpoint-16 is incomplete"):
        resume_checkpoint(args)


# ------------------------------------------------------------ 8, 10: one-line errors, refused inputs


def damaged_copy(tiny_model: Path, tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / damage
    shutil.copytree(tiny_model, folder)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-500])
    elif damage == "garbage-config":
        (folder / "config.json").write_text("{ not json")
    elif damage == "nan-weights":
        model = PhalanxForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            model.model.norm.weight[0] = float("nan")
        model.save_pretrained(folder)
    elif damage == "small-vocab":
        model = PhalanxForCausalLM(PhalanxConfig.from_pretrained(folder, vocab_size=100))
        model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated", "cannot load the model"),
        ("garbage-config", "corrupt config.json"),
        ("nan-weights", "hold NaN or infinite values"),
        ("small-vocab", "the tokenizer has 259 tokens but the model's vocab_size is 100"),
    ],
)
def test_generate_names_a_damaged_model_in_one_line(tiny_model: Path, tmp_path: Path, damage: str, message: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    folder = damaged_copy(tiny_model, tmp_path, damage)
    capsys.readouterr()
    assert main(["generate", str(folder), "--prompt", "To be", "--max-new-tokens", "2", "--device", "cpu"]) == 1
    assert message in one_error_line(capsys)


def test_convert_refuses_nan_weights(source: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    src = tmp_path / "nan-source"
    shutil.copytree(source, src)
    tensors = load_file(src / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name][..., 0] = float("inf")
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"hold NaN or infinite values .*{name}"):
        convert_checkpoint(src, tmp_path / "out")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["convert", "--analyze", "missing-folder", "--data", "x"],  # a name that could be a Hub id: the cache is searched
         "missing-folder is not a local folder, and not in the local Hugging Face cache"),
        (["convert", "--analyze", "./missing-folder", "--data", "x"], "missing-folder is not a local checkpoint folder"),
        (["generate", "FOLDER", "--prompt", "x", "--device", "cuda"], "CUDA is not available"),
        (["eval", "FOLDER", "--device", "cuda"], "CUDA is not available"),
    ],
)
def test_command_errors_name_the_problem(tiny_model: Path, argv: list[str], message: str,
                                         capsys: pytest.CaptureFixture) -> None:
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("the no-CUDA message exists only where CUDA is missing; this machine has CUDA")
    assert main([str(tiny_model) if a == "FOLDER" else a for a in argv]) == 1
    assert message in one_error_line(capsys)


def test_eval_output_never_replaces_a_model_file(tiny_model: Path, tmp_path: Path) -> None:
    from phalanx_eval.harness import write_json

    before = snapshot(tiny_model)
    with pytest.raises(ValueError, match="would overwrite .*config.json"):
        write_json({"results": {}}, tiny_model / "config.json", str(tiny_model))
    assert snapshot(tiny_model) == before
    assert json.loads(write_json({"results": {}}, tmp_path / "eval.json", str(tiny_model)).read_text()) == {"results": {}}


@pytest.fixture
def train_argv(tmp_path: Path) -> list[str]:
    """``phalanx train`` on one small text file with the tiny preset (fails, if at all, before training)."""
    data = tmp_path / "text.txt"
    data.write_text("To be, or not to be, that is the question. " * 20)
    return ["train", "--model-config", "tiny-phalanx", "--data", str(data), "--seq-len", "32", "--max-steps", "1"]


def test_train_refuses_to_overwrite_or_misuse_its_output(train_argv: list[str], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    existing = tmp_path / "earlier-run"
    existing.mkdir()
    (existing / "config.json").write_text('{"earlier": true}')
    assert main([*train_argv, "--output", str(existing)]) == 1
    assert "is not empty; pass --resume to continue its run or --force to replace it" in one_error_line(capsys)
    assert (existing / "config.json").read_text() == '{"earlier": true}'
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main([*train_argv, "--output", str(a_file)]) == 1
    assert "exists and is not a folder" in one_error_line(capsys)
    assert main([*train_argv, "--output", str(tmp_path)]) == 1  # holds the training text
    assert "contains the input" in one_error_line(capsys)
    assert main([*train_argv, "--output", str(existing), "--force", "--batch-size", "2"]) == 0
    assert json.loads((existing / "config.json").read_text())["model_type"] == "phalanx"


def test_train_config_and_integration_errors_are_one_line(train_argv: list[str], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    for fields, message in ((dict(num_attention_heads=0), "num_attention_heads must be a positive integer"),
                            (dict(hidden_act="foo"), "hidden_act='foo' is unknown")):
        config = tmp_path / "config.json"
        config.write_text(json.dumps({**BASE, **fields, "vocab_size": 259}))
        argv = [a if a != "tiny-phalanx" else str(config) for a in train_argv]
        assert main([*argv, "--output", str(tmp_path / "never")]) == 1
        assert message in one_error_line(capsys)
    try:
        import wandb  # noqa: F401
    except ImportError:
        assert main([*train_argv, "--output", str(tmp_path / "never"), "--report-to", "wandb"]) == 1
        assert "the wandb package is not installed" in one_error_line(capsys)
    assert not (tmp_path / "never").exists()


def test_text_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 text \(byte 0xe9 at offset 3\)"):
        read_texts([tmp_path])


def test_distilled_model_keeps_its_conversion_record(source: Path, student: Path, tmp_path: Path) -> None:
    from phalanx_conversion.distill import DistillOptions, StageConfig, distill

    record = json.loads((student / "phalanx_conversion.json").read_text())
    assert record["source"] == source.name  # the folder name, never an absolute local path
    options = DistillOptions(stage1=StageConfig(steps=1, lr=1e-3, batch_size=1, seq_len=32), stage2=None,
                             eval_seq_len=32, eval_max_bytes=64, device="cpu")
    distill(source, student, tmp_path / "run", [ROOT / "data" / "shakespeare" / "julius_caesar_gut.txt"],
            [ROOT / "eval" / "tasks" / "data" / "macbeth_gut.txt"], options)
    stage1 = tmp_path / "run" / "stage1"
    assert json.loads((stage1 / "phalanx_conversion.json").read_text()) == record
    exported = export(stage1, tmp_path / "hub")
    assert f"converted-from-{record['model_type']}" in (exported / "README.md").read_text()


def test_distill_refuses_a_student_of_another_vocabulary(source: Path, student: Path) -> None:
    from transformers import AutoModelForCausalLM

    from phalanx_conversion.distill import converted_layers

    teacher, pupil = AutoModelForCausalLM.from_pretrained(source), AutoModelForCausalLM.from_pretrained(student)
    assert converted_layers(pupil, teacher)
    pupil.config.vocab_size += 1
    with pytest.raises(ValueError, match="student vocab_size 260 differs from the teacher's 259"):
        converted_layers(pupil, teacher)


def test_triton_runs_a_huge_window_as_the_sequence_needs() -> None:
    triton_ops = pytest.importorskip("phalanx_kernels.triton_ops", reason="needs triton")
    x, g = (t.to(KERNEL_DEVICE) for t in inputs(3))
    start = time.perf_counter()
    triton_ops.swr_triton(x, g, window_blocks=3, output_final_state=True)  # 3 blocks: the most 40 tokens need
    small = time.perf_counter() - start
    start = time.perf_counter()
    y, state = triton_ops.swr_triton(x, g, window_blocks=10**4, output_final_state=True)
    assert time.perf_counter() - start < 5 * small + 2.0  # a ring of 10**4 restart slots was 50x slower
    ref, ref_state = swr_oracle(x.cpu(), g.cpu(), 16, 10**4)
    torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.h.cpu().double(), ref_state, rtol=1e-5, atol=1e-5)


def test_a_distillation_checkpoint_cut_short_is_not_taken(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from phalanx_training.options import latest_checkpoint

    stage = tmp_path / "checkpoints" / "stage1"  # distill resumes each stage from the latest complete Trainer checkpoint
    done, cut = stage / "checkpoint-2", stage / "checkpoint-4"
    for folder in (done, cut):
        folder.mkdir(parents=True)
    (done / "trainer_state.json").write_text('{"global_step": 2}')
    (cut / "trainer_state.json").write_text('{"global_st')  # killed while writing it
    assert latest_checkpoint(stage) == str(done)
    assert "skipping incomplete checkpoint" in capsys.readouterr().err


def test_a_hub_cache_source_is_recorded_by_its_hub_id(source: Path, tmp_path: Path) -> None:
    snapshot_dir = tmp_path / "hub" / "models--someorg--tiny-gemma" / "snapshots" / "0123abcd"
    shutil.copytree(source, snapshot_dir)
    result = convert_checkpoint(snapshot_dir, tmp_path / "out")
    assert result.source == "someorg/tiny-gemma"
    card = (export(tmp_path / "out", tmp_path / "hub-export") / "README.md").read_text()
    assert "base_model: someorg/tiny-gemma" in card and str(tmp_path) not in card


def test_results_file_claims_follow_the_folder_rules(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from phalanx_training.folders import write_file

    stale = tmp_path / f".eval.json{CLAIM_MARK}dead"  # a writer killed mid-write left its temporary file
    stale.write_text('{"half": ')
    assert write_file(tmp_path / "eval.json", "{}\n").read_text() == "{}\n"
    assert "left by an interrupted run" in capsys.readouterr().err and claims(tmp_path) == []
    with pytest.raises(ValueError, match="is a folder"):
        write_file(tmp_path, "x")


def test_a_second_training_run_into_the_same_output_is_refused(train_argv: list[str], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    from phalanx_training.folders import claim_folder

    out = tmp_path / "run"
    with claim_folder(out):  # a first run, still training
        assert main([*train_argv, "--output", str(out)]) == 1
        assert f"another process is writing {out} right now" in one_error_line(capsys)
    assert not out.exists()  # the first run wrote nothing, so nothing is left
    assert main([*train_argv, "--output", str(out), "--batch-size", "0"]) == 1  # fails after the claim
    assert not out.exists()


@pytest.mark.parametrize("name", ["previous", "output"])  # the names of the writer's own folders in a claim
def test_force_replacement_of_an_output_named_like_the_writers_folders(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    out.mkdir()
    (out / "old.txt").write_text("old")
    with output_folder(out, force=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and claims(tmp_path) == []


def test_export_finetune_and_distill_refuse_nan_weights(tiny_model: Path, source: Path, student: Path,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = damaged_copy(tiny_model, tmp_path, "nan-weights")
    capsys.readouterr()
    assert main(["export", str(folder), str(tmp_path / "hub")]) == 1
    assert "hold NaN or infinite values" in one_error_line(capsys)
    assert main(["finetune", str(folder), "--output", str(tmp_path / "lora"), "--max-steps", "1"]) == 1
    assert "hold NaN or infinite values" in one_error_line(capsys)
    bad_student = tmp_path / "nan-student"
    shutil.copytree(student, bad_student)
    model = PhalanxForCausalLM.from_pretrained(bad_student)
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")
    model.save_pretrained(bad_student)
    capsys.readouterr()
    assert main(["distill", str(source), str(bad_student), "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--data", str(ROOT / "data" / "shakespeare" / "julius_caesar_gut.txt"), "--eval-max-bytes", "64"]) == 1
    assert "hold NaN or infinite values" in one_error_line(capsys)
    assert not (tmp_path / "hub").exists() and not (tmp_path / "lora").exists()


def test_outputs_are_still_written_where_the_file_system_has_no_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    import phalanx_training.folders as folders

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(folders.fcntl, "flock", no_locks)
    other = tmp_path / f".out{CLAIM_MARK}other"  # can't tell whether its writer lives: left alone, reported
    other.mkdir()
    with output_folder(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("a")
    assert (tmp_path / "out" / "a.txt").read_text() == "a" and other.is_dir()
    assert "has no locks" in capsys.readouterr().err
    assert folders.write_file(tmp_path / "r.json", "{}").read_text() == "{}"
