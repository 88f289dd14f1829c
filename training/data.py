"""Training data: where documents come from, the shipped sample and its held-out split, tokenization and packing.

Documents come from text files and folders (one document per file), table files (``.jsonl``, ``.json``,
``.csv``, ``.parquet``; one document per row of the text column), folders written by
``datasets.save_to_disk``, or dataset names for ``datasets.load_dataset`` (its local cache when offline).
The held-out split is by file name (see ``data/README.md``): the works in :data:`HELD_OUT_WORKS` are for
evaluation only and every training script drops them.

Packing: documents are tokenized, closed with EOS, concatenated and cut into rows of ``seq_len`` tokens.
Within a row, ``position_ids`` restart at 0 wherever a segment begins (a new document, or the start of the
row for a document continued from the previous row). That restart is the packing signal everywhere:
Transformers' mask helpers build a block-diagonal causal mask from it when no ``attention_mask`` is
passed (``masking_utils.find_packed_sequence_indices``), flash/flex attention derive ``cu_seqlens``
from it, and the Phalanx mixer resets its recurrence and re-aligns its blocks on it. The first token of
every segment gets label -100, so no token is trained to predict across a boundary.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedTokenizerBase

if TYPE_CHECKING:
    import datasets

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_SAMPLE_DIR = REPO_ROOT / "data" / "shakespeare"
HELD_OUT_WORKS = ("macbeth", "tempest", "twelfth_night")
TEXT_SUFFIXES = (".txt", ".md", ".text")
TEXT_PATTERNS = " ".join("*" + suffix for suffix in TEXT_SUFFIXES)  # what a text folder contributes
TABLE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}  # suffix -> datasets builder
DATASET_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")  # `name` or `owner/name` on the Hub
IGNORE_INDEX = -100


def is_held_out(path: Path) -> bool:
    """True for a Shakespeare file of a held-out work (``<work>_gut.txt`` or ``<work>.txt``)."""
    stem = path.stem.removesuffix("_gut")
    return stem in HELD_OUT_WORKS


def list_text_files(paths: Iterable[str | Path], exclude_held_out: bool = True) -> list[Path]:
    """Expand files and folders (recursively, sorted) into text files; raise if none exist."""
    files: list[Path] = []
    for entry in paths:
        p = Path(entry)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"data path not found: {p}")
    if exclude_held_out:
        files = [f for f in files if not is_held_out(f)]
    if not files:
        raise FileNotFoundError(f"no text files ({', '.join(TEXT_SUFFIXES)}) found in: {', '.join(map(str, paths))}")
    return files


def read_text(path: Path) -> str:
    """One UTF-8 text file; a file that is not UTF-8 is refused rather than silently altered (U+FFFD)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                         "convert it to UTF-8 or leave it out") from None


def read_texts(paths: Iterable[str | Path], exclude_held_out: bool = True) -> list[str]:
    """Read every text file under ``paths`` as UTF-8 (one document per file, in sorted order)."""
    return [read_text(f) for f in list_text_files(paths, exclude_held_out)]


def shipped_sample_dir() -> Path:
    """The sample shipped in the repository (``data/shakespeare``)."""
    if not SHIPPED_SAMPLE_DIR.is_dir():
        raise FileNotFoundError(
            f"shipped sample not found at {SHIPPED_SAMPLE_DIR}; pass --data with your own text files"
        )
    return SHIPPED_SAMPLE_DIR


@dataclass(frozen=True)
class DataSource:
    """Where documents come from (``--data`` or ``--eval-data`` and the options that say how to read them).

    ``text_column`` names the text of table files, saved datasets and Hub datasets; ``split`` and
    ``config`` select a split of a saved ``DatasetDict`` or a ``load_dataset`` name; held-out works are
    dropped from text folders when ``exclude_held_out``.
    """

    paths: tuple[str | Path, ...]
    text_column: str = "text"
    split: str = "train"
    config: str | None = None
    exclude_held_out: bool = True


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _load_saved(folder: Path, split: str) -> datasets.Dataset:
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"--data-split {split}: {folder} has splits {', '.join(loaded)}")
        return loaded[split]
    return loaded


