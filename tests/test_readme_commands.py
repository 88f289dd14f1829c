"""Every shell and Python block of the READMEs runs as written, in document order, in a fresh folder.

Only sizes shrink (so each command takes seconds on a CPU): the options in :data:`TINY` are appended to a
`phalanx` command (argparse keeps the last value) and a preset's size becomes `tiny`. Inputs a reader
supplies (`my_texts/`, `corpus/`, `./text/`, `corpus.jsonl` and the other tables, a checkpoint `./gemma3-1b`)
are made first. What cannot run here is checked as far as it can be: launchers parse their options with
their own parsers and run the `phalanx` command they launch in one process, `pip install` names existing
extras and the Makefile's torch pin, `make` targets exist (`make -n`), GPU benchmark scripts accept the
documented options. A command that fits none of these rules fails the test, so a new documented command
needs a rule.
"""

from __future__ import annotations

import itertools
import re
import runpy
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import datasets
import pytest
import torch
from packaging.requirements import Requirement

from phalanx_cli.main import main
from phalanx_training.presets import SIZES

REPO = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "training/README.md", "conversion/README.md")
TINY: dict[str, list[str]] = {
    "train": ["--seq-len", "32", "--batch-size", "2", "--max-steps", "2", "--logging-steps", "1", "--precision", "fp32"],
    "finetune": ["--seq-len", "32", "--batch-size", "2", "--max-steps", "2", "--logging-steps", "1", "--precision", "fp32"],
    "eval": ["--limit", "1", "--max-length", "64", *([] if torch.cuda.is_available() else ["--device", "cpu"])],
    "distill": ["--stage1-steps", "1", "--stage2-steps", "1", "--batch-size", "1", "--seq-len", "32",
                "--eval-max-bytes", "100", "--device", "cpu"],
    "convert": [],
    "export": [],
    "export-kernels": [],
    "tokenizer": ["--vocab-size", "300"],
}
TINY_ANALYZE = ["--seq-len", "160", "--max-tokens", "640"]
TINY_SWAX = ["--swax-short-window", "16"]  # below the tiny preset's 64-token window
READER_TEXT_FOLDERS = ("my_texts", "corpus", "text")
READER_CHECKPOINTS = ("gemma3-1b", "gemma3-src")
# Placeholders of the training README's merge snippet: the base model and adapter its first block writes.
PYTHON_PLACEHOLDERS = {'"MODEL"': '"runs/tiny"', '"OUT/merged"': '"runs/tiny-lora/merged"', '"OUT"': '"runs/tiny-lora"'}


def fenced_blocks(doc: Path) -> list[tuple[str, str]]:
    """(language, text) of every ``` block with a language."""
    return re.findall(r"^```(\w+)\n(.*?)^```", doc.read_text(encoding="utf-8"), flags=re.M | re.S)


def shell_commands(block: str) -> list[list[str]]:
    """Commands of a shell block: continuation lines joined, comments dropped, `a && b` split."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1 :]
    return commands


def tiny(argv: list[str]) -> list[str]:
    """A `phalanx` command (without `phalanx`) with tiny sizes."""
    extra = list(TINY[argv[0]])
    if "--model-config" in argv:
        size, _, flavour = argv[argv.index("--model-config") + 1].rpartition("-")
        if size in SIZES:
            extra += ["--model-config", f"tiny-{flavour}"]
    if "--swax" in argv:
        extra += TINY_SWAX
    if "--analyze" in argv:
        extra += TINY_ANALYZE
    return argv + extra


def run_phalanx(argv: list[str], where: str) -> None:
    assert main(tiny(argv)) == 0, f"{where}: phalanx {shlex.join(argv)}"


def run_launcher(argv: list[str], where: str) -> None:
    """`accelerate launch` / `torchrun`: the launcher's own parser takes the options; the launched
    `-m phalanx_cli.main` command runs here in one process (`...` marks an elided command)."""
    if argv[0] == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        assert argv[1] == "launch", where
        args = launch_command_parser().parse_args(argv[2:])
        assert args.module and args.training_script == "phalanx_cli.main", where
        layer_cls = args.fsdp_transformer_layer_cls_to_wrap
        if layer_cls is not None:
            import modeling_phalanx.modeling_phalanx as modeling

            assert hasattr(modeling, layer_cls), f"{where}: no layer class {layer_cls}"
        launched = list(args.training_script_args)
    else:
        from torch.distributed.run import get_args_parser

        args = get_args_parser().parse_args(argv[1:])
        assert args.module and args.training_script == "phalanx_cli.main", where
        launched = list(args.training_script_args)
    if launched[-1] != "...":
        run_phalanx(launched, where)


def check_pip_install(argv: list[str], where: str) -> None:
    """Not run (it needs the network): the project's extras exist, torch's pin is the Makefile's."""
    assert argv[1:2] == ["install"], where
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    torch_pin = re.search(r"^TORCH_SPEC \?= (\S+)$", (REPO / "Makefile").read_text(), flags=re.M).group(1)
    for spec in (word for word in argv[2:] if not word.startswith("-")):
        if spec.startswith("."):
            wanted = re.fullmatch(r"\.\[([\w,]+)\]", spec).group(1).split(",")
            assert set(wanted) <= set(extras), f"{where}: unknown extras in {spec}"
        elif Requirement(spec).name == "torch":
            assert spec == torch_pin, f"{where}: {spec}, Makefile installs {torch_pin}"


