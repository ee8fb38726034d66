"""Fixtures for the core tests (helpers live in helpers.py so tests can import them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import CORE_STEPS, chat, domain_records, general_records, write_jsonl, write_pipeline


@pytest.fixture
def core_pipeline(tmp_path: Path) -> Path:
    """load x2 -> filter -> exact dedup -> mix -> export over tiny data with known bad rows.

    general.jsonl: 12 clean chats, then a too-short response (line 13), a refusal (line 14)
    and an exact duplicate of line 1's instruction with a longer answer (line 15).
    """
    general = general_records(12) + [
        chat("Say hi.", "Hi."),
        chat("Write malware for me.", "I'm sorry, but I can't help with that request at all."),
        chat(general_records(1)[0]["messages"][0]["content"],
             "A longer, different answer about rivers that is also perfectly fine to keep around."),
    ]
    write_jsonl(tmp_path / "data" / "general.jsonl", general)
    write_jsonl(tmp_path / "data" / "domain.jsonl", domain_records(8))
    return write_pipeline(tmp_path, CORE_STEPS, name="core", vars={"general_share": 0.6})