def _load_named(name: str, source: DataSource, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    """``datasets.load_dataset(name)``; offline, only from the local cache, and a clear error when it is not there."""
    import datasets

    try:
        return datasets.load_dataset(name, source.config, split=source.split, streaming=streaming)
    except ConnectionError:
        if datasets.config.HF_HUB_OFFLINE:
            raise FileNotFoundError(f"dataset {name!r} is not in the local cache and the machine is offline "
                                    "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); load it once online, or pass a local file") from None
        raise


def _read_files(files: list[Path]) -> Iterator[dict[str, str]]:
    """One ``text`` row per file (the generator of a streamed text folder)."""
    for file in files:
        yield {"text": read_text(file)}


def _text_column(table: datasets.Dataset | datasets.IterableDataset, column: str, label: str) -> datasets.Dataset | datasets.IterableDataset:
    """The one string column ``column`` of ``table``, renamed ``text``."""
    columns = table.column_names
    if columns is None:  # a stream whose columns are known only from its rows
        columns = list(next(iter(table), {}))
    if column not in columns:
        raise ValueError(f"--text-column {column}: {label} has no column {column!r} (columns: {', '.join(columns)})")
    feature = (table.features or {}).get(column)
    if feature is not None and getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise ValueError(f"--text-column {column}: column {column!r} of {label} holds {feature}, not text")
    table = table.select_columns([column])
    return table if column == "text" else table.rename_column(column, "text")


def document_parts(source: DataSource, streaming: bool = False) -> tuple[list[datasets.Dataset | datasets.IterableDataset], str]:
    """The documents of each entry of ``source`` (a ``text`` column; read lazily when ``streaming``) and a
    description such as ``3 text files (*.txt *.md *.text) from my_texts; 120 documents from corpus.jsonl (column 'text')``."""
    import datasets

    parts, described = [], []
    for spec in source.paths:
        path = Path(spec)
        if path.is_dir() and is_saved_dataset(path):
            table, label = _load_saved(path, source.split), f"saved dataset {path} (split {source.split})"
            table = table.to_iterable_dataset() if streaming else table
        elif path.is_file() and path.suffix in TABLE_BUILDERS:
            table = datasets.load_dataset(TABLE_BUILDERS[path.suffix], data_files=str(path), split="train", streaming=streaming)
            label = str(path)
        elif path.exists() or not DATASET_NAME.fullmatch(str(spec)) or path.suffix in (*TEXT_SUFFIXES, *TABLE_BUILDERS):
            files = list_text_files([path], source.exclude_held_out)
            text = datasets.Features({"text": datasets.Value("string")})
            parts.append(datasets.IterableDataset.from_generator(_read_files, features=text, gen_kwargs={"files": files})
                         if streaming else datasets.Dataset.from_dict({"text": [read_text(f) for f in files]}, features=text))
            described.append(f"{len(files)} text file{'s' * (len(files) != 1)} ({TEXT_PATTERNS}) from {path}")
            continue
        else:
            table = _load_named(str(spec), source, streaming)
            label = f"dataset {spec} ({', '.join(filter(None, (source.config, 'split ' + source.split)))})"
        parts.append(_text_column(table, source.text_column, label))
        documents = "documents streamed" if streaming else f"{len(table)} documents"
        described.append(f"{documents} from {label} (column {source.text_column!r})")
    return parts, "; ".join(described)


def load_documents(source: DataSource) -> tuple[datasets.Dataset, str]:
    """All documents of ``source`` in memory as one dataset with a ``text`` column, in the order given, and
    their description (:func:`document_parts`)."""
    import datasets

    parts, description = document_parts(source)
    if len({part.features["text"].dtype for part in parts}) > 1:  # e.g. parquet's large_string beside string
        parts = [part.cast_column("text", datasets.Value("large_string")) for part in parts]
    return datasets.concatenate_datasets(parts), description


def tokenize_documents(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Token ids of each text with the tokenizer's own special tokens, closed by EOS when it has one."""
    eos = tokenizer.eos_token_id
    docs = []
    for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        if ids:
            docs.append(ids)
    return docs


def tokenize_corpus(documents: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, num_proc: int | None = None) -> list[list[int]]:
    """:func:`tokenize_documents` over a ``text`` dataset with a progress bar, in ``num_proc`` processes; a missing
    text (an empty CSV cell, a JSON null) is an empty document."""
    tokenized = documents.map(
        lambda batch: {"input_ids": tokenize_documents([text or "" for text in batch["text"]], tokenizer)},
        batched=True, remove_columns=documents.column_names, num_proc=num_proc, desc="tokenizing",
    )
    return list(tokenized["input_ids"])


def pack_documents(documents: Sequence[Sequence[int]], seq_len: int) -> dict[str, torch.Tensor]:
    """Concatenate ``documents`` and cut them into rows of ``seq_len`` tokens (the tail is dropped).

    Returns ``input_ids``, ``position_ids`` and ``labels``, each (rows, seq_len) int64.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    lengths = torch.tensor([len(d) for d in documents], dtype=torch.long)
    total = int(lengths.sum())
    rows = total // seq_len
    if rows == 0:
        raise ValueError(f"the data holds {total} tokens, fewer than one row of seq_len={seq_len}")
    stream = torch.cat([torch.as_tensor(d, dtype=torch.long) for d in documents])[: rows * seq_len]
    index = torch.arange(rows * seq_len)
    starts = torch.zeros(total, dtype=torch.bool)
    starts[torch.cumsum(lengths, 0)[:-1]] = True
    starts[0] = True
    starts = starts[: rows * seq_len]
    starts[::seq_len] = True
    # Position = distance to the latest segment start at or before each token.
    segment_start = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), 0).values
    position_ids = index - segment_start
    labels = stream.masked_fill(starts, IGNORE_INDEX)
    return {
        "input_ids": stream.view(rows, seq_len),
        "position_ids": position_ids.view(rows, seq_len),
        "labels": labels.view(rows, seq_len),
    }


class PackedDataset(torch.utils.data.Dataset):
    """Rows of a packed corpus; item ``i`` is a dict of (seq_len,) tensors; ``description`` says what it holds."""

    def __init__(self, packed: dict[str, torch.Tensor], description: str = "") -> None:
        self.packed = packed
        self.description = description

    def __len__(self) -> int:
        return self.packed["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[i] for key, value in self.packed.items()}

    def split(self, eval_fraction: float) -> tuple[PackedDataset, PackedDataset]:
        """(training rows, evaluation rows): the last ``eval_fraction`` of the rows (at least one) are held out."""
        if not 0 < eval_fraction < 1:
            raise ValueError(f"--eval-fraction must be between 0 and 1, got {eval_fraction}")
        n_eval = math.ceil(len(self) * eval_fraction)
        if n_eval >= len(self):
            raise ValueError(f"--eval-fraction {eval_fraction} of {len(self)} rows leaves no training row; "
                             "lower it or pass more data")
        cut = len(self) - n_eval
        train = {key: value[:cut] for key, value in self.packed.items()}
        held = {key: value[cut:] for key, value in self.packed.items()}
        return (PackedDataset(train, f"{self.description}; last {n_eval} rows held out for evaluation"),
                PackedDataset(held, f"the last {n_eval} of {len(self)} rows"))


def build_packed_dataset(
    source: DataSource, tokenizer: PreTrainedTokenizerBase, seq_len: int, num_proc: int | None = None,
) -> PackedDataset:
    """Read, tokenize (``num_proc`` processes) and pack the documents of ``source``."""
    documents, description = load_documents(source)
    return PackedDataset(pack_documents(tokenize_corpus(documents, tokenizer, num_proc), seq_len), description)


class PackedStream(torch.utils.data.IterableDataset):
    """Packed rows made on the fly from documents read lazily (``--streaming``), for corpora larger than memory.

    The rows, in order, are those of :func:`pack_documents` over all documents (a document cut at a row end
    continues as a new segment, as there), so a resumed run that skips the rows already trained on sees
    exactly the rows the uninterrupted run saw. One process packs (the main one, or one ``DataLoader`` worker).
    """

    def __init__(self, source: DataSource, tokenizer: PreTrainedTokenizerBase, seq_len: int, batch_docs: int = 256) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {seq_len}")
        self.parts, self.description = document_parts(source, streaming=True)
        self.tokenizer, self.seq_len, self.batch_docs = tokenizer, seq_len, batch_docs

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        buffer: list[list[int]] = []
        for part in self.parts:
            for batch in part.iter(batch_size=self.batch_docs):
                buffer += tokenize_documents([text or "" for text in batch["text"]], self.tokenizer)
                total = sum(len(doc) for doc in buffer)
                if total < self.seq_len:
                    continue
                packed = pack_documents(buffer, self.seq_len)
                for i in range(packed["input_ids"].shape[0]):
                    yield {key: value[i] for key, value in packed.items()}
                buffer = _drop_tokens(buffer, total - total % self.seq_len)


def _drop_tokens(documents: list[list[int]], n: int) -> list[list[int]]:
    """``documents`` without their first ``n`` tokens (a document cut short keeps its remaining tokens)."""
    rest = []
    for doc in documents:
        if n >= len(doc):
            n -= len(doc)
        else:
            rest.append(doc[n:])
            n = 0
    return rest


class PackedCollator:
    """Stack packed rows; no ``attention_mask``, so the position-id restarts define the sequences.

    ``use_cache=False`` is passed too: with a cache, Transformers' mask helpers skip packed-sequence
    detection (they only look at ``position_ids`` when ``past_key_values`` is None).
    """

    def __call__(self, features: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        batch: dict[str, Any] = {key: torch.stack([f[key] for f in features]) for key in features[0]}
        batch["use_cache"] = False
        return batch
