"""`datamix lineage`: a sample's ancestors, the steps that linked them, the decisions that kept them.

The walk itself is SQL (sql/lineage.sql, the `dm.lineage` macro); this module
picks where to start and decorates each ancestor with its origin and decisions.
"""

from __future__ import annotations

import json

from datamix.store import first, quote


def _ancestor_steps(steps: dict[str, dict]) -> dict[str, set[str]]:
    """step -> every step upstream of it."""
    memo: dict[str, set[str]] = {}

    def up(name: str) -> set[str]:
        if name not in memo:
            memo[name] = set()
            for p in steps.get(name, {}).get("parents", {}).values():
                if p in steps:
                    memo[name] |= {p} | up(p)
        return memo[name]

    return {name: up(name) for name in steps}


def _columns(con, step: str) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = ?", [step]).fetchall()}


def walk(con, sample_id: str) -> list[dict]:
    """Lineage records, depth 0 first; empty when no step holds the sample."""
    steps = {
        name: {"kind": kind, "parents": json.loads(parents or "{}"), "passthrough": bool(pt)}
        for name, kind, parents, pt in con.execute("SELECT name, kind, parents, passthrough FROM dm.steps").fetchall()
    }
    holders = []
    for name in steps:
        if "sample_id" in _columns(con, name) and first(con.execute(
            f"SELECT 1 FROM {quote(name)} WHERE sample_id = ? LIMIT 1", [sample_id]
        )):
            holders.append(name)
    if not holders:
        return []
    # Start from every step holding it that is not an ancestor of another holder: an exported
    # sample shows both the file row it went to and the shard and sequence it was packed into.
    ancestors = _ancestor_steps(steps)
    starts = [h for h in holders if not any(h in ancestors[o] for o in holders if o != h)]
    nodes_by_key: dict[tuple, tuple] = {}
    for start in sorted(starts):
        for step, sid, depth, via in con.execute(
            "SELECT step, sample_id, depth, via_step FROM dm.lineage(?, ?)", [start, sample_id]
        ).fetchall():
            if (step, sid) not in nodes_by_key or depth < nodes_by_key[(step, sid)][2]:
                nodes_by_key[(step, sid)] = (step, sid, depth, via)
    nodes = sorted(nodes_by_key.values(), key=lambda n: (n[2], n[0]))
    records = []
    for step, sid, depth, via in nodes:
        info = steps.get(step, {})
        rec = {"sample_id": sid, "step": step, "kind": info.get("kind"), "depth": depth, "via_step": via}
        cols = _columns(con, step)
        wanted = [c for c in ("origin_file", "origin_line", "file", "row", "shard", "sequence", "source", "model",
                              "score") if c in cols]
        if wanted:
            row = first(con.execute(
                f"SELECT {', '.join(quote(c) for c in wanted)} FROM {quote(step)} WHERE sample_id = ? LIMIT 1", [sid]
            ))
            values = dict(zip(wanted, row)) if row else {}
            if values.get("origin_file") is not None and not steps.get(step, {}).get("parents"):
                rec["origin"] = {"file": values["origin_file"], "line": values["origin_line"]}
            elif values.get("file") is not None:
                rec["origin"] = {"file": values["file"], "row": values["row"]}
            elif values.get("shard") is not None:
                rec["origin"] = {"shard": values["shard"], "sequence": values["sequence"]}
            for k in ("source", "model", "score"):
                if values.get(k) is not None:
                    rec[k] = values[k]
        if "messages" in cols:
            user = first(con.execute(
                f"SELECT list_filter(messages, lambda m: m.role = 'user')[1].content FROM {quote(step)} "
                "WHERE sample_id = ? LIMIT 1", [sid]
            ))
            if user and user[0]:
                text = " ".join(user[0].split())
                rec["summary"] = "user: " + (text if len(text) <= 80 else text[:77] + "...")
        rec["decisions"] = _decisions(con, sid, via, steps)
        records.append(rec)
    return records + _whole_inputs(con, records, steps)


# Step kinds whose one output row is made from ALL of its input (a trained model): it has no
# per-row edges, so its lineage continues at the level of steps (the shards, the mix, ...).
WHOLE_INPUT_KINDS = ("train",)


def _whole_inputs(con, records: list[dict], steps: dict) -> list[dict]:
    """Step-level ancestors of the records made from a whole input (a train step's model): every
    upstream step with its row count, so a model's metrics lead to the mix it was trained on."""
    out: list[dict] = []
    seen: set[str] = set()
    frontier = [(r["step"], r["depth"]) for r in records if steps.get(r["step"], {}).get("kind") in WHOLE_INPUT_KINDS]
    while frontier:
        step, depth = frontier.pop(0)
        for parent in steps.get(step, {}).get("parents", {}).values():
            if parent in seen or parent not in steps:
                continue
            seen.add(parent)
            rows = first(con.execute("SELECT rows_out FROM dm.steps WHERE name = ?", [parent]))
            out.append({"sample_id": None, "step": parent, "kind": steps[parent]["kind"], "depth": depth + 1,
                        "via_step": step, "whole_step": True,
                        "summary": f"all {rows[0] if rows else '?'} rows of {parent} (the input as a whole)",
                        "decisions": []})
            frontier.append((parent, depth + 1))
    return out


def _decisions(con, sample_id: str, via: str | None, steps: dict) -> list[dict]:
    """What the step one level down decided about this sample (passing a filter records nothing: say so)."""
    if via is None:
        return []
    rows = con.execute(
        "SELECT step, kept, reason, score, related_id FROM dm.decisions WHERE sample_id = ? AND step = ?",
        [sample_id, via],
    ).fetchall()
    out = [dict(step=s, kept=k, reason=r, score=sc, related_id=rel) for s, k, r, sc, rel in rows]
    if not out and steps.get(via, {}).get("passthrough"):
        out.append(dict(step=via, kept=True, reason="passed", score=None, related_id=None))
    return out
