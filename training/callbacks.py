"""Trainer callbacks and run summaries shared by ``phalanx train``, ``phalanx finetune`` and the demo."""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import ProgressCallback, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

LOSS_CURVE_FILE = "loss_curve.png"
PEAK_MEMORY_ENV = "PHALANX_LOG_PEAK_MEMORY"  # =1: every process prints its peak memory when training ends


def logged_losses(log_history: list[dict[str, Any]]) -> tuple[float, float]:
    """First and last training loss the Trainer logged."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    if not losses:
        raise ValueError("no training loss logged (set logging_steps so that training logs at least once)")
    return losses[0], losses[-1]


def loss_summary(log_history: list[dict[str, Any]]) -> str:
    """The run's training loss in one labelled phrase: first and last logged values and the Trainer's mean
    over the run (three different numbers, so each says what it is)."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    mean = next((entry["train_loss"] for entry in reversed(log_history) if "train_loss" in entry), None)
    parts = [f"first logged {losses[0]:.3f} -> last logged {losses[-1]:.3f}"] if losses else []
    parts += [f"mean over the run {mean:.3f}"] if mean is not None else []
    return "training loss (nats/token) " + ", ".join(parts) if parts else "no training loss logged"


def describe_model(model: nn.Module) -> str:
    """Class, size and layer mix of a model, e.g. ``PhalanxForCausalLM, 0.81M parameters, 2 linear_attention +
    1 sliding_attention + 1 full_attention``; a PEFT model is named as LoRA on its base model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__ if base is model else f"LoRA on {type(base).__name__}"
    text = f"{name}, {sum(p.numel() for p in base.parameters()) / 1e6:.2f}M parameters"
    layer_types = getattr(getattr(base, "config", None), "layer_types", None)
    if layer_types:
        text += ", " + " + ".join(f"{layer_types.count(kind)} {kind}" for kind in dict.fromkeys(layer_types))
    return text


def plot_loss_curve(
    log_history: list[dict[str, Any]], path: str | Path, title: str, *, curves: Sequence[str] = (),
    ylabel: str = "loss (nats / token)", log_scale: bool = False,
) -> Path:
    """Plot training (and evaluation, when logged) loss, and every other logged quantity named in ``curves`` (such
    as distillation's per-layer losses), against optimizer step and save a PNG titled ``title``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("loss", "train", "-"), ("eval_loss", "eval", "o--"), *((key, key, "-") for key in curves)]
    drawn = [([(e["step"], e[key]) for e in log_history if key in e], label, style) for key, label, style in series]
    if not drawn[0][0] and not drawn[1][0]:
        raise ValueError("no logged losses to plot (set logging_steps so that training logs at least once)")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for points, label, style in drawn:
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, style, label=label, linewidth=1.5 if label in ("train", "eval") else 0.8)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


class LossCurveCallback(TrainerCallback):
    """Redraw ``loss_curve.png`` in the output folder at every checkpoint and at the end (main process only),
    titled with the model and the run's output folder."""

    def _draw(self, args: TrainingArguments, state: TrainerState, model: nn.Module) -> None:
        if state.is_world_process_zero and any("loss" in e or "eval_loss" in e for e in state.log_history):
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            title = f"{describe_model(model)}\nrun: {args.output_dir}"
            plot_loss_curve(state.log_history, Path(args.output_dir) / LOSS_CURVE_FILE, title)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self._draw(args, state, kwargs["model"])

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self._draw(args, state, kwargs["model"])


class LabelledProgressCallback(ProgressCallback):
    """The Trainer's progress bar, labelled, so a reader knows which training it is measuring."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.label)


class PeakMemoryCallback(TrainerCallback):
    """Every process prints its peak memory of the training as one line, ``peak_memory {json}``:
    ``torch.cuda.max_memory_allocated`` (and ``_reserved``) of its GPU since training began, or, on the CPU, the
    process's peak resident set size. ``benchmarks/ddp_run.sh`` reads these lines (one per rank)."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if args.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(args.device)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        record: dict[str, Any] = {"rank": args.process_index, "world_size": args.world_size, "device": str(args.device),
                                  "output_dir": args.output_dir}
        if args.device.type == "cuda":
            record |= {"max_memory_allocated": torch.cuda.max_memory_allocated(args.device),
                       "max_memory_reserved": torch.cuda.max_memory_reserved(args.device)}
        else:  # ru_maxrss is in KiB on Linux
            record["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print("peak_memory " + json.dumps(record), flush=True)


def peak_memory_callbacks() -> list[TrainerCallback]:
    """``[PeakMemoryCallback()]`` when the environment sets ``PHALANX_LOG_PEAK_MEMORY=1``, else none."""
    return [PeakMemoryCallback()] if os.environ.get(PEAK_MEMORY_ENV) == "1" else []
