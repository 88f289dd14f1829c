"""The project's byte-level tokenizer (3 special tokens, then one token per byte) and byte-level BPE ones.

Models trained here use the byte tokenizer by default, so one token is one byte and bits-per-byte equals
bits-per-token / 1. The shipped files in ``byte_tokenizer/`` are what :func:`build_byte_tokenizer` produces;
a test keeps them in sync. :func:`train_bpe_tokenizer` learns merges on top of the same bytes and special
tokens, for runs where a token should cover several bytes (as the source papers' tokens do).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

BYTE_TOKENIZER_DIR = Path(__file__).resolve().parent / "byte_tokenizer"
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>"}
BYTE_OFFSET = len(SPECIAL_TOKENS)
BYTE_VOCAB_SIZE = BYTE_OFFSET + 256


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """Build the byte tokenizer: ids 0-2 are <pad>, <bos>, <eos>; byte b is id b + 3; pads on the left."""
    byte_chars = bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    vocab.update({byte_chars[b]: BYTE_OFFSET + b for b in range(256)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS.values()))
    # Left padding: a decoder-only model generating for a padded batch continues every row from its last token.
    return PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=1_000_000, padding_side="left", **SPECIAL_TOKENS)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer learned from ``texts``: the byte tokenizer's special tokens at ids 0-2 and its
    256 byte symbols, then merges up to ``vocab_size`` tokens (GPT-2's pre-split, so a merge stays inside a word,
    a number or a run of spaces or punctuation; pairs seen once are not merged). The same texts in the same order
    give the same tokenizer."""
    if vocab_size <= BYTE_VOCAB_SIZE:
        raise ValueError(f"vocab_size must exceed the {BYTE_VOCAB_SIZE} special and byte tokens, got {vocab_size}")
    core = Tokenizer(models.BPE(fuse_unk=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=1_000_000, padding_side="left", **SPECIAL_TOKENS)


def load_byte_tokenizer() -> PreTrainedTokenizerBase:
    """Load the shipped byte tokenizer with AutoTokenizer (offline)."""
    if not (BYTE_TOKENIZER_DIR / "tokenizer.json").is_file():
        raise FileNotFoundError(f"shipped byte tokenizer missing: {BYTE_TOKENIZER_DIR / 'tokenizer.json'}")
    return AutoTokenizer.from_pretrained(str(BYTE_TOKENIZER_DIR))


def load_tokenizer(path: str | Path | None) -> PreTrainedTokenizerBase:
    """The tokenizer in folder ``path``, or the byte tokenizer when ``path`` is None."""
    if path is None:
        return load_byte_tokenizer()
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    return AutoTokenizer.from_pretrained(str(folder))
