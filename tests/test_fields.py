"""Chat fields: the DuckDB expressions (read by dedup) equal the Polars ones, row for row."""

from __future__ import annotations

import random

import duckdb
import polars as pl
import pyarrow as pa
import pytest

from datamix.fields import CHAT_FIELDS, SQL_FIELDS, field_expr, sql_select

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def random_chats(n: int, seed: int = 0) -> list:
    """Chats with every awkward case: null chats, empty chats, null turns, null or unknown
    roles, null, empty, blank, multi-line and non-ASCII contents."""
    rng = random.Random(seed)

    def turn():
        if rng.random() < 0.05:
            return None
        return {"role": rng.choice(["user", "assistant", "system", "tool", None]),
                "content": rng.choice([None, "", " ", "héllo 🙂", "a\nb", "x", "NULL", "several words here", "\t"])}

    chats = []
    for _ in range(n):
        r = rng.random()
        chats.append(None if r < 0.03 else [] if r < 0.06 else [turn() for _ in range(rng.randint(1, 6))])
    return chats


def test_every_chat_field_has_a_sql_expression():
    assert set(SQL_FIELDS) == set(CHAT_FIELDS)


@pytest.mark.parametrize("field", CHAT_FIELDS)
def test_sql_field_equals_the_polars_field(field):
    chats = random_chats(3000)
    table = pa.table({"messages": pa.array(chats, MESSAGES)})
    expected = pl.from_arrow(table).select(field_expr(field)).to_series().to_list()
    con = duckdb.connect()
    con.register("t", table)
    got = [r[0] for r in con.sql(f"SELECT {sql_select(field, 'x')} FROM t").fetchall()]
    con.close()
    mismatches = [(chats[i], e, g) for i, (e, g) in enumerate(zip(expected, got)) if e != g]
    assert not mismatches, mismatches[:3]
    assert len(set(got)) > 3  # the data exercises the field (not all empty)


def test_a_column_is_read_as_it_is():
    con = duckdb.connect()
    con.register("t", pa.table({"my col": [1, None]}))
    assert con.sql(f"SELECT {sql_select('my col', 'v')} FROM t").fetchall() == [(1,), (None,)]
    con.close()
