"""Recall-versus-distance curves from lm-eval results of the distance tasks."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RecallPoint:
    """One task of a distance family: its distance, greedy-match accuracy and answer perplexity."""

    task: str
    distance: int
    acc: float
    acc_stderr: float | None
    perplexity: float | None


def recall_curves(results: dict[str, Any]) -> dict[str, list[RecallPoint]]:
    """Points per family (task name without its ``_<distance>`` suffix), sorted by distance.

    A task belongs to a curve when its config metadata names a ``distance`` and it reports ``acc``.
    """
    curves: dict[str, list[RecallPoint]] = {}
    for task, config in results.get("configs", {}).items():
        distance = (config.get("metadata") or {}).get("distance")
        metrics = results["results"].get(task, {})
        if distance is None or "acc,none" not in metrics:
            continue
        stderr = metrics.get("acc_stderr,none")
        family = task.removesuffix(f"_{int(distance)}")
        curves.setdefault(family, []).append(
            RecallPoint(
                task=task,
                distance=int(distance),
                acc=float(metrics["acc,none"]),
                acc_stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
                perplexity=metrics.get("perplexity,none"),
            )
        )
    return {family: sorted(points, key=lambda p: p.distance) for family, points in sorted(curves.items())}


def plot_recall(results: dict[str, Any], path: str | Path, max_length: int | None = None) -> Path | None:
    """Write accuracy and answer perplexity against distance as a PNG; None when no distance task ran.

    ``max_length`` draws the context limit: lm-eval truncates longer contexts from the left, so the
    key is cut off at distances beyond it.
    """
    curves = recall_curves(results)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4))
    for family, points in curves.items():
        distances = [p.distance for p in points]
        ax_acc.errorbar(
            distances, [p.acc for p in points], yerr=[p.acc_stderr or 0.0 for p in points], marker="o", capsize=3,
            label=family,
        )
        ppl = [(p.distance, p.perplexity) for p in points if isinstance(p.perplexity, (int, float))]
        if ppl:
            ax_ppl.plot(*zip(*ppl), marker="o", label=family)
    for ax in (ax_acc, ax_ppl):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("distance (tokens of the byte tokenizer = bytes)")
        if max_length is not None:
            ax.axvline(max_length, color="grey", linestyle="--", label=f"max_length {max_length}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_acc.set_ylim(-0.05, 1.05)
    ax_acc.set_ylabel("accuracy (greedy answer)")
    ax_ppl.set_yscale("log")
    ax_ppl.set_ylabel("answer perplexity")
    model_args = (results.get("config") or {}).get("model_args")
    model = model_args.get("pretrained") if isinstance(model_args, dict) else model_args
    fig.suptitle(f"Recall versus distance: {model}" if model else "Recall versus distance", fontsize=9)
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path
