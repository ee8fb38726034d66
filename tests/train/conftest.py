"""Fixtures for the shards and trainer tests: one tiny model and one small packed export per session."""

from __future__ import annotations

import random

import pytest

WORDS = "the cat sat on a mat and then it ran far away to find some food for dinner with its friend".split()


def chats(n: int, seed: int = 0, max_answer_words: int = 40) -> list[dict]:
    """n single-turn chats with a wide spread of lengths (so packing has work to do)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, max_answer_words)))
        rows.append({
            "sample_id": f"s{i:04d}",
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "source": ["general", "domain", None][i % 3],
        })
    return rows


@pytest.fixture(scope="session")
def make_chats():
    return chats


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from datamix.models.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny") / "llama3"), arch="llama", chat_template="llama-3-instruct")


@pytest.fixture(scope="session")
def shards(tmp_path_factory, tiny_model) -> str:
    import polars as pl

    from datamix.export.shards import ShardsConfig, write_shards

    out = str(tmp_path_factory.mktemp("shards"))
    write_shards(pl.DataFrame(chats(64)), out, ShardsConfig(tokenizer=tiny_model, seq_len=128, shard_sequences=16))
    return out
