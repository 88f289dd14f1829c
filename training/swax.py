"""SWAX stochastic sliding windows (SWAX: sliding-window attention + xLSTM hybrids, design seed 002).

SWAX trains sliding-window layers with a window drawn per step: the short window with probability
``short_prob``, otherwise the long one, and the long window alone for the final ``final_long_fraction``
of training (the annealing phase). Short windows push the model to use its recurrent layers for long
context; the long phase restores short-context quality. SWAX's defaults: 128 with probability 0.5,
else 2048, the last 10% at 2048.

The window of step ``s`` is a pure function of ``(seed, s)``, so a resumed run draws the same windows
as an uninterrupted one. The model reads ``config.sliding_window`` when it builds its masks; the
callback sets it (and the ``sliding_window`` attribute of sliding attention modules, which
flash-attention reads) for the duration of each optimizer step and puts the long window back
afterwards, so evaluation, checkpoints and the saved model always see the long window.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from modeling_phalanx.configuration_phalanx import SLIDING_ATTENTION

SWAX_SHORT_WINDOW = 128
SWAX_LONG_WINDOW = 2048
SWAX_SHORT_PROB = 0.5
SWAX_FINAL_LONG_FRACTION = 0.1


@dataclass(frozen=True)
class SWAXSchedule:
    """Per-step sliding window: ``short_window`` w.p. ``short_prob``, else ``long_window``; long only
    for the last ``final_long_fraction`` of the steps."""

    short_window: int = SWAX_SHORT_WINDOW
    long_window: int = SWAX_LONG_WINDOW
    short_prob: float = SWAX_SHORT_PROB
    final_long_fraction: float = SWAX_FINAL_LONG_FRACTION
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.short_window < self.long_window:
            raise ValueError(
                f"SWAX needs 1 <= short_window < long_window, got short={self.short_window}, long={self.long_window}"
            )
        if not 0.0 <= self.short_prob <= 1.0:
            raise ValueError(f"SWAX short_prob must be in [0, 1], got {self.short_prob}")
        if not 0.0 <= self.final_long_fraction <= 1.0:
            raise ValueError(f"SWAX final_long_fraction must be in [0, 1], got {self.final_long_fraction}")

    def final_phase_start(self, max_steps: int) -> int:
        """First step (0-based) of the long-window-only phase."""
        return math.ceil((1.0 - self.final_long_fraction) * max_steps)

    def window(self, step: int, max_steps: int) -> int:
        """Window for optimizer step ``step`` (0-based) of ``max_steps``."""
        if step >= self.final_phase_start(max_steps):
            return self.long_window
        draw = random.Random(self.seed * 1_000_003 + step).random()
        return self.short_window if draw < self.short_prob else self.long_window


def set_sliding_window(model: nn.Module, window: int) -> None:
    """Set the sliding window the model uses from its next forward on."""
    model.config.sliding_window = window
    for module in model.modules():
        if isinstance(getattr(module, "sliding_window", None), int):
            module.sliding_window = window


class SWAXCallback(TrainerCallback):
    """Apply a :class:`SWAXSchedule` to a model's sliding-window layers, step by step."""

    def __init__(self, schedule: SWAXSchedule) -> None:
        self.schedule = schedule

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: nn.Module, **kwargs
    ) -> None:
        if SLIDING_ATTENTION not in (getattr(model.config, "layer_types", None) or []):
            raise ValueError("SWAX windows need a model with sliding_attention layers (layer_types has none)")
        set_sliding_window(model, self.schedule.long_window)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: nn.Module, **kwargs
    ) -> None:
        set_sliding_window(model, self.schedule.window(state.global_step, state.max_steps))

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: nn.Module, **kwargs
    ) -> None:
        set_sliding_window(model, self.schedule.long_window)
