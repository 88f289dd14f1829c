"""GPU demonstration of `phalanx convert` + `phalanx distill` on a real (small) local/global model.

1. Train a Gemma3-shaped Transformers teacher (byte tokenizer, 5 sliding-window layers : 1 global,
   window 128) on the Shakespeare corpus minus the held-out works (split by file name,
   `phalanx_training.data.HELD_OUT_WORKS`), save it as an ordinary Transformers checkpoint.
2. Measure the attention mass of its SWA layers beyond 16/32/128 tokens on held-out text.
3. Convert its SWA layers with each warm-start scheme and distil each one, stage 1 (per-layer output
   matching) then stage 2 (logit KL), within a token budget that is a fixed fraction of the teacher's
   training tokens; one more run gives the whole budget to stage 2. Held-out bits-per-byte after each
   stage measures which initialisation to use by default and whether stage 1 pays for its tokens.
4. Time a converted layer's mixer against the SWA attention it replaced (forward, forward+backward).

Writes run_log.txt, results.json, RESULTS.md and the plots into --out ($OUT on the GPU machine).
`--tiny` runs the whole pipeline with toy sizes on the CPU (a smoke test before spending GPU time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

from modeling_phalanx.configuration_phalanx import FULL_ATTENTION, SLIDING_ATTENTION
from phalanx_conversion.analyze import analyze_checkpoint, format_table, plot_mass
from phalanx_conversion.convert import convert_checkpoint
from phalanx_conversion.distill import DistillOptions, StageConfig, bits_per_byte, distill
from phalanx_conversion.init import DEFAULT_INIT, INIT_SCHEMES
from phalanx_training.callbacks import plot_loss_curve
from phalanx_training.data import DataSource, build_packed_dataset, is_held_out, list_text_files
from phalanx_training.tokenizer import load_byte_tokenizer

REPO = Path(__file__).resolve().parents[2]

FULL = dict(
    hidden=512,
    layers=12,
    heads=8,
    kv_heads=4,
    head_dim=64,
    ffn=1536,
    window=128,
    seq=512,
    batch=32,
    teacher_steps=1000,
    distill_batch=8,
    eval_bytes=None,
    speed_lens=(512, 2048, 8192),
)
TINY = dict(
    hidden=64,
    layers=6,
    heads=4,
    kv_heads=2,
    head_dim=16,
    ffn=128,
    window=48,
    seq=128,
    batch=4,
    teacher_steps=20,
    distill_batch=4,
    eval_bytes=2000,
    speed_lens=(128, 256),
)


class Tee:
    """Print to stdout and to a log file."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w")

    def __call__(self, *parts: object) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def teacher_config(size: dict, tokenizer) -> transformers.Gemma3TextConfig:
    layer_types = [FULL_ATTENTION if (i + 1) % 6 == 0 else SLIDING_ATTENTION for i in range(size["layers"])]
    return transformers.Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=size["hidden"],
        intermediate_size=size["ffn"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["kv_heads"],
        head_dim=size["head_dim"],
        query_pre_attn_scalar=size["head_dim"],
        sliding_window=size["window"],
        layer_types=layer_types,
        max_position_embeddings=16384,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )


def train_teacher(
    model, rows: dict, size: dict, max_seconds: float, device: torch.device, log: Tee, heldout, tokenizer
) -> dict:
    """AdamW, warm-up then cosine, bf16 autocast; stops at `teacher_steps` or `max_seconds`."""
    steps, batch = size["teacher_steps"], size["batch"]
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=device.type == "cuda"
    )
    gen = torch.Generator().manual_seed(0)
    n = rows["input_ids"].shape[0]
    history, start, step = [], time.time(), 0
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    for step in range(steps):
        warm = 100 if steps > 400 else max(1, steps // 10)
        lr = 1e-3 * (min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps))))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n, (batch,), generator=gen)
        b = {k: v[idx].to(device, non_blocking=True) for k, v in rows.items()}
        with torch.autocast(**amp):
            loss = model(
                input_ids=b["input_ids"], position_ids=b["position_ids"], labels=b["labels"], use_cache=False
            ).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step + 1, "loss": loss.item()})
        if step % 250 == 0 and step > 0:
            bpb = bits_per_byte(
                model,
                tokenizer,
                heldout,
                seq_len=size["seq"],
                batch_size=32,
                max_bytes=20000,
                amp_dtype=amp_dtype(device),
            )
            log(
                f"teacher step {step}: train loss {loss.item():.4f} nats/byte, held-out bpb (first 20 kB of each work) {bpb:.4f}, {time.time() - start:.0f}s"
            )
        if time.time() - start > max_seconds:
            log(f"teacher: time budget reached after {step + 1} steps")
            break
    model.eval()
    return {
        "steps": step + 1,
        "tokens": (step + 1) * batch * size["seq"],
        "seconds": time.time() - start,
        "history": history,
    }


