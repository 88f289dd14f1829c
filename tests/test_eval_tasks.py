"""The shipped lm-eval task folder: deterministic offline data with exact distances (no model needed)."""

from __future__ import annotations

import re

import pytest
from lm_eval import utils as lm_eval_utils
from by_path import import_file

from phalanx_eval.harness import TASK_DIR, resolve_task_manager, shipped_task_manager
from phalanx_training.data import HELD_OUT_WORKS
from phalanx_training.tokenizer import load_byte_tokenizer

DISTANCES = [64, 128, 256, 512, 1024, 2048, 4096, 8192]


def _load_loader():
    """The task folder's loader module, imported by path as lm-eval does."""
    return import_file(TASK_DIR / "loader.py", "phalanx_task_loader")


loader = _load_loader()


def test_index_lists_every_task_group_and_distance():
    manager = shipped_task_manager()
    expected = {"phalanx", "phalanx_bpb", "phalanx_passkey", "phalanx_mqar"}
    expected |= {f"phalanx_{family}_{d}" for family in ("passkey", "mqar") for d in DISTANCES}
    assert set(manager.all_tasks) == expected
    assert set(manager.all_groups) == {"phalanx_passkey", "phalanx_mqar"}
    for family in ("passkey", "mqar"):
        for d in DISTANCES:
            entry = manager.task_index[f"phalanx_{family}_{d}"]
            # lm-eval 0.4.12+ indexes parsed configs; earlier releases index the YAML file.
            config = entry.cfg if hasattr(entry, "cfg") else lm_eval_utils.load_yaml_config(entry["yaml_path"], mode="full")
            assert config["metadata"]["distance"] == d


def test_unknown_task_names_list_the_shipped_ones():
    with pytest.raises(ValueError, match=r"unknown task\(s\): phalanx_nope\. Shipped tasks: .*phalanx_passkey_64"):
        resolve_task_manager(["phalanx_bpb", "phalanx_nope"])
    with pytest.raises(ValueError, match="no tasks"):
        resolve_task_manager([])


def test_held_out_works_match_the_training_split_and_chunks_round_trip():
    works = loader.held_out_works()
    assert tuple(works) == tuple(sorted(HELD_OUT_WORKS))
    docs = loader.heldout_text(chunk_bytes=777)["test"]
    for work, text in works.items():
        chunks = [d["text"] for d in docs if d["work"] == work]
        assert "".join(chunks).rstrip() == text.rstrip()
        assert all(len(c) <= 777 or c.count("\n") == 1 for c in chunks)  # only a single long line may exceed
    assert loader.heldout_text()["test"]["text"] == loader.heldout_text()["test"]["text"]
    with pytest.raises(ValueError, match="chunk_bytes"):
        loader.chunk_text("abc", 0)


@pytest.mark.parametrize("distance", [70, 333, 4096])
def test_passkey_distance_is_exact_in_byte_tokens(distance):
    tokenizer = load_byte_tokenizer()
    docs = loader.passkey_docs(distance, num_docs=5, seed=3)
    assert docs == loader.passkey_docs(distance, num_docs=5, seed=3)
    assert docs != loader.passkey_docs(distance, num_docs=5, seed=4)
    for doc in docs:
        context, key = doc["context"], doc["key"]
        assert re.fullmatch(r"\d{5}", key) and doc["target"] == f" {key}"
        assert context.count(key) == 1  # the filler has no digits
        key_end = context.index(key) + len(key)
        assert len(context) - key_end == distance
        ids = tokenizer(context + doc["target"], add_special_tokens=False)["input_ids"]
        assert len(ids) == len((context + doc["target"]).encode())  # one token per byte


@pytest.mark.parametrize("distance", [47, 64, 1000])
def test_mqar_distance_is_exact_and_targets_are_the_stored_values(distance):
    docs = loader.mqar_docs(distance, num_samples=4, num_pairs=6, num_queries=3, seed=1)
    assert len(docs) == 12 and docs == loader.mqar_docs(distance, num_samples=4, num_pairs=6, num_queries=3, seed=1)
    for doc in docs:
        context = doc["context"]
        header, block = context.split("\n", 1)
        pairs = dict(re.findall(r"([a-z]{2}):(\d{2})\n", block[: 6 * 6]))
        assert len(pairs) == 6
        key = context[-3:-1]
        assert context.endswith(f"\n{key}:") and doc["target"] == pairs[key]
        pair_end = len(header) + 1 + block.index(f"{key}:{pairs[key]}\n") + 5
        assert len(context) - pair_end == distance
        answered = re.findall(r"\n([a-z]{2}):(\d{2})", context[len(header) + 1 + 36 :])
        assert len(answered) == doc["query"] and all(pairs[k] == v for k, v in answered)


def test_distance_too_small_is_rejected():
    with pytest.raises(ValueError, match="passkey distance must be at least 40"):
        loader.passkey_docs(39)
    with pytest.raises(ValueError, match="mqar distance must be at least 47"):
        loader.mqar_docs(46, num_pairs=6, num_queries=3)
    with pytest.raises(ValueError, match="num_queries"):
        loader.mqar_docs(512, num_pairs=2, num_queries=3)