def check_gpu_script(argv: list[str], where: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Benchmarks need a CUDA GPU: the script exists, shell scripts parse, Python scripts accept the options
    (their `--help`, run here: a subprocess would import torch again)."""
    script = REPO / argv[1]
    assert script.is_file(), f"{where}: no {argv[1]}"
    if argv[0] == "bash":
        subprocess.run(["bash", "-n", str(script)], check=True)
        return
    positional = list(itertools.takewhile(lambda word: not word.startswith("-"), argv[2:]))  # a subcommand
    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts put benchmarks/ on it
    monkeypatch.setattr(sys, "argv", [str(script), *positional, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0, where
    usage = capsys.readouterr().out
    for option in (w for w in argv[2:] if w.startswith("--")):
        assert option in usage, f"{where}: {argv[1]} has no {option}"


def check_synopsis(argv: list[str], where: str, capsys: pytest.CaptureFixture) -> None:
    """A usage line with [optional] parts: the subcommand knows every option it names."""
    with pytest.raises(SystemExit):
        main([argv[1], "--help"])
    usage = capsys.readouterr().out
    for option in (w.strip("[]") for w in argv if w.strip("[]").startswith("--")):
        assert option in usage, f"{where}: phalanx {argv[1]} has no {option}"


def run_shell(argv: list[str], where: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    while re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # environment assignments (only a real launch would use them)
        argv = argv[1:]
    head = argv[0]
    if head == "phalanx" and any(w.startswith("[") for w in argv):
        check_synopsis(argv, where, capsys)
    elif head == "phalanx":
        run_phalanx(argv[1:], where)
    elif head in ("accelerate", "torchrun"):
        run_launcher(argv, where)
    elif head == "make":
        subprocess.run(["make", "-n", *argv[1:]], cwd=REPO, capture_output=True, check=True)
    elif head.endswith("pip"):
        check_pip_install(argv, where)
    elif argv[:3] == ["python3", "-m", "venv"]:
        pass  # creates the environment the test runs in
    elif head in ("python", "python3") and argv[1] == "-c":
        exec(compile(argv[2], where, "exec"), {"__name__": "__readme__"})
    elif head in ("python", "bash") and argv[1].startswith("benchmarks/"):
        check_gpu_script(argv, where, capsys, monkeypatch)
    else:
        pytest.fail(f"{where}: no rule to run or check `{shlex.join(argv)}`")


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder holding what a reader brings: text folders, a small SWA checkpoint, the shipped sample."""
    from test_conversion_families import make_source

    text = (REPO / "data" / "shakespeare" / "julius_caesar_gut.txt").read_text(encoding="utf-8")[:20000]
    for name in READER_TEXT_FOLDERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "sample.txt").write_text(text, encoding="utf-8")
    chunks = [text[i : i + 2000] for i in range(0, len(text), 2000)]
    table = datasets.Dataset.from_dict({"text": chunks, "body": chunks})  # the tables a reader names, two text columns
    table.to_json(str(tmp_path / "corpus.jsonl"))
    table.to_json(str(tmp_path / "corpus.json"))
    table.to_csv(str(tmp_path / "corpus.csv"), index=False)
    table.to_parquet(str(tmp_path / "corpus.parquet"))
    table.save_to_disk(str(tmp_path / "saved_corpus"))
    for name in READER_CHECKPOINTS:
        make_source("gemma3_text", tmp_path / name)
    (tmp_path / "data").symlink_to(REPO / "data")  # the README's paths are relative to the repository root
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("doc", DOCS)
def test_readme_blocks_run_as_written(doc: str, workspace: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = fenced_blocks(REPO / doc)
    assert blocks, f"no code blocks in {doc}"
    for number, (language, text) in enumerate(blocks, 1):
        where = f"{doc} block {number}"
        if language == "python":
            for placeholder, value in PYTHON_PLACEHOLDERS.items():
                text = text.replace(placeholder, value)
            exec(compile(text, where, "exec"), {"__name__": "__readme__"})
        elif language == "bash":
            for argv in shell_commands(text):
                run_shell(argv, where, capsys, monkeypatch)
        else:
            pytest.fail(f"{where}: unknown block language {language}")
