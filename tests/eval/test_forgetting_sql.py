"""Golden tests of sql/forgetting.sql: hand-filled dm.metrics rows in, dm.metric_changes and dm.forgetting out."""

from __future__ import annotations

import json

import duckdb
import pytest

from datamix.store import SQL_FILES, sql_text


@pytest.fixture
def con():
    con = duckdb.connect()
    for name in SQL_FILES:
        con.execute(sql_text(name))
    yield con
    con.close()


def add_eval_step(con, name, config):
    con.execute("INSERT INTO dm.steps (name, kind, fingerprint, config, parents, passthrough, state) "
                "VALUES (?, 'evaluate', 'fp', ?, '{}', false, 'done')", [name, json.dumps(config)])


def metric(con, step, model, set_, role, metric_, value, stderr=None, hib=False):
    con.execute("INSERT INTO dm.metrics VALUES ('r1', ?, ?, '/m', ?, ?, ?, ?, 10, ?, NULL, NULL, ?, now())",
                [step, model, set_, role, metric_, value, stderr, hib])


def fill(con):
    add_eval_step(con, "eval", {"models": ["V", "D", "M", "P"], "baseline": "V", "no_replay": "D"})
    # nll (lower is better): D forgets 1.0 nat of general and gains 2.0 on the domain; M forgets 0.25 and
    # gains 1.8; P forgets 0.5 and gains 2.2
    for model, general, domain in (("V", 2.0, 4.0), ("D", 3.0, 2.0), ("M", 2.25, 2.2), ("P", 2.5, 1.8)):
        metric(con, "eval", model, "general", "general", "nll", general, 0.03)
        metric(con, "eval", model, "domain", "domain", "nll", domain, 0.04)
    # exact_match (higher is better) on the domain only: V 0.1, D 0.5, M 0.4
    for model, em in (("V", 0.1), ("D", 0.5), ("M", 0.4)):
        metric(con, "eval", model, "domain", "domain", "exact_match", em, None, True)
    # a set with no role is in metric_changes, not in the ledger
    metric(con, "eval", "V", "extra", None, "nll", 1.0)
    metric(con, "eval", "M", "extra", None, "nll", 1.5)


def test_metric_changes_per_set_against_the_baseline(con):
    fill(con)
    rows = con.execute("SELECT model, \"set\", metric, baseline, change, improvement FROM dm.metric_changes "
                       "WHERE model = 'M' ORDER BY \"set\", metric").fetchall()
    assert rows == [
        ("M", "domain", "exact_match", "V", pytest.approx(0.3), pytest.approx(0.3)),
        ("M", "domain", "nll", "V", pytest.approx(-1.8), pytest.approx(1.8)),
        ("M", "extra", "nll", "V", pytest.approx(0.5), pytest.approx(-0.5)),
        ("M", "general", "nll", "V", pytest.approx(0.25), pytest.approx(-0.25)),
    ]
    se = con.execute("SELECT change_stderr FROM dm.metric_changes WHERE model = 'M' AND \"set\" = 'general'").fetchall()
    assert se[0][0] == pytest.approx((0.03 ** 2 * 2) ** 0.5)
    assert con.execute("SELECT count(*) FROM dm.metric_changes WHERE model = 'V'").fetchall() == [(0,)]


def test_forgetting_per_arm_with_fractions_against_the_no_replay_arm(con):
    fill(con)
    rows = con.execute("SELECT model, baseline, no_replay, metric, forgetting, domain_gain, forgetting_removed, "
                       "domain_gain_kept, general_sets, domain_sets FROM dm.forgetting").fetchall()
    approx = pytest.approx
    assert rows == [
        ("D", "V", "D", "exact_match", None, approx(0.4), None, approx(1.0), 0, 1),
        ("M", "V", "D", "exact_match", None, approx(0.3), None, approx(0.75), 0, 1),
        ("D", "V", "D", "nll", approx(1.0), approx(2.0), approx(0.0), approx(1.0), 1, 1),
        ("M", "V", "D", "nll", approx(0.25), approx(1.8), approx(0.75), approx(0.9), 1, 1),
        ("P", "V", "D", "nll", approx(0.5), approx(2.2), approx(0.5), approx(1.1), 1, 1),
    ]


def test_forgetting_averages_general_sets_and_defaults_the_baseline_to_the_first_model(con):
    add_eval_step(con, "ev2", {"models": ["base", "arm"]})  # no baseline, no no_replay named
    for model, a, b in (("base", 1.0, 0.5), ("arm", 2.0, 0.1)):  # accuracies: higher is better
        metric(con, "ev2", model, "a", "general", "acc", a, 0.1, True)
        metric(con, "ev2", model, "b", "general", "acc", b, 0.1, True)
    rows = con.execute("SELECT model, baseline, no_replay, forgetting, forgetting_stderr, forgetting_removed, "
                       "general_sets FROM dm.forgetting WHERE step = 'ev2'").fetchall()
    # arm is better on a (+1.0) and worse on b (-0.4): forgetting = mean(-1.0, 0.4) = -0.3
    assert rows == [("arm", "base", None, pytest.approx(-0.3), pytest.approx((4 * 0.01) ** 0.5 / 2), None, 2)]