def amp_dtype(device: torch.device) -> torch.dtype | None:
    return torch.bfloat16 if device.type == "cuda" else None


def capture_call(model, module, ids: torch.Tensor, pos: torch.Tensor) -> tuple[tuple, dict]:
    """The exact (args, kwargs) `module` receives during a forward of `model` on `ids`."""
    seen = {}

    def hook(mod, args, kwargs):
        seen["call"] = (args, kwargs)

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model.model(input_ids=ids, position_ids=pos, use_cache=False)
    finally:
        handle.remove()
    return seen["call"]


def time_module(module, args: tuple, kwargs: dict, backward: bool, reps: int = 20) -> float:
    """Median milliseconds of one call (plus backward with a random output gradient)."""
    kwargs = dict(kwargs)
    hidden = args[0] if args else kwargs.pop("hidden_states")
    x = hidden.detach().requires_grad_(backward)
    rest = args[1:]

    def once() -> None:
        out = module(x, *rest, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        if backward:
            out.backward(torch.ones_like(out))

    for _ in range(3):
        once()
    times = []
    for _ in range(reps):
        if x.is_cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            once()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            once()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def layer_speed(
    teacher, student, layer: int, lengths: tuple[int, ...], tokens: int, device: torch.device
) -> list[dict]:
    """SWA attention module of `layer` in the teacher vs the Phalanx mixer that replaced it."""
    rows = []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t_model = teacher.to(dtype)
    s_model = student.to(dtype)
    for T in lengths:
        B = max(1, tokens // T)
        ids = torch.randint(3, teacher.config.vocab_size, (B, T), device=device)
        pos = torch.arange(T, device=device).expand(B, T)
        entry = {"seq_len": T, "batch": B}
        for name, model, module in (
            ("swa", t_model, t_model.model.layers[layer].self_attn),
            ("phalanx", s_model, s_model.model.layers[layer].mixer),
        ):
            try:
                args, kwargs = capture_call(model, module, ids, pos)
                with torch.no_grad():
                    entry[f"{name}_fwd_ms"] = time_module(module, args, kwargs, backward=False)
                entry[f"{name}_fwdbwd_ms"] = time_module(module, args, kwargs, backward=True)
            except torch.OutOfMemoryError:
                entry[f"{name}_fwd_ms"] = entry.setdefault(f"{name}_fwd_ms", math.nan)
                entry[f"{name}_fwdbwd_ms"] = math.nan
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache() if device.type == "cuda" else None
        rows.append(entry)
    return rows


def kernel_check(device: torch.device, log: Tee) -> str:
    """Which path the Phalanx mixer takes on this device, after checking Triton against the torch path."""
    if device.type != "cuda":
        return "torch (cpu)"
    import phalanx_kernels
    from phalanx_kernels.swr_torch import phalanx_core_torch

    if not phalanx_kernels.HAS_TRITON:
        return "torch (triton unavailable)"
    H, D = 32, 16
    proj = torch.randn(2, 1000, H + 2 * H * D + H * D, device=device)
    kw = dict(num_heads=H, head_dim=D, num_gate_groups=H, block_len=16, window_blocks=2)
    try:
        x = proj.clone().requires_grad_(True)
        got = phalanx_kernels.phalanx_core(x, **kw)
        weight = torch.randn_like(got)
        (got * weight).sum().backward()
        x64 = proj.double().requires_grad_(True)
        ref = phalanx_core_torch(x64, **kw)
        (ref * weight.double()).sum().backward()
        err = max(
            ((got.double() - ref).norm() / ref.norm()).item(),
            ((x.grad.double() - x64.grad).norm() / x64.grad.norm()).item(),
        )
    except Exception as e:  # a broken kernel must not sink the demonstration: fall back and say so
        os.environ["PHALANX_FORCE_TORCH"] = "1"
        log(f"kernel check: Triton phalanx_core failed ({type(e).__name__}: {e}); using the torch path")
        return "torch (triton failed)"
    log(f"kernel check: Triton phalanx_core forward and backward vs float64 torch, max relative error {err:.2e}")
    if not err < 1e-4:
        os.environ["PHALANX_FORCE_TORCH"] = "1"
        return f"torch (triton error {err:.1e})"
    return "triton"


def results_table(r: dict) -> str:
    t = r["teacher"]
    lines = [
        f"Machine: {r['env']['device']}; torch {r['env']['torch']}, transformers {r['env']['transformers']}, mixer path: {r['env']['mixer_path']}.",
        "",
        f"Teacher: Gemma3-shaped, {r['teacher']['params'] / 1e6:.1f}M parameters, {r['teacher']['layers']} layers "
        f"({len(r['converted_layers'])} sliding-window (window {r['teacher']['window']}) converted, the rest global), byte tokenizer; "
        f"trained {t['tokens'] / 1e6:.1f}M tokens ({t['steps']} steps, {t['seconds']:.0f} s).",
        "",
        "| model | held-out bits/byte | vs teacher | distillation tokens | % of teacher tokens |",
        "|---|---|---|---|---|",
    ]
    d = r["distill"]
    teacher_bpb = d["bpb_teacher"]
    rows = [
        ("teacher (SWA + global)", teacher_bpb, 0),
        (f"zero-shot swap (init {r['default_init']})", d["bpb_student_initial"], 0),
        ("after stage 1", d["bpb_after_stage1"], d["tokens_stage1"]),
        ("after stage 2", d["bpb_after_stage2"], d["tokens_stage1"] + d["tokens_stage2"]),
    ]
    for name, bpb, tokens in rows:
        lines.append(
            f"| {name} | {bpb:.4f} | {100 * (bpb / teacher_bpb - 1):+.2f}% | {tokens / 1e6:.2f}M | {100 * tokens / t['tokens']:.2f}% |"
        )
    goal = (
        d["bpb_after_stage2"] <= 1.03 * teacher_bpb and d["tokens_stage1"] + d["tokens_stage2"] <= 0.05 * t["tokens"]
    )
    lines += [
        "",
        f"Goal (after stage 2 within 3% of the teacher's bits/byte with at most 5% of its training tokens): {'met' if goal else 'not met'}.",
        "",
        "Every warm start with the same budget (held-out bits/byte; stage-1 loss = relative MSE, mean of the last 10% of steps):",
        "",
        "| variant | zero-shot | after stage 1 | after stage 2 | vs teacher | final stage-1 loss | tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        s1 = v.get("bpb_after_stage1")
        loss1 = v.get("final_losses_stage1", {}).get("loss")
        tokens = v.get("tokens_stage1", 0) + v.get("tokens_stage2", 0)
        lines.append(
            f"| {name} | {v['bpb_student_initial']:.4f} | {'-' if s1 is None else f'{s1:.4f}'} | {v['bpb_after_stage2']:.4f} | "
            f"{100 * (v['bpb_after_stage2'] / teacher_bpb - 1):+.2f}% | {'-' if loss1 is None else f'{loss1:.3f}'} | {tokens / 1e6:.2f}M |"
        )
    lines += [
        "",
        f"Layer speed (layer {r['speed_layer']}: SWA attention module vs the Phalanx mixer that replaced it; "
        "median ms, bf16, q/k/v/o resp. in/out projections included):",
        "",
        "| seq len | batch | SWA fwd | Phalanx fwd | SWA fwd+bwd | Phalanx fwd+bwd | speed-up fwd+bwd |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in r["speed"]:
        lines.append(
            f"| {s['seq_len']} | {s['batch']} | {s['swa_fwd_ms']:.3f} | {s['phalanx_fwd_ms']:.3f} | {s['swa_fwdbwd_ms']:.3f} | "
            f"{s['phalanx_fwdbwd_ms']:.3f} | {s['swa_fwdbwd_ms'] / s['phalanx_fwdbwd_ms']:.2f}x |"
        )
    lines += ["", "Attention mass of the teacher's SWA layers on held-out text:", "", r["attention_mass_table"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO / ".demo_data" / "shakespeare"), help="folder of *_gut.txt works")
    parser.add_argument("--out", default=os.environ.get("OUT", "conversion_demo_out"))
    parser.add_argument("--work", default="/tmp/conversion_demo", help="checkpoints (large, not kept)")
    parser.add_argument("--teacher-seconds", type=float, default=240)
    parser.add_argument("--distill-fraction", type=float, default=0.048, help="distillation tokens / teacher tokens")
    parser.add_argument("--stage1-share", type=float, default=0.3, help="share of the distillation tokens for stage 1")
    parser.add_argument("--stage1-lr", type=float, default=3e-3)
    parser.add_argument("--stage2-lr", type=float, default=1e-3)
    parser.add_argument("--stage2-other-lr", type=float, default=1e-4)
    parser.add_argument(
        "--schemes", nargs="+", choices=INIT_SCHEMES, default=list(INIT_SCHEMES), help="warm starts to distil"
    )
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU")
    args = parser.parse_args()
    if DEFAULT_INIT not in args.schemes:
        raise ValueError(f"--schemes must include the default {DEFAULT_INIT!r}")

    size = TINY if args.tiny else FULL
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)  # stale checkpoints would be resumed
    work.mkdir(parents=True)
    log = Tee(out / "run_log.txt")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    results: dict = {
        "env": {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
        }
    }

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    results["env"]["mixer_path"] = kernel_check(device, log)
    log(json.dumps(results["env"]))

    # 1. Data: split by file name.
    corpus = Path(args.corpus)
    all_files = list_text_files([corpus], exclude_held_out=False)
    train_files = [f for f in all_files if not is_held_out(f)]
    heldout_files = [f for f in all_files if is_held_out(f)]
    if not heldout_files:
        raise FileNotFoundError(f"no held-out works in {corpus}")
    heldout = [f.read_text(encoding="utf-8") for f in heldout_files]
    results["data"] = {
        "train_files": len(train_files),
        "train_bytes": sum(f.stat().st_size for f in train_files),
        "heldout_files": [f.name for f in heldout_files],
        "heldout_bytes": sum(len(t.encode()) for t in heldout),
        "heldout_bytes_scored_per_work": size["eval_bytes"] or "all",
    }
    log(json.dumps(results["data"]))
    tokenizer = load_byte_tokenizer()
    rows = build_packed_dataset(DataSource(tuple(train_files), exclude_held_out=False), tokenizer, size["seq"]).packed

    # 2. Teacher.
    teacher_dir = work / "teacher"
    config = teacher_config(size, tokenizer)
    torch.manual_seed(0)
    teacher = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)
    params = sum(p.numel() for p in teacher.parameters())
    log(f"teacher: {params / 1e6:.1f}M parameters, layer types {config.layer_types}")
    info = train_teacher(teacher, rows, size, args.teacher_seconds, device, log, heldout, tokenizer)
    teacher.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    plot_loss_curve(info.pop("history"), out / "teacher_loss.png", f"teacher training loss: {teacher_dir}",
                    ylabel="nats / byte", log_scale=True)
    results["teacher"] = {**info, "params": params, "layers": size["layers"], "window": size["window"]}
    save()
    log(f"teacher: {info['tokens'] / 1e6:.1f}M tokens in {info['seconds']:.0f}s")
    del teacher
    torch.cuda.empty_cache() if device.type == "cuda" else None

    # 3. Attention mass of the SWA layers.
    mass = analyze_checkpoint(
        teacher_dir, heldout_files, seq_len=min(512, size["seq"] * 4), max_tokens=16384, device=str(device)
    )
    results["attention_mass_table"] = format_table(mass, size["window"])
    results["attention_mass"] = {m.layer: m.beyond for m in mass}
    plot_mass(mass, out / "attention_mass.png", "teacher SWA layers: attention mass beyond distance (held-out)")
    log(results["attention_mass_table"])
    save()

    # 4. Convert with every warm start and distil each within the same token budget; one more run of the
    #    default scheme spends the whole budget on stage 2 (does stage 1 pay for its tokens?).
    budget = args.distill_fraction * results["teacher"]["tokens"]
    per_step = size["distill_batch"] * size["seq"]
    s1 = max(1, int(budget * args.stage1_share / per_step))
    s2 = max(1, int(budget * (1 - args.stage1_share) / per_step))
    stage1 = StageConfig(steps=s1, lr=args.stage1_lr, batch_size=size["distill_batch"], seq_len=size["seq"])
    stage2 = StageConfig(
        steps=s2,
        lr=args.stage2_lr,
        other_lr=args.stage2_other_lr,
        batch_size=size["distill_batch"],
        seq_len=size["seq"],
    )
    stage2_only = StageConfig(
        steps=s1 + s2,
        lr=args.stage2_lr,
        other_lr=args.stage2_other_lr,
        batch_size=size["distill_batch"],
        seq_len=size["seq"],
    )
    log(
        f"distillation budget {budget / 1e6:.2f}M tokens: stage 1 {s1} steps + stage 2 {s2} steps of {per_step} tokens"
    )
    variants = [(scheme, stage1, stage2) for scheme in args.schemes] + [(DEFAULT_INIT, None, stage2_only)]
    results["default_init"] = DEFAULT_INIT
    results["variants"] = {}
    for scheme, first, second in variants:
        name = scheme if first is not None else f"{scheme}, stage 2 only"
        student_dir = work / f"student_{scheme}"
        if not student_dir.exists():
            results["converted_layers"] = convert_checkpoint(teacher_dir, student_dir, init=scheme).converted_layers
        run_dir = work / f"distill_{name.replace(', ', '_').replace(' ', '_')}"
        options = DistillOptions(
            stage1=first,
            stage2=second,
            save_every=10**9,
            eval_seq_len=size["seq"],
            eval_batch_size=32,
            eval_max_bytes=size["eval_bytes"],
            device=str(device),
        )
        t0 = time.time()
        metrics = distill(teacher_dir, student_dir, run_dir, train_files, heldout_files, options)
        results["variants"][name] = {
            **{k: v for k, v in metrics.items() if k != "options"},
            "seconds": time.time() - t0,
            "dir": str(run_dir),
        }
        log(
            f"variant {name}: "
            + json.dumps({k: v for k, v in results["variants"][name].items() if k.startswith(("bpb", "tokens"))})
        )
        save()
    distill_dir = Path(results["variants"][DEFAULT_INIT]["dir"])
    results["distill"] = results["variants"][DEFAULT_INIT]
    for name in ("loss_stage1.png", "loss_stage2.png"):
        (out / name).write_bytes((distill_dir / name).read_bytes())
    log(json.dumps(results["distill"], indent=1))
    save()

    # 6. Layer speed.
    teacher = (
        transformers.AutoModelForCausalLM.from_pretrained(teacher_dir, attn_implementation="sdpa").to(device).eval()
    )
    student = transformers.AutoModelForCausalLM.from_pretrained(distill_dir / "stage2").to(device).eval()
    layer = results["converted_layers"][0]
    results["speed_layer"] = layer
    results["speed"] = layer_speed(
        teacher, student, layer, size["speed_lens"], tokens=8 * 8192 if device.type == "cuda" else 512, device=device
    )
    save()
    table = results_table(results)
    (out / "RESULTS.md").write_text(table)
    log(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
