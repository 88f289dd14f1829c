"""Distil a converted Phalanx student back to its SWA teacher (`phalanx distill`), on the Transformers `Trainer`.

Stage 1, per-layer output matching (teacher-forced): every converted layer's mixer receives the input
the teacher's attention received at that layer and learns to reproduce the teacher attention output
(after `o_proj`); loss = MSE / mean square of the teacher output, per row, averaged over rows and
layers. Only the mixers train (:class:`ConvertedMixers` is the trained module), all layers in one pass
since their inputs come from the teacher.

Stage 2, end-to-end logit distillation: forward KL(teacher || student) at temperature 1 between the two
models' own logits (``F.kl_div(..., log_target=True)``), in time chunks whose float32 log-probabilities
are recomputed in backward, optionally plus `ce_weight` x the student's own cross-entropy; mixer
parameters train at `lr`, the rest at `other_lr` (0 freezes them).

Each stage is one `Trainer` run (:class:`DistillTrainer`), so it has gradient accumulation, DDP and FSDP
under `accelerate launch` / `torchrun` (the frozen teacher on each device), bf16, `report_to`, and
checkpoints in `out/checkpoints/stage{1,2}` that resume exactly. Held-out bits-per-byte is measured before
and after each stage.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import PartialState
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import (
    AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, ProgressCallback, Trainer, TrainerCallback,
    TrainerControl, TrainerState, TrainingArguments,
)

import modeling_phalanx  # noqa: F401  (registers the phalanx model type with the Auto classes)
from modeling_phalanx.configuration_phalanx import PHALANX_MIXER
from modeling_phalanx.modeling_phalanx import sequence_starts
from phalanx_eval.bits_per_byte import score_texts
from phalanx_training.callbacks import LabelledProgressCallback, peak_memory_callbacks, plot_loss_curve
from phalanx_training.checks import check_finite_weights
from phalanx_training.cli import tokens_per_second
from phalanx_training.data import DataSource, PackedCollator, build_packed_dataset, read_texts
from phalanx_training.folders import output_folder, write_file
from phalanx_training.options import check_report_to, latest_checkpoint, launched_processes, use_bf16

from . import CONVERSION_RECORD
from .families import source_layer_types

MIXER_PARAMETER = re.compile(r"(^|\.)mixer\.")  # names of Phalanx mixer parameters, in the student and in ConvertedMixers


@dataclass
class StageConfig:
    """Hyper-parameters of one distillation stage."""

    steps: int
    lr: float
    batch_size: int = 8  # rows per device per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    seq_len: int = 512
    warmup_steps: int | None = None  # None: 5% of steps
    other_lr: float = 0.0  # stage 2: lr of non-mixer parameters (0 freezes them)
    ce_weight: float = 0.0  # stage 2: weight of the cross-entropy term
    kl_chunk: int = 256  # stage 2: time steps per KL chunk
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1 or self.seq_len < 2 or self.kl_chunk < 1:
            raise ValueError(f"invalid stage settings: {self}")
        if self.lr <= 0 or self.other_lr < 0:
            raise ValueError(
                f"learning rates must be positive (other_lr >= 0), got lr={self.lr}, other_lr={self.other_lr}"
            )


@dataclass
class DistillOptions:
    """Options shared by both stages."""

    stage1: StageConfig | None = None
    stage2: StageConfig | None = None
    seed: int = 0
    save_every: int = 200
    logging_steps: int = 10
    eval_seq_len: int = 512
    eval_batch_size: int = 8
    eval_max_bytes: int | None = None
    eval_every: int = 0  # also score held-out bits/byte every N steps of each stage (a recovery curve); 0: never
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    precision: str = "auto"  # auto: bf16 on a GPU that supports it, else fp32
    report_to: str = "none"


# ----------------------------------------------------------------------------------------- helpers


def chunked_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean forward KL(teacher || student) per token of (B, T, V) logits, in chunks of `chunk` time steps.

    Each chunk's float32 log-probabilities are recomputed in backward (activation checkpointing), so they never
    exist for the whole sequence at once.
    """

    def piece(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_q = F.log_softmax(s.float(), dim=-1)
        log_p = F.log_softmax(t.float(), dim=-1)
        return F.kl_div(log_q, log_p, log_target=True, reduction="sum")

    total = student_logits.new_zeros((), dtype=torch.float32)
    for start in range(0, student_logits.shape[1], chunk):
        sl = slice(start, start + chunk)
        total = total + checkpoint(piece, student_logits[:, sl], teacher_logits[:, sl].detach(), use_reentrant=False)
    return total / (student_logits.shape[0] * student_logits.shape[1])


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


class ConvertedMixers(nn.Module):
    """The student's mixers of the converted `layers` as one module, the module stage 1 trains (its
    parameters are the student's): `forward` maps the teacher attention's input at each layer to the
    mixer's output."""

    def __init__(self, student: PreTrainedModel, layers: Sequence[int]) -> None:
        super().__init__()
        self.mixer = nn.ModuleDict({str(i): student.model.layers[i].mixer for i in layers})

    def forward(self, hidden: dict[str, torch.Tensor], position_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        # Packed rows: the teacher's mask restarts attention at every position-0 token; the mixer restarts its
        # recurrence there too when given the same sequence boundaries.
        cu_seqlens, max_seqlen = sequence_starts(position_ids)
        outputs = {}
        for i, mixer in self.mixer.items():
            out = mixer(hidden[i], position_ids=position_ids, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
            outputs[i] = out[0] if isinstance(out, tuple) else out
        return outputs


class _AttentionTap:
    """Forward hooks recording the input and output of the teacher attention modules of `layers`."""

    def __init__(self, teacher: PreTrainedModel, layers: Sequence[int]) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        for i in layers:
            attn = teacher.model.layers[i].self_attn
            self.handles.append(attn.register_forward_pre_hook(self._pre(str(i)), with_kwargs=True))
            self.handles.append(attn.register_forward_hook(self._post(str(i))))

    def _pre(self, i: str) -> Callable:
        def hook(module, args, kwargs):
            self.inputs[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    def _post(self, i: str) -> Callable:
        def hook(module, args, output):
            self.outputs[i] = output[0] if isinstance(output, tuple) else output

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _StageProgress(LabelledProgressCallback):
    """The labelled progress bar with the latest logged loss as its postfix; logs are not printed, since stdout
    carries the run's metrics."""

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs) -> None:
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}")


class _EveryNSteps(TrainerCallback):
    """Calls ``action(step)`` every ``every`` optimizer steps, except at a stage's last step (``distill`` scores
    the saved result there)."""

    def __init__(self, every: int, action: Callable[[int], None]) -> None:
        self.every, self.action = every, action

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self.action(state.global_step)


# ----------------------------------------------------------------------------------------- trainer


class DistillTrainer(Trainer):
    """A `Trainer` whose loss is stage 1's per-layer output matching or stage 2's logit KL against a frozen
    `teacher` (moved to this process's device). Each loss is a per-micro-batch mean; its parts (stage 1's
    `layer{i}` losses, stage 2's `kl` and `ce` when `ce_weight` > 0) are logged with it, averaged over the
    steps since the last log and over processes."""

    def __init__(self, *args: Any, teacher: PreTrainedModel, stage: int, config: StageConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device)
        self.stage, self.config = stage, config
        self.model_accepts_loss_kwargs = False  # per-micro-batch means: the Trainer divides by the accumulation steps
        self.parts: dict[str, list[float]] = {}
        unwrapped = self.accelerator.unwrap_model(self.model)
        self.tap = _AttentionTap(teacher, [int(i) for i in unwrapped.mixer]) if stage == 1 else None

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW (betas 0.9, 0.95): mixer parameters at the stage's lr, every other trained one at `other_lr`."""
        if self.optimizer is None:
            named = [(n, p) for n, p in (model or self.model).named_parameters() if p.requires_grad]
            groups = [{"params": [p for n, p in named if MIXER_PARAMETER.search(n)], "lr": self.config.lr}]
            others = [p for n, p in named if not MIXER_PARAMETER.search(n)]
            if others:
                groups.append({"params": others, "lr": self.config.other_lr})
            self.optimizer = torch.optim.AdamW(
                groups, lr=self.config.lr, betas=(0.9, 0.95), weight_decay=self.config.weight_decay
            )
        return self.optimizer

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        loss, parts = self._stage1_loss(model, inputs) if self.stage == 1 else self._stage2_loss(model, inputs)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"stage {self.stage} loss is {loss.item()} at step {self.state.global_step + 1}: training diverged; "
                f"lower --stage{self.stage}-lr, or --resume from the last checkpoint"
            )
        for key, value in parts.items():
            self.parts.setdefault(key, []).append(value)
        return (loss, None) if return_outputs else loss

    def _stage1_loss(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            self.teacher.model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False)
        predicted = model(hidden=self.tap.inputs, position_ids=inputs["position_ids"])
        losses = {}
        for i, target in self.tap.outputs.items():  # per row, so a batch split over steps or processes is the same
            target = target.float()
            error = (predicted[i].float() - target).pow(2).mean(dim=(1, 2))
            losses[f"layer{i}"] = (error / target.pow(2).mean(dim=(1, 2)).clamp_min(1e-12)).mean()
        return torch.stack(list(losses.values())).mean(), {k: v.item() for k, v in losses.items()}

    def _stage2_loss(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        kwargs = {"input_ids": inputs["input_ids"], "position_ids": inputs["position_ids"], "use_cache": False}
        with torch.no_grad():
            teacher_logits = self.teacher(**kwargs).logits
        with_ce = self.config.ce_weight > 0
        outputs = model(**kwargs, labels=inputs["labels"] if with_ce else None)
        kl = chunked_kl(outputs.logits, teacher_logits, self.config.kl_chunk)
        if not with_ce:
            return kl, {}
        return kl + self.config.ce_weight * outputs.loss, {"kl": kl.item(), "ce": outputs.loss.item()}

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.parts and "loss" in logs:  # every process logs at the same steps, so the mean over them is collective
            means = torch.tensor([sum(v) / len(v) for v in self.parts.values()], device=self.args.device)
            means = self.accelerator.reduce(means, reduction="mean")
            logs = {**logs, **{k: round(float(m), 6) for k, m in zip(self.parts, means.tolist(), strict=True)}}
            self.parts = {}
        super().log(logs, *args, **kwargs)

    def remove_tap(self) -> None:
        if self.tap is not None:
            self.tap.remove()


# ------------------------------------------------------------------------------------------ driver


def stage_arguments(stage: int, config: StageConfig, options: DistillOptions, output_dir: Path) -> TrainingArguments:
    """The `TrainingArguments` of one stage: linear warm-up (5% of the steps unless set), cosine decay to 10%
    of each group's lr, checkpoints every `save_every` steps (the latest two kept)."""
    if options.device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {options.device!r}")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device here; use --device cpu")
    cpu = options.device == "cpu" or (launched_processes() > 1 and not torch.cuda.is_available())
    if cpu and options.precision == "bf16":
        raise ValueError("--precision bf16 needs --device cuda (on the CPU distillation runs in fp32)")
    check_report_to(options.report_to)
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, config.steps // 20)
    return TrainingArguments(
        output_dir=str(output_dir),
        run_name=f"{output_dir.parent.parent.name} stage {stage}",
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        max_grad_norm=config.grad_clip,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=warmup,
        seed=options.seed,
        data_seed=options.seed + 7919 * stage,
        save_strategy="steps",
        save_steps=options.save_every,
        save_total_limit=2,
        logging_steps=min(options.logging_steps, config.steps),  # a short stage still logs its loss once
        report_to=options.report_to,
        bf16=not cpu and use_bf16(options.precision),
        use_cpu=cpu,
        include_num_input_tokens_seen=True,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=not cpu,
    )


def run_stage(
    stage: int,
    config: StageConfig,
    args: TrainingArguments,
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: Sequence[str | os.PathLike],
    callbacks: Sequence[TrainerCallback] = (),
) -> DistillTrainer:
    """Train one stage with `args` (:func:`stage_arguments`) and extra `callbacks`, resuming from the latest complete
    checkpoint in its output folder; returns the trainer (its state holds the logged history)."""
    layers = converted_layers(student, teacher)
    train_others = stage == 2 and config.other_lr > 0
    for name, p in student.named_parameters():
        p.requires_grad_(bool(MIXER_PARAMETER.search(name)) or train_others)
    model = ConvertedMixers(student, layers) if stage == 1 else student
    trainer = DistillTrainer(
        model=model,
        args=args,
        train_dataset=build_packed_dataset(DataSource(tuple(data)), tokenizer, config.seq_len),
        data_collator=PackedCollator(),
        teacher=teacher,
        stage=stage,
        config=config,
        callbacks=[*callbacks, *peak_memory_callbacks()],
    )
    trainer.pop_callback(ProgressCallback)
    progress = _StageProgress(f"distill stage {stage}")
    trainer.add_callback(progress)
    try:
        trainer.train(resume_from_checkpoint=latest_checkpoint(args.output_dir))
    finally:
        trainer.remove_tap()
        if progress.training_bar is not None:  # a stage that failed: its bar ends before the error line
            progress.training_bar.close()
    return trainer


def distill(
    teacher_path: str | os.PathLike,
    student_path: str | os.PathLike,
    out: str | os.PathLike,
    data: Sequence[str | os.PathLike],
    eval_data: Sequence[str | os.PathLike],
    options: DistillOptions,
) -> dict[str, Any]:
    """Run stage 1 and/or stage 2 and write the distilled student to `out/stage{1,2}`.

    `out` holds `checkpoints/`, `metrics.json` (held-out bits-per-byte of the teacher, the student before
    distillation and after each stage; tokens and tokens/s of each stage; final losses) and the loss curves
    `loss_stage{1,2}.png`. With `options.eval_every` > 0, `metrics.json` also holds `bpb_curve`: held-out
    bits-per-byte every that many steps of each stage, with the distillation tokens seen by then (both stages
    counted). Calling again with the same `out` resumes where it stopped. Under a launcher every process runs this;
    the first one evaluates and writes (so a curve needs one device or DDP, where the first process holds the
    whole student).
    """
    if options.eval_every < 0:
        raise ValueError(f"eval_every must be 0 (off) or a positive number of steps, got {options.eval_every}")
    out = Path(out)
    stages = ((1, options.stage1), (2, options.stage2))
    # Every option is checked, and the processes of a launched run join one group, before any work.
    arguments = {
        stage: stage_arguments(stage, config, options, out / "checkpoints" / f"stage{stage}")
        for stage, config in stages
        if config is not None and config.steps > 0
    }
    first = next(iter(arguments.values()), None)
    device = first.device if first is not None else torch.device(options.device)
    state = PartialState()
    bf16 = first is not None and first.bf16
    dtype = torch.bfloat16 if bf16 else torch.float32
    # Never a folder's own code: converted students are Phalanx, teachers a supported Transformers family.
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=dtype, trust_remote_code=False)
    check_finite_weights(teacher.state_dict(), teacher_path)
    teacher = teacher.to(device).eval()
    teacher.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    eval_texts = read_texts(eval_data, exclude_held_out=False)

    def load(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=False)
        check_finite_weights(model.state_dict(), folder)
        return model

    def evaluate(model: PreTrainedModel, name: str) -> float:
        print(f"distill: held-out bits/byte of the {name}", file=sys.stderr, flush=True)  # stdout: the metrics
        return bits_per_byte(
            model.to(device).eval(),
            tokenizer,
            eval_texts,
            seq_len=options.eval_seq_len,
            batch_size=options.eval_batch_size,
            max_bytes=options.eval_max_bytes,
            amp_dtype=torch.bfloat16 if bf16 else None,
        )

    metrics_path = out / "metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["options"] = json.loads(json.dumps(asdict(options), default=str))
    metrics["processes"] = state.num_processes

    def save_metrics() -> None:
        write_file(metrics_path, json.dumps(metrics, indent=2) + "\n")

    if state.is_main_process:
        print(f"distill: {state.num_processes} process(es) on {device.type}", file=sys.stderr, flush=True)
        if "bpb_teacher" not in metrics:
            metrics["bpb_teacher"] = evaluate(teacher, "teacher")
        if "bpb_student_initial" not in metrics:
            metrics["bpb_student_initial"] = evaluate(load(student_path, dtype), "converted student (before distillation)")
        save_metrics()
    state.wait_for_everyone()
    source = Path(student_path)
    for stage, config in stages:
        final = out / f"stage{stage}"
        if (final / "config.json").is_file():  # done in an earlier run, e.g. stage 1 before a stage-2-only run
            source = final
            continue
        if stage not in arguments:
            continue
        student = load(source)
        tokens_per_step = config.batch_size * config.grad_accum * state.num_processes * config.seq_len
        tokens_before = metrics.get("tokens_stage1", 0) if stage == 2 else 0

        def curve_point(step: int, stage: int = stage, student: PreTrainedModel = student) -> None:
            if state.is_main_process:
                bpb = evaluate(student, f"student at stage {stage} step {step}")
                student.train()
                metrics.setdefault("bpb_curve", []).append(
                    {"stage": stage, "step": step, "tokens": tokens_before + step * tokens_per_step, "bpb": bpb}
                )
                save_metrics()
            state.wait_for_everyone()

        curve = [_EveryNSteps(options.eval_every, curve_point)] if options.eval_every else []
        trainer = run_stage(stage, config, arguments[stage], student, teacher, tokenizer, data, curve)
        history = trainer.state.log_history
        parts = [k for h in history if "loss" in h for k in h if k.startswith("layer") or k in ("kl", "ce")]
        curves = list(dict.fromkeys(parts))
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if stage == 2 else None  # FSDP: gathered
        if state.is_main_process:
            record = Path(student_path) / CONVERSION_RECORD
            with output_folder(final, inputs=[teacher_path, student_path], force=True) as tmp:
                student.save_pretrained(tmp, state_dict=state_dict)
                tokenizer.save_pretrained(tmp)
                if record.is_file():  # the conversion record travels on, so an export keeps its provenance
                    shutil.copy2(record, tmp / CONVERSION_RECORD)
            plot_loss_curve(
                history,
                out / f"loss_stage{stage}.png",
                f"distill stage {stage} ({'per-layer output MSE' if stage == 1 else 'logit KL'}): student "
                f"{student_path}, teacher {teacher_path}\nrun: {out}",
                curves=curves,
                ylabel="layer-output MSE / teacher output mean square" if stage == 1 else "nats / token",
                log_scale=True,
            )
            metrics[f"tokens_stage{stage}"] = config.steps * tokens_per_step
            metrics[f"tokens_per_second_stage{stage}"] = tokens_per_second(trainer.state)
            metrics[f"final_losses_stage{stage}"] = _tail_mean(history, ["loss", *curves])
        del trainer, student, state_dict  # the trained model and optimizer leave memory before the evaluation
        gc.collect()
        if state.is_main_process:
            metrics[f"bpb_after_stage{stage}"] = evaluate(load(final, dtype), f"student after stage {stage}")
            save_metrics()
        state.wait_for_everyone()
        source = final
    return metrics


def _tail_mean(history: list[dict], keys: Sequence[str], frac: float = 0.1) -> dict[str, float]:
    """Mean of each of `keys` over the last `frac` of the logged training steps."""
    logged = [h for h in history if "loss" in h]
    tail = logged[-max(1, int(len(logged) * frac)) :]
    return {k: sum(h[k] for h in tail) / len(tail) for k in keys}
