"""`phalanx convert`: swap the SWA layers of a checkpoint for Phalanx mixers, or analyze them first.

phalanx convert SRC OUT [--layers sliding|none|3,5,7|lowest-mass:K] [--block-len 16] [--window-blocks 2]
                        [--init vo|qkvo|random] [--dtype auto|float32|bfloat16|float16] [--force]
phalanx convert --analyze SRC --data TEXT [--plot FILE.png]

SRC is a checkpoint folder or a Hub id (``org/name``) already in the local Hugging Face cache.
"""

from __future__ import annotations

import argparse

from .families import supported_families
from .init import DEFAULT_INIT, INIT_SCHEMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", help="source checkpoint: a folder (Transformers, safetensors) or a Hub id in the local Hugging Face cache"
    )
    parser.add_argument("out", nargs="?", help="output folder for the converted checkpoint")
    parser.add_argument(
        "--layers",
        default="sliding",
        help="layers to convert: 'sliding' (every SWA layer, default), 'none', comma-separated indices, or "
        "'lowest-mass:K': the K SWA layers with the least attention mass beyond the Phalanx window "
        "(block-len x window-blocks tokens), measured on --data as --analyze measures it",
    )
    parser.add_argument("--block-len", type=int, default=16, help="SWR block length (16, 32 or 64)")
    parser.add_argument("--window-blocks", type=int, default=2, help="SWR blocks each token sees")
    parser.add_argument("--phalanx-head-dim", type=int, default=16, help="Phalanx head size (multiple of 16)")
    parser.add_argument(
        "--init",
        choices=INIT_SCHEMES,
        default=DEFAULT_INIT,
        help=f"warm start of the mixers from the attention weights (default {DEFAULT_INIT}; see README)",
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard written")
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="measure attention mass beyond 16/32/128 tokens per SWA layer instead of converting",
    )
    parser.add_argument("--data", nargs="+", help="text files or folders for --analyze and --layers lowest-mass:K")
    parser.add_argument("--plot", metavar="PNG", help="with --analyze: also draw the table as a bar chart into PNG")
    parser.add_argument("--seq-len", type=int, default=512, help="sequence length for --analyze and lowest-mass:K")
    parser.add_argument(
        "--max-tokens", type=int, default=16384, help="tokens of --data used by --analyze and lowest-mass:K"
    )
    parser.epilog = f"Supported source families: {', '.join(supported_families())}."


def run(args: argparse.Namespace) -> int:
    from .analyze import DISTANCES, analyze_checkpoint, lowest_mass_count, lowest_mass_layers
    from phalanx_training.folders import check_output

    from .checkpoint import resolve_checkpoint

    src = resolve_checkpoint(args.src)
    if args.analyze:
        from transformers import AutoConfig

        from .analyze import format_table, plot_mass

        if not args.data:
            raise ValueError("--analyze needs --data TEXT (files or folders)")
        results = analyze_checkpoint(src, args.data, seq_len=args.seq_len, max_tokens=args.max_tokens)
        window = getattr(AutoConfig.from_pretrained(src), "sliding_window", None)
        print(format_table(results, window))
        if args.plot is not None:
            title = f"{args.src}: attention mass per SWA layer ({args.seq_len}-token sequences of {', '.join(args.data)})"
            print(f"plot: {plot_mass(results, args.plot, title)}")
        return 0
    if args.out is None:
        raise ValueError("missing OUT folder (or pass --analyze)")
    from .convert import convert_checkpoint

    layers = args.layers
    count = lowest_mass_count(layers)
    if count is not None:
        if not args.data:
            raise ValueError(f"--layers {layers} ranks the SWA layers by their attention on text: pass --data TEXT")
        check_output(args.out, inputs=[src], force=args.force)  # before the analysis, which takes a while
        reach = args.block_len * args.window_blocks
        distances = tuple(sorted({*DISTANCES, reach}))
        results = analyze_checkpoint(src, args.data, seq_len=args.seq_len, max_tokens=args.max_tokens, distances=distances)
        layers = lowest_mass_layers(results, count, reach)
        ranking = ", ".join(f"{r.layer}: {r.beyond[reach]:.3f}" for r in results)
        print(f"--layers {args.layers}: layers {layers} (attention mass beyond {reach} tokens per SWA layer: {ranking})")
    result = convert_checkpoint(
        src,
        args.out,
        layers=layers,
        block_len=args.block_len,
        window_blocks=args.window_blocks,
        phalanx_head_dim=args.phalanx_head_dim,
        init=args.init,
        dtype=args.dtype,
        force=args.force,
        max_shard_size=args.max_shard_size,
    )
    print(
        f"converted {result.model_type} layers {result.converted_layers or 'none'} -> {result.out} "
        f"(init {result.init}, SWR {result.block_len} x {result.window_blocks}, {result.dtype})"
    )
    return 0
