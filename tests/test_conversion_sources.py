"""`phalanx convert` sources and layer rules: a Hub id resolved in a (fake, local) Hugging Face cache, a clear
one-line error for one that is not cached, and `--layers lowest-mass:K` chosen from `--analyze`'s measure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

from phalanx_cli.main import main as phalanx_main
from phalanx_conversion.analyze import analyze_checkpoint, lowest_mass_count, lowest_mass_layers

from test_conversion_families import make_source

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "shakespeare"
REVISION = "0123456789abcdef0123456789abcdef01234567"
ANALYZE = ["--data", str(SAMPLE), "--seq-len", "160", "--max-tokens", "640"]


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face cache (HF_HUB_CACHE) holding `someorg/tiny-gemma`, laid out as the Hub client writes it."""
    cache = tmp_path / "hub"
    repo = cache / "models--someorg--tiny-gemma"
    make_source("gemma3_text", repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_convert_a_hub_id_from_the_local_cache(hub_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = sorted(p.relative_to(hub_cache) for p in hub_cache.rglob("*"))
    assert phalanx_main(["convert", "someorg/tiny-gemma", str(tmp_path / "out")]) == 0
    assert "converted gemma3_text layers [0, 1, 3]" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "phalanx_conversion.json").read_text())["source"] == "someorg/tiny-gemma"
    assert sorted(p.relative_to(hub_cache) for p in hub_cache.rglob("*")) == before  # the cache is only read
    assert phalanx_main(["convert", "--analyze", "someorg/tiny-gemma", *ANALYZE]) == 0
    assert "| mean |" in capsys.readouterr().out


def test_a_hub_id_not_in_the_cache_is_one_line(hub_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert phalanx_main(["convert", "google/gemma-3-1b-pt", str(tmp_path / "out")]) == 1
    line = one_error_line(capsys)
    assert line == (f"phalanx convert: error: google/gemma-3-1b-pt is not a local folder, and not in the local Hugging "
                    f"Face cache ({hub_cache}), and the machine is offline (HF_HUB_OFFLINE): download it where there is "
                    "network (hf download google/gemma-3-1b-pt) or pass a checkpoint folder")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # never fetched: the cache is all it reads
    assert phalanx_main(["convert", "--analyze", "google/gemma-3-1b-pt", *ANALYZE]) == 1
    assert "phalanx never downloads: fetch it first (hf download google/gemma-3-1b-pt)" in one_error_line(capsys)
    assert phalanx_main(["convert", "./no-such-folder", str(tmp_path / "out")]) == 1
    assert "checkpoint folder no-such-folder does not exist" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_lowest_mass_rule(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """With a 16-token Phalanx window (16 x 1) the three SWA layers of the 24-token-window source differ in
    their mass beyond 16 tokens; the rule converts the K lowest, and says which and why."""
    src = make_source("gemma3_text", tmp_path / "src")
    results = analyze_checkpoint(src, [SAMPLE], seq_len=160, max_tokens=640, device="cpu")
    by_mass = [r.layer for r in sorted(results, key=lambda r: r.beyond[16])]
    assert len({r.beyond[16] for r in results}) == 3
    assert lowest_mass_layers(results, 2, 16) == sorted(by_mass[:2])
    argv = ["convert", str(src), str(tmp_path / "out"), "--block-len", "16", "--window-blocks", "1", *ANALYZE]
    assert phalanx_main([*argv, "--layers", "lowest-mass:2"]) == 0
    out = capsys.readouterr().out
    assert f"--layers lowest-mass:2: layers {sorted(by_mass[:2])} (attention mass beyond 16 tokens" in out
    record = json.loads((tmp_path / "out" / "phalanx_conversion.json").read_text())
    assert record["converted_layers"] == sorted(by_mass[:2])
    shutil.rmtree(tmp_path / "out")

    assert lowest_mass_count("sliding") is None and lowest_mass_count(" Lowest-Mass:3 ") == 3
    for layers, extra, message in (
        ("lowest-mass:4", ANALYZE, "--layers lowest-mass:4: the checkpoint has only 3 SWA layers"),
        ("lowest-mass:0", ANALYZE, "--layers lowest-mass:0: K must be at least 1"),
        ("lowest-mass:2", [], "--layers lowest-mass:2 ranks the SWA layers by their attention on text: pass --data TEXT"),
        ("lowest-mass:x", ANALYZE, "--layers must be 'sliding', 'none', 'lowest-mass:K' or comma-separated layer indices"),
    ):
        assert phalanx_main(["convert", str(src), str(tmp_path / "out"), "--layers", layers, *extra]) == 1
        err = capsys.readouterr().err  # a progress bar of the analysis, then one error line
        assert "Traceback" not in err and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
