"""Offline, deterministic datasets for the Phalanx lm-eval tasks.

lm-eval calls these through ``custom_dataset: !function loader.<name>`` with the task's ``metadata``
(and, from ``simple_evaluate``, the model arguments) as keyword arguments, so every function accepts
and ignores unknown keywords. The module needs only the standard library and ``datasets``: the task
folder also works with the plain ``lm_eval --include_path`` CLI when the project is not installed.

Text comes from the held-out works in ``data/`` (never used for training, see ``data/README.md`` of
the repository). Distances are counted in bytes, which equal tokens for the byte-level tokenizer; a
subword tokenizer sees roughly a quarter as many tokens at the same distance.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path

import datasets

DATA_DIR = Path(__file__).resolve().parent / "data"

PASSKEY_TAIL = ".\n"
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"
MQAR_KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def held_out_works() -> dict[str, str]:
    """Held-out texts by work name (file ``<work>_gut.txt``), in name order; ASCII, so characters are bytes."""
    paths = sorted(DATA_DIR.glob("*_gut.txt"))
    if not paths:
        raise FileNotFoundError(f"no held-out texts (*_gut.txt) in {DATA_DIR}")
    return {p.name.removesuffix("_gut.txt"): p.read_text(encoding="ascii") for p in paths}


@lru_cache(maxsize=1)
def filler_corpus() -> str:
    """All held-out text with digits removed, so filler never looks like a key or a value."""
    return re.sub(r"[0-9]", "", "\n".join(held_out_works().values()))


def _filler(rng: random.Random, length: int) -> str:
    """``length`` bytes of held-out text from a random offset."""
    corpus = filler_corpus()
    if length > len(corpus):
        raise ValueError(f"filler of {length} bytes is longer than the held-out corpus ({len(corpus)} bytes)")
    start = rng.randrange(len(corpus) - length + 1)
    return corpus[start : start + length]


def _as_dataset(rows: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def chunk_text(text: str, chunk_bytes: int) -> list[str]:
    """Split ``text`` at line ends into chunks of at most ``chunk_bytes`` (a longer line is its own chunk)."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    chunks: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        if current and len(current) + len(line) > chunk_bytes:
            chunks.append(current)
            current = ""
        current += line
    if current.strip():
        chunks.append(current)
    return chunks


def heldout_text(chunk_bytes: int = 4096, **_: object) -> datasets.DatasetDict:
    """Held-out works cut at line ends into documents of at most ``chunk_bytes`` bytes (work name order)."""
    rows = [
        {"work": work, "chunk": i, "text": chunk}
        for work, text in held_out_works().items()
        for i, chunk in enumerate(chunk_text(text, int(chunk_bytes)))
    ]
    return _as_dataset(rows)


def passkey_docs(distance: int, num_docs: int = 50, seed: int = 0) -> list[dict]:
    """Passkey documents: a 5-digit key, filler, then the question; the target is ``" <key>"``.

    Exactly ``distance`` bytes (tokens, for the byte-level tokenizer) lie between the key's last digit
    and the answer's first byte.
    """
    distance = int(distance)
    fixed = len(PASSKEY_TAIL) + len(PASSKEY_QUESTION)
    if distance < fixed:
        raise ValueError(f"passkey distance must be at least {fixed} bytes, got {distance}")
    rng = random.Random(f"phalanx-passkey-{distance}-{seed}")
    docs = []
    for i in range(int(num_docs)):
        key = f"{rng.randrange(10000, 100000)}"
        context = (
            "A pass key is hidden in the text below. Find it and remember it.\n"
            f"The pass key is {key}{PASSKEY_TAIL}{_filler(rng, distance - fixed)}{PASSKEY_QUESTION}"
        )
        docs.append({"context": context, "target": f" {key}", "key": key, "distance": distance, "index": i})
    return docs


def passkey(distance: int, num_docs: int = 50, seed: int = 0, **_: object) -> datasets.DatasetDict:
    """lm-eval dataset of :func:`passkey_docs`."""
    return _as_dataset(passkey_docs(distance, num_docs, seed))


def mqar_docs(
    distance: int, num_samples: int = 20, num_pairs: int = 6, num_queries: int = 3, seed: int = 0
) -> list[dict]:
    """Multi-query associative recall documents.

    A sample lists ``num_pairs`` lines ``kk:vv`` (two-letter keys, two-digit values), then filler, then
    ``num_queries`` queries ``\\nkk:`` of distinct keys. Query ``j`` of a sample is its own document: its
    context holds the earlier queries already answered, its target is the value. The filler length is
    chosen per document so that exactly ``distance`` bytes (tokens, for the byte-level tokenizer) lie
    between the last digit of the queried pair's value and the answer's first byte.
    """
    distance, num_pairs, num_queries = int(distance), int(num_pairs), int(num_queries)
    if not 1 <= num_queries <= num_pairs:
        raise ValueError(f"need 1 <= num_queries <= num_pairs, got {num_queries} queries and {num_pairs} pairs")
    if num_pairs > len(MQAR_KEY_ALPHABET) ** 2:
        raise ValueError(f"num_pairs must be at most {len(MQAR_KEY_ALPHABET) ** 2}, got {num_pairs}")
    pair_len = len("kk:vv\n")
    query_len = len("\nkk:")
    # Worst case: the first pair queried last, after all other queries were answered.
    longest = (num_pairs - 1) * pair_len + 1 + (num_queries - 1) * (query_len + 2) + query_len
    if distance < longest:
        raise ValueError(
            f"mqar distance must be at least {longest} bytes for {num_pairs} pairs and {num_queries} queries, "
            f"got {distance}"
        )
    rng = random.Random(f"phalanx-mqar-{distance}-{seed}")
    all_keys = [a + b for a in MQAR_KEY_ALPHABET for b in MQAR_KEY_ALPHABET]
    docs = []
    for sample in range(int(num_samples)):
        keys = rng.sample(all_keys, num_pairs)
        values = [f"{rng.randrange(100):02d}" for _ in keys]
        pairs = "".join(f"{k}:{v}\n" for k, v in zip(keys, values))
        queried = rng.sample(range(num_pairs), num_queries)
        answered = ""
        for j, p in enumerate(queried):
            after_pair = (num_pairs - 1 - p) * pair_len + 1  # the rest of the pair block, from the newline on
            filler = _filler(rng, distance - after_pair - len(answered) - query_len)
            context = f"Remember the value of each key.\n{pairs}{filler}{answered}\n{keys[p]}:"
            docs.append(
                {"context": context, "target": values[p], "distance": distance, "sample": sample, "query": j}
            )
            answered += f"\n{keys[p]}:{values[p]}"
    return docs


def mqar(
    distance: int, num_samples: int = 20, num_pairs: int = 6, num_queries: int = 3, seed: int = 0, **_: object
) -> datasets.DatasetDict:
    """lm-eval dataset of :func:`mqar_docs`."""
    return _as_dataset(mqar_docs(distance, num_samples, num_pairs, num_queries, seed))
