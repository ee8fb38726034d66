"""datamix report on a real store: every section, the numbers equal the store's, the cost
columns equal the server's own counts, evaluation rendered through dm.forgetting."""

from __future__ import annotations

import html
import re
import shutil

import duckdb
import pytest

from datamix.report import SECTIONS, build, connection_query

from .conftest import CONTAMINATED, datamix

pytestmark = pytest.mark.slow  # one real pipeline run (about a minute on 2 cores), shared by the report tests


def page_of(store) -> str:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return build(connection_query(con), str(store))
    finally:
        con.close()


def attrs(page: str, tag_attr: str) -> list[dict]:
    """Every <tr ...> carrying `tag_attr`, as a dict of its data-* attributes."""
    out = []
    for m in re.finditer(r"<tr ([^>]*" + tag_attr + r"[^>]*)>", page):
        out.append({k: html.unescape(v) for k, v in re.findall(r'data-([\w-]+)="([^"]*)"', m.group(1))})
    return out


def test_cli_writes_one_page_with_every_section_and_no_outside_reference(report_run):
    folder, store, _ = report_run
    out = folder / "cli.html"
    res = datamix("report", "report.yaml", "--out", str(out), cwd=folder)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    page = out.read_text()
    for key in SECTIONS:
        assert f'data-section="{key}"' in page
    # self-contained: no script, no external stylesheet, image or link
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert page.count("<svg") >= 10


def test_the_report_step_wrote_the_same_sections(report_run):
    folder, _, _ = report_run
    page = (folder / "report.html").read_text()
    for key in SECTIONS:
        assert f'data-section="{key}"' in page


def test_rows_per_step_and_composition_equal_the_store(report_run):
    _, store, _ = report_run
    page = page_of(store)
    con = duckdb.connect(str(store), read_only=True)
    steps = {n: (i, o) for n, i, o in con.execute("SELECT name, rows_in, rows_out FROM dm.steps").fetchall()}
    comp = {s: (n, t) for s, n, _, t, _ in con.execute("SELECT * FROM dm.composition('mix')").fetchall()}
    drops = con.execute("SELECT step, reason, count(*) FROM dm.decisions WHERE NOT kept GROUP BY ALL").fetchall()
    con.close()
    shown = {r["step"]: (int(r["rows-in"]), int(r["rows-out"])) for r in attrs(page, "data-rows-in")}
    assert shown == steps and len(shown) == 13
    assert {r["source"]: (int(r["samples"]), int(r["tokens"])) for r in attrs(page, "data-samples")} == comp
    for step, reason, n in drops:  # every drop reason links to its examples
        assert f'href="#drop-{step}-' in page and f"{html.escape(reason)}</a>: {n:,}" in page


def test_cost_columns_equal_the_servers_counts(report_run):
    _, store, server = report_run
    con = duckdb.connect(str(store), read_only=True)
    rows = con.execute("SELECT model, sum(calls), sum(prompt_tokens), sum(completion_tokens), sum(usd) "
                       "FROM dm.cost GROUP BY model").fetchall()
    con.close()
    by_model = {m: (c, p, t, usd) for m, c, p, t, usd in rows}
    assert set(by_model) == {"writer", "critic"}
    for model in ("writer", "critic"):
        calls, prompt_tokens, completion_tokens, _ = by_model[model]
        assert prompt_tokens == server.prompt_tokens[model]
        assert completion_tokens == server.completion_tokens[model]
        # one request per instruction (n=2 in it) in answers, one per candidate in scored
        assert server.requests[model] == 12 + 48 and calls == 12 * 2 + 48
    writer = by_model["writer"]
    assert writer[3] == pytest.approx((writer[1] * 0.15 + writer[2] * 0.6) / 1e6)
    assert by_model["critic"][3] is None  # no price: no money, not zero
    page = page_of(store)
    cells = {(r["step"], r["model"]) for r in attrs(page, 'data-model="')}
    assert cells == {("answers", "writer"), ("answers", "critic"), ("scored", "writer"), ("scored", "critic")}
    total = re.search(r'data-total="completion_tokens">([\d,]+)<', page).group(1)
    assert int(total.replace(",", "")) == sum(server.completion_tokens.values())


