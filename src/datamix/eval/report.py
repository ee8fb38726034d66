"""Metric and forgetting tables for the terminal (`datamix eval`, `datamix status`)."""

from __future__ import annotations


def _num(v, digits: int = 4):
    return None if v is None else round(float(v), digits)


def metrics_rows(rows: list[dict], for_table: bool = True) -> tuple[list[str], list[list]]:
    """(columns, rows) of metric values: for a terminal table rounded, the 95% interval in one
    column; else every dm.metrics column at full precision (json, csv)."""
    if not for_table:
        from datamix.eval import ROW_COLUMNS

        return list(ROW_COLUMNS), [[r[c] for c in ROW_COLUMNS] for r in rows]
    columns = ["model", "set", "role", "metric", "value", "n", "stderr", "ci95"]
    out = []
    for r in rows:
        ci = None if r["ci_low"] is None else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
        out.append([r["model"], r["set"], r["role"], r["metric"], _num(r["value"]), r["n"], _num(r["stderr"]), ci])
    return columns, out


def forgetting_table(con):
    """A rich Table of dm.forgetting, or None when the store has no evaluation (or predates the view)."""
    exists = con.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'dm' AND view_name = 'forgetting'"
                         ).fetchall()[0][0]
    if not exists:
        return None
    rows = con.execute(
        "SELECT step, model, metric, forgetting, forgetting_stderr, domain_gain, domain_gain_stderr, "
        "forgetting_removed, domain_gain_kept FROM dm.forgetting").fetchall()
    if not rows:
        return None
    from rich.table import Table
    from rich.text import Text

    def pm(value, se) -> str:
        if value is None:
            return ""
        return f"{value:+.4f}" + (f" ± {se:.4f}" if se is not None else "")

    def pct(value) -> str:
        return "" if value is None else f"{value:.0%}"

    table = Table("evaluate", "model", "metric", "forgetting F", "domain gain G", "forgetting removed",
                  "domain gain kept", title="forgetting vs the baseline (dm.forgetting; F > 0: forgot, G > 0: learned)")
    for step, model, metric, f, fse, g, gse, removed, kept in rows:
        table.add_row(Text(step), Text(model), Text(metric), pm(f, fse), pm(g, gse), pct(removed), pct(kept))
    return table
