"""Render the operator table (README, BENCHMARKS.md) and its plot from the raw JSON of `bench_hyena.py` runs.

Each operator's kernel time, forward / forward+backward, at every (width, batch x tokens) point the runs measured; the
Hyena cores' forward also as a multiple of their memory floor. The plot puts each point's forward times on a log
scale, with the floor as a line. Only the raw results are read, so the table and plot can be checked here.

    python benchmarks/plot_hyena.py RUN.json [RUN.json ...] --png operators.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# (label, row kind, key prefix): row kind "se" / "mr" are the Hyena rows by filter taps, "any" one of them, "peer"
# the peers' rows; the prefix names the ``*_fwd_kernel_ms`` / ``*_fwd_bwd_kernel_ms`` fields.
OPERATORS = (
    ("Phalanx core (SWR)", "any", "phalanx_core"),
    ("Hyena-SE core (7 taps)", "se", "mixer"),
    ("Hyena-MR core (128 taps, bf16 filter)", "mr", "mixer"),
    ("SWA-512, compiled FlexAttention", "peer", "swa512_flex"),
    ("FLA chunked GLA", "peer", "gla"),
    ("FLA gated DeltaNet", "peer", "gated_deltanet"),
    ("Hyena-LI core (FFT, fp32)", "peer", "hyena_li"),
)


def load(paths: list[Path]) -> tuple[list[dict], dict]:
    """Each measured point's rows by kind, keyed (width, batch, seqlen), and the runs' device facts."""
    points: dict[tuple[int, int, int], dict] = {}
    devices = {}
    for path in paths:
        report = json.loads(path.read_text())
        devices[str(path)] = (report["device"], report["torch"], report["copy_bandwidth"])
        for row in report["rows"]:
            kind = "se" if row["mixer"] == "hyena_se" else "mr"
            points.setdefault((row["width"], row["batch"], row["seqlen"]), {})[kind] = row
        for row in report["peers"]:
            points.setdefault((row["width"], row["batch"], row["seqlen"]), {})["peer"] = row
    order = sorted(points, key=lambda k: (k[0], k[2]))  # by width, then tokens a row
    return [dict(points[k], key=k) for k in order], devices


def cell(point: dict, kind: str, prefix: str) -> tuple[str, float | None]:
    """The table cell ``fwd / fwd+bwd`` (with x floor for the Hyena cores) and the forward ms for the plot."""
    rows = [point[k] for k in (("se", "mr") if kind == "any" else (kind,)) if k in point]
    if not rows:
        return "not run", None
    row = rows[0]
    fwd, both = row.get(f"{prefix}_fwd_kernel_ms"), row.get(f"{prefix}_fwd_bwd_kernel_ms")
    if fwd is None:
        reason = str(row.get(prefix, "not run"))  # an exception's text or "off: why"; the JSON keeps it whole
        return ("not run" if reason == "not run" else f"did not run ({reason.split(':')[0]})"), None
    text = f"{fwd:.3f} / {both:.3f}"
    if kind in ("se", "mr"):
        text += f" ({row['mixer_fwd_kernel_x_floor']:.2f}x)"
    return text, fwd


def table(points: list[dict]) -> str:
    """Operators as rows, measured points as columns."""
    heads = [f"W {w}, {b} x {t // 1024}K" for w, b, t in (p["key"] for p in points)]
    lines = ["| kernel ms, fwd / fwd+bwd (x floor fwd) | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for label, kind, prefix in OPERATORS:
        cells = [cell(p, kind, prefix)[0] for p in points]
        if any(c != "not run" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    floors = [f"{p['mr' if 'mr' in p else 'se']['mixer_floor_fwd_ms']:.3f}" if {"se", "mr"} & set(p) else "-"
              for p in points]
    lines.append("| Hyena memory floor, fwd | " + " | ".join(floors) + " |")
    return "\n".join(lines)


def plot(points: list[dict], png: Path, title: str) -> None:
    """Forward kernel ms per operator at each point (log scale), the Hyena floor as a black tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(points)) + 3.0, 4.2))
    shown = [(label, kind, prefix) for label, kind, prefix in OPERATORS
             if any(cell(p, kind, prefix)[1] is not None for p in points)]
    width = 0.8 / len(shown)
    for i, (label, kind, prefix) in enumerate(shown):
        xs = [j + (i - (len(shown) - 1) / 2) * width for j in range(len(points))]
        ys = [cell(p, kind, prefix)[1] for p in points]
        ax.bar([x for x, y in zip(xs, ys) if y is not None], [y for y in ys if y is not None], width, label=label)
    for j, p in enumerate(points):
        row = p.get("mr") or p.get("se")
        if row:
            ax.hlines(row["mixer_floor_fwd_ms"], j - 0.45, j + 0.45, colors="black", linewidth=1.5,
                      label="Hyena memory floor" if j == 0 else None)
    ax.set_xticks(range(len(points)), [f"W {w}\n{b} x {t // 1024}K" for w, b, t in (p["key"] for p in points)])
    ax.set_yscale("log")
    ax.set_ylabel("forward kernel ms (log)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench_hyena.py --json files")
    parser.add_argument("--png", type=Path, help="write the forward-time plot here")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.runs if not p.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    points, devices = load(args.runs)
    for path, (device, torch_version, bandwidth) in devices.items():
        print(f"`{path}`: {device}, torch {torch_version}, copy {bandwidth / 1e12:.2f} TB/s")
    print("\n" + table(points))
    if args.png:
        names = sorted({d[0] for d in devices.values()})
        plot(points, args.png, f"sequence mixers, bf16, forward kernel ms ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
