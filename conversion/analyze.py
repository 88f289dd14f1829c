"""How far back do the SWA layers of a checkpoint look? (`phalanx convert --analyze`)

A Phalanx mixer with block length BL and W window blocks sees the last BL*(W-1)+1 .. BL*W tokens
(17-32 at 16 x 2). For every sliding-window layer this measures, on real text, the share of attention
probability on keys more than d tokens back (d = 16, 32, 128): layers with little mass beyond the
Phalanx window convert cheaply; the rest are candidates for a wider window or for staying SWA, and
`phalanx convert --layers lowest-mass:K` converts the K layers with the least mass beyond the Phalanx window.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from phalanx_training.data import read_texts

from .checkpoint import resolve_checkpoint
from .families import sliding_layers

DISTANCES = (16, 32, 128)
LOWEST_MASS = re.compile(r"lowest-mass:(\d+)")  # --layers rule: the K SWA layers with the least mass beyond the window


@dataclass
class LayerMass:
    """Mean attention mass of one layer beyond each distance (fraction in [0, 1])."""

    layer: int
    beyond: dict[int, float]


def attention_mass_beyond(probs: torch.Tensor, distances: tuple[int, ...] = DISTANCES) -> dict[int, torch.Tensor]:
    """Sum and count of the attention mass on keys more than d tokens back, for each d.

    `probs` (B, H, T, T) are causal attention probabilities. Only queries at positions > max(d) count,
    so every query could put mass beyond every distance and the numbers are comparable across d.
    Returns {d: tensor([mass summed over counted (batch, head, query), number counted])}.
    """
    T = probs.shape[-1]
    first = max(distances) + 1
    if T <= first:
        raise ValueError(f"sequences of {T} tokens are too short to measure mass beyond {max(distances)} tokens")
    pos = torch.arange(T, device=probs.device)
    gap = pos[:, None] - pos[None, :]  # query - key
    q = probs[..., first:, :].float()
    out = {}
    for d in distances:
        far = (gap[first:] > d).to(q.dtype)
        mass = (q * far).sum(-1)
        out[d] = torch.stack([mass.sum(), torch.tensor(float(mass.numel()), device=mass.device)])
    return out


@torch.no_grad()
def analyze_checkpoint(
    src: str | os.PathLike,
    data: list[str | os.PathLike],
    *,
    seq_len: int = 512,
    max_tokens: int = 16384,
    batch_size: int = 4,
    device: str | None = None,
    distances: tuple[int, ...] = DISTANCES,
) -> list[LayerMass]:
    """Attention mass beyond each distance for every SWA layer of checkpoint `src` (a folder, or a Hub id in the
    local cache) on text `data`."""
    if seq_len <= max(distances) + 1:
        raise ValueError(
            f"seq_len={seq_len} must exceed {max(distances) + 1} to measure mass beyond {max(distances)} tokens"
        )
    src = resolve_checkpoint(src)
    if not (Path(src) / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a local checkpoint folder (no config.json there); --analyze reads one")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(
        src, attn_implementation="eager", dtype=torch.float32, trust_remote_code=False
    ).to(device).eval()
    layers = sliding_layers(model.config)
    if not layers:
        raise ValueError(f"{src} has no sliding-window attention layers to analyze")
    tokenizer = AutoTokenizer.from_pretrained(src)
    ids: list[int] = []
    for text in read_texts(data, exclude_held_out=False):
        ids.extend(tokenizer(text)["input_ids"])
        if len(ids) >= max_tokens:
            break
    rows = min(len(ids), max_tokens) // seq_len
    if rows == 0:
        raise ValueError(f"the data holds {len(ids)} tokens, fewer than one sequence of {seq_len}")
    batch = torch.tensor(ids[: rows * seq_len]).view(rows, seq_len)
    totals = {i: {d: torch.zeros(2, device=device) for d in distances} for i in layers}
    for chunk in batch.to(device).split(batch_size):
        attentions = model(chunk, output_attentions=True, use_cache=False).attentions
        for i in layers:
            for d, s in attention_mass_beyond(attentions[i], distances).items():
                totals[i][d] += s
    return [LayerMass(i, {d: float(s[0] / s[1]) for d, s in totals[i].items()}) for i in layers]


def lowest_mass_count(layers: str) -> int | None:
    """K of a ``--layers lowest-mass:K`` rule, or None when ``layers`` is not that rule."""
    match = LOWEST_MASS.fullmatch(layers.strip().lower())
    if match is None:
        return None
    if int(match.group(1)) < 1:
        raise ValueError(f"--layers {layers}: K must be at least 1")
    return int(match.group(1))


def lowest_mass_layers(results: list[LayerMass], k: int, distance: int) -> list[int]:
    """The ``k`` layers of ``results`` with the least attention mass beyond ``distance`` tokens (ties: the lower
    index), sorted by index."""
    if k > len(results):
        raise ValueError(f"--layers lowest-mass:{k}: the checkpoint has only {len(results)} SWA layers")
    ranked = sorted(results, key=lambda r: (r.beyond[distance], r.layer))
    return sorted(r.layer for r in ranked[:k])


def format_table(results: list[LayerMass], window: int | None = None) -> str:
    """Markdown table: one row per SWA layer, one column per distance, plus the mean."""
    distances = list(results[0].beyond)
    head = "| layer | " + " | ".join(f"mass > {d} tok" for d in distances) + " |"
    lines = [head, "|" + "---|" * (len(distances) + 1)]
    for r in results:
        lines.append(f"| {r.layer} | " + " | ".join(f"{r.beyond[d]:.3f}" for d in distances) + " |")
    mean = {d: sum(r.beyond[d] for r in results) / len(results) for d in distances}
    lines.append("| mean | " + " | ".join(f"{mean[d]:.3f}" for d in distances) + " |")
    if window is not None:
        lines.append(f"\nSWA window: {window} tokens.")
    return "\n".join(lines)


def plot_mass(results: list[LayerMass], path: str | os.PathLike, title: str = "") -> Path:
    """Grouped bar chart of the mass beyond each distance per SWA layer, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    distances = list(results[0].beyond)
    width = 0.8 / len(distances)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(results) + 2), 3.5))
    for k, d in enumerate(distances):
        xs = [j + (k - (len(distances) - 1) / 2) * width for j in range(len(results))]
        ax.bar(xs, [r.beyond[d] for r in results], width, label=f"> {d} tokens")
    ax.set_xticks(range(len(results)), [str(r.layer) for r in results])
    ax.set_xlabel("SWA layer (index in the model)")
    ax.set_ylabel("share of attention probability")
    ax.set_ylim(0, 1)
    ax.set_title(title or "attention mass beyond distance", fontsize=9)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
