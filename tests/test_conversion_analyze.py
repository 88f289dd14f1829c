"""`phalanx convert --analyze`: attention mass beyond 16/32/128 tokens per SWA layer."""

from __future__ import annotations

from pathlib import Path

import torch

from phalanx_cli.main import main as phalanx_main
from phalanx_conversion.analyze import analyze_checkpoint, attention_mass_beyond

from test_conversion_families import make_source

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "shakespeare"


def test_mass_beyond_matches_closed_form() -> None:
    """Uniform causal attention: query i puts (i - d) / (i + 1) of its mass more than d tokens back."""
    T = 200
    probs = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    probs = probs.expand(2, 3, T, T)
    got = attention_mass_beyond(probs, (16, 32, 128))
    queries = range(129, T)
    for d in (16, 32, 128):
        expected = sum((i - d) / (i + 1) for i in queries) / len(queries)
        mass, count = got[d]
        assert count == 2 * 3 * len(queries)
        assert abs(mass / count - expected) < 1e-6


def test_analyze_checkpoint_and_cli(tmp_path: Path, capsys, monkeypatch) -> None:
    """With a 24-token window no mass can lie more than 32 tokens back; within it, a random model spreads
    its attention so part lies beyond 16."""
    src = make_source("gemma3_text", tmp_path / "src")
    results = analyze_checkpoint(src, [SAMPLE], seq_len=160, max_tokens=640, device="cpu")
    assert [r.layer for r in results] == [0, 1, 3]
    for r in results:
        assert r.beyond[32] == 0.0 and r.beyond[128] == 0.0
        assert 0.05 < r.beyond[16] < 0.6
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = ["convert", "--analyze", str(src), "--data", str(SAMPLE), "--seq-len", "160", "--max-tokens", "640"]
    assert phalanx_main(argv) == 0 and "plot:" not in capsys.readouterr().out
    assert list(cwd.iterdir()) == []  # no plot unless --plot names one
    plot = tmp_path / "mass.png"
    code = phalanx_main(
        [
            "convert",
            "--analyze",
            str(src),
            "--data",
            str(SAMPLE),
            "--plot",
            str(plot),
            "--seq-len",
            "160",
            "--max-tokens",
            "640",
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "| layer | mass > 16 tok | mass > 32 tok | mass > 128 tok |" in table and "| mean |" in table
    assert plot.read_bytes()[:4] == b"\x89PNG"
