"""Trainer callbacks shared by ``phalanx train`` and ``phalanx finetune``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

LOSS_CURVE_FILE = "loss_curve.png"


def plot_loss_curve(log_history: list[dict[str, Any]], path: str | Path) -> Path:
    """Plot training (and evaluation, when logged) loss against optimizer step and save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    if not train and not evals:
        raise ValueError("no logged losses to plot (set logging_steps so that training logs at least once)")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for points, label, style in ((train, "train", "-"), (evals, "eval", "o--")):
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


class LossCurveCallback(TrainerCallback):
    """Redraw ``loss_curve.png`` in the output folder at every checkpoint and at the end (main process only)."""

    def _draw(self, args: TrainingArguments, state: TrainerState) -> None:
        if state.is_world_process_zero and any("loss" in e or "eval_loss" in e for e in state.log_history):
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            plot_loss_curve(state.log_history, Path(args.output_dir) / LOSS_CURVE_FILE)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self._draw(args, state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self._draw(args, state)
