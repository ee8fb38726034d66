"""Small pieces of the report page: anchors, money, chats as HTML, clipped text, metric files."""

from __future__ import annotations

import json
import re
from html import escape


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "x"


def _money(v) -> str:
    return "" if v is None else f"${v:,.4f}"


def _chat(sample_id: str, messages, note: str = "") -> str:
    head = f'<div class="sid">{escape(sample_id)}{(" · " + escape(note)) if note else ""}</div>'
    if not messages:
        return f'<div class="chat">{head}<div class="msg none">(its text is not stored in an upstream table)</div></div>'
    turns = "".join(
        f'<div class="msg {escape(str(m["role"]))}"><span class="role">{escape(str(m["role"]))}</span>'
        f'{escape(_clip(str(m["content"])))}</div>' for m in messages)
    return f'<div class="chat">{head}{turns}</div>'


def _clip(text: str, limit: int = 1200) -> str:
    return text if len(text) <= limit else text[:limit] + f" … ({len(text) - limit:,} more characters)"


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_jsonl(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []
