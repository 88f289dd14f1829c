"""Render the end-to-end and inference tables of BENCHMARKS.md from the committed raw results.

    python benchmarks/render_tables.py benchmarks/results/e2e_h100.json benchmarks/results/inference_h100.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOALS = {4096: 1.15, 8192: 1.25, 16384: 1.45, 32768: 1.6}  # issue 7: Phalanx hybrid vs Transformer


def e2e_table(report: dict) -> str:
    """Training tokens/s per model and length, the Phalanx/Transformer ratio against its goal, and the bound."""
    rows = {}
    for r in report["results"]:
        rows.setdefault(r["length"], {})[r["model"]] = r
    lines = [
        "| context (batch) | Transformer (SDPA) | SWA-512 hybrid (flex) | Phalanx hybrid | free-mixer bound | Phalanx / Transformer (goal) | Phalanx / SWA | Transformer / bound | Phalanx / bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for length in sorted(rows):
        row = rows[length]
        tps = {m: row[m].get("tokens_per_s") for m in row}
        cells = [f"{tps[m]:,.0f}" if tps.get(m) else "error" for m in ("transformer", "swa_hybrid", "phalanx_hybrid", "bound")]
        ph, tr, sw, bd = (tps.get(m) for m in ("phalanx_hybrid", "transformer", "swa_hybrid", "bound"))
        goal = GOALS.get(length)
        ratio = f"{ph / tr:.2f}x ({goal:.2f}x)" if ph and tr and goal else (f"{ph / tr:.2f}x" if ph and tr else "-")
        lines.append(
            f"| {length} ({row['phalanx_hybrid']['batch']}) | " + " | ".join(cells)
            + f" | {ratio} | {ph / sw:.2f}x | {tr / bd:.0%} | {ph / bd:.0%} |"
        )
    return "\n".join(lines)


def inference_table(report: dict) -> str:
    """Prefill tokens/s (batch 1), decode tokens/s, and cache MiB per sequence."""
    ok = [r for r in report["results"] if r["prefill"]]
    contexts = [p["context"] for p in ok[0]["prefill"]]
    batches = [d["batch"] for d in ok[0]["decode"]]
    ctx = ok[0]["decode"][0]["context"]
    head = (["model"] + [f"prefill tok/s @{c}" for c in contexts] + [f"decode tok/s b{b} @{ctx}" for b in batches]
            + [f"cache MiB/seq @{c}" for c in contexts])
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for r in ok:
        cells = ([f"{p['tokens_per_s']:,.0f}" for p in r["prefill"]] + [f"{d['tokens_per_s']:,.1f}" for d in r["decode"]]
                 + [f"{p['cache_bytes_per_seq'] / 2**20:,.0f}" for p in r["prefill"]])
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    for path in map(Path, sys.argv[1:]):
        report = json.loads(path.read_text())
        env = report["env"]
        print(f"\n`{path}` ({env.get('gpu', 'cpu')}, torch {env['torch']}, transformers {env['transformers']}, "
              f"triton {env.get('triton', '-')})\n")
        print(e2e_table(report) if report["benchmark"] == "e2e_training" else inference_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