def test_without_evaluation_the_section_says_so(report_run):
    _, store, _ = report_run
    section = re.search(r'<section id="evaluation".*?</section>', page_of(store)).group(0)
    assert "no evaluation in this store" in section


def test_evaluation_section_renders_the_forgetting_view(report_run, tmp_path):
    """Metrics written as an evaluate step writes them; the page shows dm.forgetting's numbers."""
    _, store, _ = report_run
    copy = tmp_path / "eval.duckdb"
    shutil.copy(store, copy)
    con = duckdb.connect(str(copy))
    if not con.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'dm' AND view_name = 'forgetting'"
                       ).fetchall()[0][0]:
        con.close()
        pytest.skip("this store has no dm.forgetting view (the evaluation issue's sql/forgetting.sql)")
    con.execute("INSERT INTO dm.steps (name, kind, config, parents, state) VALUES "
                "('eval', 'evaluate', '{\"models\": [\"base\", \"mixed\", \"domain_only\"], \"no_replay\": \"domain_only\"}', "
                "'{}', 'done')")
    values = [("base", "general", 1.0), ("base", "domain", 2.0), ("mixed", "general", 1.1), ("mixed", "domain", 1.5),
              ("domain_only", "general", 1.4), ("domain_only", "domain", 1.4)]
    for model, role, value in values:
        con.execute("INSERT INTO dm.metrics (step, model, \"set\", role, metric, value, n, stderr, higher_is_better) "
                    "VALUES ('eval', ?, ?, ?, 'nll', ?, 100, 0.01, false)", [model, role + "_set", role, value])
    expected = con.execute("SELECT model, forgetting, domain_gain FROM dm.forgetting").fetchall()
    con.close()
    section = re.search(r'<section id="evaluation".*?</section>', page_of(copy), re.S).group(0)
    assert "no evaluation" not in section and "<svg" in section and "<circle" in section
    assert {m for m, _, _ in expected} == {"mixed", "domain_only"}
    for model, forgetting, gain in expected:
        row = re.search(rf'<tr data-model="{model}">(.*?)</tr>', section).group(1)
        cells = re.findall(r'<td class="num">([^<]*)</td>', row)
        assert float(cells[0]) == pytest.approx(forgetting, rel=1e-2) and float(cells[2]) == pytest.approx(gain, rel=1e-2)


def test_a_store_with_nothing_in_it_still_gets_every_section(tmp_path):
    from datamix.store import Store

    store = Store(str(tmp_path / "empty.duckdb"))
    page = build(connection_query(store.con), store.path)
    store.close()
    for key in SECTIONS:
        assert f'data-section="{key}"' in page
    assert "no steps in this store" in page and "no evaluation in this store" in page
    assert "no model calls recorded in this store" in page


def test_dedup_shows_clusters_pairs_and_the_contamination_hit_with_both_texts(report_run):
    _, store, _ = report_run
    section = re.search(r'<section id="dedup".*?</section>', page_of(store), re.S).group(0)
    assert "contamination hit, similarity 1" in section and "near-duplicate pair" in section
    hit = re.search(r"<details[^>]*><summary>decon: contamination hit.*?</details>", section, re.S).group(0)
    assert hit.count(html.escape(CONTAMINATED)) == 2  # the removed sample and the reference row it matched
    assert "decontamination: 1 samples matched a reference" in section
    assert "dedup: size 2" in section  # every critic answer was given twice


def test_control_characters_in_samples_never_reach_the_page(tmp_path):
    # a tiny model's sampled text can hold a NUL or other C0 characters, which HTML may not
    from datamix.report.pieces import _chat
    from datamix.store import Store

    store = Store(str(tmp_path / "s.duckdb"))
    page = build(connection_query(store.con), str(tmp_path / "s.duckdb"), title="x\x00y")
    store.close()
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", page) and "x\ufffdy" in page
    assert "\x00" in _chat("s1", [{"role": "user", "content": "a\x00b"}])  # sanitised once, for the whole page
