"""`phalanx tokenizer --data ... --output DIR`: learn a byte-level BPE tokenizer from local text.

The quality bench found the byte tokenizer the worst case for Phalanx layers (a 32-token window is 32 bytes
of code); with a BPE tokenizer learned on the training text the Phalanx hybrid overtakes the Transformer
(README, "Quality on real code"). This command is that recipe's first step: the folder it writes is what
``phalanx train --tokenizer DIR`` takes. Data is read as ``phalanx train`` reads it, streamed, so a corpus
larger than memory works.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from phalanx_training.data import DataSource, document_parts, shipped_sample_dir
from phalanx_training.folders import output_folder
from phalanx_training.tokenizer import BYTE_VOCAB_SIZE, train_bpe_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", metavar="PATH",
                        help="text to learn from, read like `phalanx train --data` (default: the shipped Shakespeare sample)")
    parser.add_argument("--output", type=Path, required=True, help="tokenizer folder to write (for `phalanx train --tokenizer`)")
    parser.add_argument("--vocab-size", type=int, default=8192,
                        help=f"tokens, the {BYTE_VOCAB_SIZE} special and byte tokens included (default: %(default)s)")
    parser.add_argument("--text-column", default="text", help="text column of tables and datasets (default: %(default)s)")
    parser.add_argument("--data-split", default="train", help="split of a dataset name or saved DatasetDict (default: %(default)s)")
    parser.add_argument("--data-config", help="configuration of a dataset name (load_dataset's second argument)")
    parser.add_argument("--include-held-out", action="store_true",
                        help="do not drop the shipped sample's held-out works (macbeth, tempest, twelfth_night)")
    parser.add_argument("--force", action="store_true", help="replace an existing --output folder")


def texts(parts: list, seen: list[int]) -> Iterator[str]:
    """Every document of the streamed ``parts`` (:func:`document_parts`), in order; ``seen[0]`` counts them."""
    for part in parts:
        for row in part:
            seen[0] += 1
            yield row["text"]


def run(args: argparse.Namespace) -> int:
    if args.vocab_size <= BYTE_VOCAB_SIZE:
        raise ValueError(f"--vocab-size must exceed the {BYTE_VOCAB_SIZE} special and byte tokens, got {args.vocab_size}")
    paths = list(args.data) if args.data else [shipped_sample_dir()]
    source = DataSource(tuple(paths), args.text_column, args.data_split, args.data_config, not args.include_held_out)
    local = [Path(p) for p in paths if Path(p).exists()]
    with output_folder(args.output, inputs=local, force=args.force, create_parents=True) as staging:
        parts, description = document_parts(source, streaming=True)
        seen = [0]
        tokenizer = train_bpe_tokenizer(texts(parts, seen), args.vocab_size)
        tokenizer.save_pretrained(str(staging))
    print(f"phalanx tokenizer: {len(tokenizer)} tokens learned from {seen[0]} documents ({description}) -> {args.output}")
    return 0
