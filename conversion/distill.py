"""Distil a converted Phalanx student back to its SWA teacher (`phalanx distill`).

Stage 1, per-layer output matching (teacher-forced): every converted layer's mixer receives the input
the teacher's attention received at that layer and learns to reproduce the teacher attention output
(after `o_proj`); loss = MSE / mean square of the teacher output, averaged over layers. Only mixer
parameters train, and all layers train in one pass because their inputs come from the teacher.

Stage 2, end-to-end logit distillation: forward KL(teacher || student) at temperature 1, computed in
time chunks whose student logits are recomputed in backward (never held for the whole sequence),
optionally plus `ce_weight` x cross-entropy; mixer parameters train at `lr`, the rest at `other_lr`
(0 freezes them).

Both stages sample packed rows of the training text deterministically from (seed, step), save
checkpoints (student weights, optimizer, loss history) every `save_every` steps and resume exactly
from the latest one. Held-out bits-per-byte is measured before and after each stage.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

import modeling_phalanx  # noqa: F401  (registers the phalanx model type with the Auto classes)
from modeling_phalanx.modeling_phalanx import sequence_starts
from phalanx_eval.bits_per_byte import score_texts
from phalanx_training.checks import check_finite_weights
from phalanx_training.data import DataSource, build_packed_dataset, read_texts
from phalanx_training.folders import output_folder

from . import CONVERSION_RECORD
from modeling_phalanx.configuration_phalanx import PHALANX_MIXER

from .families import source_layer_types


@dataclass
class StageConfig:
    """Hyper-parameters of one distillation stage."""

    steps: int
    lr: float
    batch_size: int = 8
    seq_len: int = 512
    warmup_steps: int | None = None  # None: 5% of steps
    other_lr: float = 0.0  # stage 2: lr of non-mixer parameters (0 freezes them)
    ce_weight: float = 0.0  # stage 2: weight of the cross-entropy term
    kl_chunk: int = 256  # stage 2: time steps per KL chunk
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.seq_len < 2 or self.kl_chunk < 1:
            raise ValueError(f"invalid stage settings: {self}")
        if self.lr <= 0 or self.other_lr < 0:
            raise ValueError(
                f"learning rates must be positive (other_lr >= 0), got lr={self.lr}, other_lr={self.other_lr}"
            )

    @property
    def tokens(self) -> int:
        """Training tokens this stage consumes."""
        return self.steps * self.batch_size * self.seq_len


@dataclass
class DistillOptions:
    """Options shared by both stages."""

    stage1: StageConfig | None = None
    stage2: StageConfig | None = None
    seed: int = 0
    save_every: int = 200
    eval_seq_len: int = 512
    eval_batch_size: int = 8
    eval_max_bytes: int | None = None
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------- helpers


def logits_from_hidden(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits from its final hidden states: `lm_head`, then the family's logit scale or soft cap.

    Mirrors the heads of Transformers' Gemma2/3 (final soft-capping), Cohere (logit scale) and Phalanx.
    """
    logits = model.lm_head(hidden)
    scale = getattr(model.config, "logit_scale", None)
    if scale is not None:
        logits = logits * scale
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def chunked_kl(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    chunk: int,
    labels: torch.Tensor | None = None,
    ce_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean forward KL(teacher || student) per token (and mean CE on `labels`), in time chunks.

    Each chunk's student logits are recomputed in backward (activation checkpointing), so logits for
    the whole sequence never exist at once, let alone twice.
    """

    def piece(h_s: torch.Tensor, h_t: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        log_q = F.log_softmax(logits_from_hidden(student, h_s).float(), dim=-1)
        with torch.no_grad():
            log_p = F.log_softmax(logits_from_hidden(teacher, h_t).float(), dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum()
        ce = (
            F.nll_loss(log_q.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
            if y is not None
            else kl.new_zeros(())
        )
        return kl, ce

    kl_sum = student_hidden.new_zeros((), dtype=torch.float32)
    ce_sum = kl_sum.clone()
    for start in range(0, student_hidden.shape[1], chunk):
        sl = slice(start, start + chunk)
        y = labels[:, sl] if labels is not None and ce_weight > 0 else None
        kl, ce = checkpoint(piece, student_hidden[:, sl], teacher_hidden[:, sl], y, use_reentrant=False)
        kl_sum, ce_sum = kl_sum + kl, ce_sum + ce
    n = student_hidden.shape[0] * student_hidden.shape[1]
    n_ce = int((labels != -100).sum()) if labels is not None and ce_weight > 0 else 1
    return kl_sum / n, ce_sum / max(n_ce, 1)


def bits_per_byte(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    seq_len: int = 512,
    batch_size: int = 8,
    max_bytes: int | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Bits per UTF-8 byte of `texts` under `model` (`phalanx_eval.bits_per_byte.score_texts`, overall).

    Each text is scored in windows of `seq_len` tokens that overlap by one token, so every token except the first
    of each text is predicted; the bytes of that first token are not counted.
    """
    result = score_texts(
        model, tokenizer, texts, seq_len=seq_len, batch_size=batch_size, max_bytes=max_bytes, amp_dtype=amp_dtype
    )
    return result.bits_per_byte


def _lr_at(step: int, cfg: StageConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak (a factor applied to each group's lr)."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, cfg.steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _batch_rows(step: int, batch_size: int, num_rows: int, seed: int) -> torch.Tensor:
    """Row indices of the batch at `step`: epochs are seeded permutations, so batches depend only on step."""
    first = step * batch_size
    idx = torch.arange(first, first + batch_size)
    epochs = (idx // num_rows).tolist()
    perms = {
        e: torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + e)) for e in set(epochs)
    }
    return torch.stack([perms[e][i % num_rows] for e, i in zip(epochs, idx.tolist(), strict=True)])


def converted_layers(student: PreTrainedModel, teacher: PreTrainedModel) -> list[int]:
    """Layers that are Phalanx mixers in the student and attention in the teacher (the pair must match)."""
    if student.config.vocab_size != teacher.config.vocab_size:
        raise ValueError(
            f"student vocab_size {student.config.vocab_size} differs from the teacher's {teacher.config.vocab_size}: "
            "the student must be the teacher's conversion"
        )
    s_types, t_types = student.config.layer_types, source_layer_types(teacher.config)
    if len(s_types) != len(t_types):
        raise ValueError(f"student has {len(s_types)} layers but teacher has {len(t_types)}")
    pairs = enumerate(zip(s_types, t_types, strict=True))
    layers = [i for i, (s, t) in pairs if s == PHALANX_MIXER and t != PHALANX_MIXER]
    if not layers:
        raise ValueError(
            "the student has no converted layers (no linear_attention layer where the teacher has attention)"
        )
    return layers


def mixer_parameters(student: PreTrainedModel, layers: Sequence[int]) -> list[torch.nn.Parameter]:
    """Parameters of the Phalanx mixers of `layers`."""
    return [p for i in layers for p in student.model.layers[i].mixer.parameters()]


class _AttentionTap:
    """Forward hooks recording the input and output of the teacher attention modules of `layers`."""

    def __init__(self, teacher: PreTrainedModel, layers: Sequence[int]) -> None:
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = []
        for i in layers:
            attn = teacher.model.layers[i].self_attn
            self.handles.append(attn.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self.handles.append(attn.register_forward_hook(self._post(i)))

    def _pre(self, i: int) -> Callable:
        def hook(module, args, kwargs):
            self.inputs[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    def _post(self, i: int) -> Callable:
        def hook(module, args, output):
            self.outputs[i] = output[0] if isinstance(output, tuple) else output

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# ------------------------------------------------------------------------------------ checkpoints


def _checkpoints(out: Path, stage: int) -> list[tuple[int, Path]]:
    """Complete checkpoints of ``stage`` in ``out`` as (step, folder), oldest first."""
    found = []
    for p in (out / "checkpoints").glob(f"stage{stage}-step*"):
        step = p.name.split("step")[-1]
        if step.isdigit() and (p / "state.json").is_file():
            found.append((int(step), p))
    return sorted(found)


def _save_checkpoint(
    out: Path, stage: int, step: int, student: PreTrainedModel, optimizer: torch.optim.Optimizer, history: list[dict]
) -> None:
    """Write a checkpoint atomically (``output_folder``) and keep only the latest two."""
    final = out / "checkpoints" / f"stage{stage}-step{step:07d}"
    with output_folder(final, force=True, create_parents=True) as tmp:
        save_file(
            {k: v.detach().contiguous() for k, v in student.state_dict().items() if not _is_tied_copy(student, k)},
            tmp / "student.safetensors",
        )
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"stage": stage, "step": step, "history": history}))
    for _, old in _checkpoints(out, stage)[:-2]:
        shutil.rmtree(old)


def _is_tied_copy(model: PreTrainedModel, key: str) -> bool:
    return key == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))


def _load_checkpoint(path: Path, student: PreTrainedModel, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    missing, unexpected = student.load_state_dict(
        load_file(path / "student.safetensors", device=str(next(student.parameters()).device)), strict=False
    )
    if unexpected or any(not _is_tied_copy(student, k) for k in missing):
        raise ValueError(f"checkpoint {path} does not match the student (missing {missing}, unexpected {unexpected})")
    optimizer.load_state_dict(
        torch.load(path / "optimizer.pt", map_location=next(student.parameters()).device, weights_only=True)
    )
    state = json.loads((path / "state.json").read_text())
    return state["step"], state["history"]


def loss_curves(history: list[dict]) -> dict[str, list[float]]:
    """One curve per quantity of the history (every key but 'step'); keys with identical values, such as
    stage 2's 'loss' and 'kl' when the CE weight is 0, are one curve labelled 'loss = kl'."""
    keys_of: dict[tuple[float, ...], list[str]] = {}
    for key in [k for k in history[0] if k != "step"]:
        keys_of.setdefault(tuple(h[key] for h in history), []).append(key)
    return {" = ".join(keys): list(values) for values, keys in keys_of.items()}


def plot_history(history: list[dict], path: Path, title: str, ylabel: str) -> None:
    """The history's :func:`loss_curves` against optimizer step as a PNG, log-scale y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = [h["step"] for h in history]
    for label, values in loss_curves(history).items():
        ax.plot(steps, values, label=label, linewidth=1.5 if "loss" in label.split(" = ") else 0.8)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- stages


def _stage1_loss(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tap: _AttentionTap,
    layers: Sequence[int],
    batch: dict[str, torch.Tensor],
    amp: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, float]]:
    with torch.no_grad(), torch.autocast(**amp):
        teacher.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    # Packed rows: the teacher's mask restarts attention at every position-0 token; the mixer restarts its
    # recurrence there too when given the same sequence boundaries.
    cu_seqlens = sequence_starts(batch["position_ids"])
    losses = []
    with torch.autocast(**amp):
        for i in layers:
            target = tap.outputs[i].float()
            pred = student.model.layers[i].mixer(
                tap.inputs[i], position_ids=batch["position_ids"], cu_seqlens=cu_seqlens
            )
            pred = pred[0] if isinstance(pred, tuple) else pred
            losses.append(F.mse_loss(pred.float(), target) / target.pow(2).mean().clamp_min(1e-12))
    per_layer = {f"layer{i}": loss.item() for i, loss in zip(layers, losses, strict=True)}
    return torch.stack(losses).mean(), per_layer


def _stage2_loss(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    cfg: StageConfig,
    batch: dict[str, torch.Tensor],
    amp: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, float]]:
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    with torch.no_grad(), torch.autocast(**amp):
        h_t = teacher.model(**kwargs).last_hidden_state
    with torch.autocast(**amp):
        h_s = student.model(**kwargs).last_hidden_state
        kl, ce = chunked_kl(student, teacher, h_s, h_t, cfg.kl_chunk, batch["labels"], cfg.ce_weight)
    loss = kl + cfg.ce_weight * ce
    logs = {"kl": kl.item()}
    if cfg.ce_weight > 0:
        logs["ce"] = ce.item()
    return loss, logs


def run_stage(
    stage: int,
    cfg: StageConfig,
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    rows: dict[str, torch.Tensor],
    out: Path,
    options: DistillOptions,
) -> list[dict]:
    """Train one stage (resuming from its latest checkpoint in `out`); returns the loss history."""
    layers = converted_layers(student, teacher)
    device = next(student.parameters()).device
    amp = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": device.type == "cuda"}
    mixer = mixer_parameters(student, layers)
    mixer_ids = {id(p) for p in mixer}
    others = [p for p in student.parameters() if id(p) not in mixer_ids]
    train_others = stage == 2 and cfg.other_lr > 0
    for p in student.parameters():
        p.requires_grad_(id(p) in mixer_ids or train_others)
    groups = [{"params": mixer, "lr": cfg.lr, "base_lr": cfg.lr}]
    if train_others:
        groups.append({"params": others, "lr": cfg.other_lr, "base_lr": cfg.other_lr})
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    start, history = 0, []
    saved = _checkpoints(out, stage)
    if saved:
        start, history = _load_checkpoint(saved[-1][1], student, optimizer)
    tap = _AttentionTap(teacher, layers) if stage == 1 else None
    student.train()
    num_rows = rows["input_ids"].shape[0]
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"stage {stage}", dynamic_ncols=True)
    try:
        for step in bar:
            idx = _batch_rows(step, cfg.batch_size, num_rows, options.seed + 7919 * stage)
            batch = {k: v[idx].to(device) for k, v in rows.items()}
            factor = _lr_at(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
            if stage == 1:
                loss, logs = _stage1_loss(student, teacher, tap, layers, batch, amp)
            else:
                loss, logs = _stage2_loss(student, teacher, cfg, batch, amp)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"stage {stage} loss is {loss.item()} at step {step}: training diverged; lower "
                    f"--stage{stage}-lr, or --resume from the last checkpoint"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
            optimizer.step()
            history.append({"step": step + 1, "loss": loss.item(), **logs})
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            if (step + 1) % options.save_every == 0 or step + 1 == cfg.steps:
                _save_checkpoint(out, stage, step + 1, student, optimizer, history)
    finally:
        if tap is not None:
            tap.remove()
    for p in student.parameters():
        p.requires_grad_(True)
    return history


# ------------------------------------------------------------------------------------------ driver


def distill(
    teacher_path: str | os.PathLike,
    student_path: str | os.PathLike,
    out: str | os.PathLike,
    data: Sequence[str | os.PathLike],
    eval_data: Sequence[str | os.PathLike],
    options: DistillOptions,
) -> dict[str, Any]:
    """Run stage 1 and/or stage 2 and write the distilled student to `out/stage{1,2}`.

    `out` holds `checkpoints/`, `metrics.json` (held-out bits-per-byte of the teacher, the student
    before distillation and after each stage; tokens used; final per-layer stage-1 losses) and the loss
    curves `loss_stage{1,2}.png`. Calling again with the same `out` resumes where it stopped.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(options.device)
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    load_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # Never a folder's own code: converted students are Phalanx, teachers a supported Transformers family.
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=load_dtype, trust_remote_code=False)
    check_finite_weights(teacher.state_dict(), teacher_path)
    teacher = teacher.to(device).eval()
    teacher.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    eval_texts = read_texts(eval_data, exclude_held_out=False)

    def evaluate(model: PreTrainedModel, name: str) -> float:
        print(f"distill: held-out bits/byte of the {name}", file=sys.stderr, flush=True)  # stdout: the metrics
        return bits_per_byte(
            model,
            tokenizer,
            eval_texts,
            seq_len=options.eval_seq_len,
            batch_size=options.eval_batch_size,
            max_bytes=options.eval_max_bytes,
            amp_dtype=amp_dtype,
        )

    metrics_path = out / "metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["options"] = json.loads(json.dumps(asdict(options), default=str))

    def save_metrics() -> None:
        metrics_path.write_text(json.dumps(metrics, indent=2))

    if "bpb_teacher" not in metrics:
        metrics["bpb_teacher"] = evaluate(teacher, "teacher")
        save_metrics()
    source = Path(student_path)
    for stage, cfg in ((1, options.stage1), (2, options.stage2)):
        if cfg is None or cfg.steps == 0:
            continue
        final = out / f"stage{stage}"
        if (final / "config.json").is_file():
            source = final
            continue
        student = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=False)
        check_finite_weights(student.state_dict(), source)
        student = student.to(device)
        if "bpb_student_initial" not in metrics:
            metrics["bpb_student_initial"] = evaluate(student, "converted student (before distillation)")
            save_metrics()
        rows = build_packed_dataset(DataSource(tuple(data)), tokenizer, cfg.seq_len).packed
        history = run_stage(stage, cfg, student, teacher, rows, out, options)
        plot_history(
            history,
            out / f"loss_stage{stage}.png",
            f"distill stage {stage} ({'per-layer output MSE' if stage == 1 else 'logit KL'}): student {student_path}, "
            f"teacher {teacher_path}\nrun: {out}",
            "layer-output MSE / teacher output mean square" if stage == 1 else "nats / token",
        )
        metrics[f"bpb_after_stage{stage}"] = evaluate(student, f"student after stage {stage}")
        metrics[f"tokens_stage{stage}"] = cfg.tokens
        metrics[f"final_losses_stage{stage}"] = _tail_mean(history)
        record = Path(student_path) / CONVERSION_RECORD
        with output_folder(final, inputs=[teacher_path, student_path], force=True) as tmp:
            student.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if record.is_file():  # the conversion record travels on, so an export keeps its provenance
                shutil.copy2(record, tmp / CONVERSION_RECORD)
        save_metrics()
        source = final
    return metrics


def _tail_mean(history: list[dict], frac: float = 0.1) -> dict[str, float]:
    """Mean of each logged value over the last `frac` of the steps."""
    tail = history[-max(1, int(len(history) * frac)) :]
    return {k: sum(h[k] for h in tail) / len(tail) for k in tail[0] if k != "step"}
