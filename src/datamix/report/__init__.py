"""`datamix report`: one self-contained HTML page that explains a store's dataset.

The page answers what a practitioner asks after a run, each as a picture with the
numbers beside it: which steps ran and where the samples went (DAG and funnel, with
example samples per drop reason), how long instructions and responses are, what the
judges thought and whether they agree, what dedup removed, whether the mix is what
was asked for (in samples and in tokens), what the shards and training look like, what
evaluation found (forgetting against domain gain) and what the model calls cost.

Everything comes from the store through the queries in sql/report_*.sql (values are
bound, tables go through query_table) plus the files the store records (shard
manifests, the trainer's metrics.jsonl). The page has no script and loads nothing:
styles are inline and charts are static SVG (datamix.report.svg).

`query(sql, params) -> list[dict]` is the only way in, so the same code serves the CLI
(a read-only connection) and the `report` step (the runner's connection).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Callable
from html import escape

from datamix.report import svg
from datamix.report.pieces import _chat, _money, _read_json, _read_jsonl, _slug
from datamix.report.style import CSS
from datamix.report.svg import fmt

Query = Callable[..., list[dict]]
SECTIONS = ("overview", "pipeline", "lengths", "scores", "dedup", "mix", "shards", "training", "evaluation", "cost")
EXAMPLES = 3  # samples shown per drop reason and per duplicate kind
BINS = 20


def queries(file: str) -> dict[str, str]:
    """The named queries of sql/<file> (each after a `-- name: NAME` line)."""
    from datamix.store import sql_text

    out: dict[str, str] = {}
    parts = re.split(r"^-- name: *(\w+) *$", sql_text(file), flags=re.MULTILINE)
    for name, body in zip(parts[1::2], parts[2::2]):
        out[name] = body.strip().rstrip(";")
    return out


def connection_query(con) -> Query:
    def query(sql: str, params=None) -> list[dict]:
        cur = con.execute(sql, params or [])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    return query


class _Report:
    def __init__(self, query: Query, store_path: str):
        self.q = query
        self.store_path = store_path
        self.sql = {}
        for f in ("report_steps.sql", "report_lengths.sql", "report_scores.sql", "report_dedup.sql", "report_mix.sql",
                  "report_stats.sql"):
            self.sql.update(queries(f))
        self.steps = self.q(self.sql["steps"])
        self.by_name = {s["name"]: s for s in self.steps}

    # ---- helpers ------------------------------------------------------------

    def run(self, name: str, *params) -> list[dict]:
        return self.q(self.sql[name], list(params))

    def exists(self, schema: str, name: str) -> bool:
        return bool(self.run("has_view", schema, name, schema, name)[0]["found"])

    def has_columns(self, table: str, *columns: str) -> bool:
        if not self.exists("main", table):
            return False
        return len(self.run("has_columns", table, list(columns))) == len(columns)

    def steps_of(self, kind: str, state: str = "done") -> list[dict]:
        return [s for s in self.steps if s["kind"] == kind and s["state"] == state]

    def config(self, step: dict) -> dict:
        try:
            return json.loads(step["config"] or "{}")
        except ValueError:
            return {}

    def parents(self, step: dict) -> dict:
        try:
            return json.loads(step["parents"] or "{}")
        except ValueError:
            return {}

    def distribution(self, values: str, params: list) -> tuple[list[dict], dict[str, tuple[list[float], list[int]]]]:
        """(stats per group, {group: (bin edges, counts)}) of a (grp, x) query, summarised in SQL."""
        stats = self.q(self.sql["distribution_stats"].replace("{values}", values), params)
        if not stats:
            return [], {}
        lo = min(float(s["min"]) for s in stats)
        hi = max(float(s["max"]) for s in stats)
        width = (hi - lo) / BINS if hi > lo else 1.0
        rows = self.q(self.sql["distribution_bins"].replace("{values}", values), [*params, lo, width, BINS])
        hists: dict[str, tuple[list[float], list[int]]] = {}
        edges = [lo + i * width for i in range(BINS + 1)]
        for s in stats:
            hists[str(s["grp"])] = (edges, [0] * BINS)
        for r in rows:
            hists[str(r["grp"])][1][r["bin"]] += r["n"]
        return stats, hists

    def messages(self, table: str, ids: list[str]) -> dict[str, list]:
        if not ids or not self.has_columns(table, "sample_id", "messages"):
            return {}
        return {r["sample_id"]: r["messages"] for r in self.run("messages_of", table, ids)}

    # ---- sections -------------------------------------------------------------

    def overview(self) -> str:
        done = [s for s in self.steps if s["state"] == "done"]
        final = next((s for s in reversed(self.steps) if s["kind"] in ("mix", "export", "select")), None)
        cost = self.run("cost") if self.exists("dm", "cost") else []
        calls = sum(c["calls"] or 0 for c in cost)
        tokens = sum((c["prompt_tokens"] or 0) + (c["completion_tokens"] or 0) for c in cost)
        usd = [c["usd"] for c in cost if c["usd"] is not None]
        facts = [("steps", f"{len(done)} of {len(self.steps)} done"),
                 ("samples at the end", f"{fmt(final['rows_out'])} ({final['name']})" if final else "none"),
                 ("seconds", fmt(round(sum(s["seconds"] or 0 for s in self.steps), 1))),
                 ("model calls", f"{fmt(calls)} ({fmt(tokens)} tokens)"),
                 ("cost", f"${sum(usd):,.4f}" if usd else "no prices given")]
        cards = "".join(f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{escape(v)}</div></div>'
                        for k, v in facts)
        return f'<div class="cards">{cards}</div>'

    def pipeline(self) -> str:
        if not self.steps:
            return '<p class="empty">no steps in this store: run the pipeline first.</p>'
        edges = [(p, s["name"]) for s in self.steps for p in self.parents(s).values()]
        drops: dict[str, list[dict]] = {}
        for d in self.run("drops"):
            drops.setdefault(d["step"], []).append(d)
        quarantined: dict[str, list[dict]] = {}
        for qr in self.run("quarantined"):
            quarantined.setdefault(qr["step"], []).append(qr)
        rows = []
        for s in self.steps:
            reasons = ", ".join(
                f'<a href="#drop-{escape(s["name"])}-{escape(_slug(d["reason"]))}">{escape(d["reason"])}</a>: {fmt(d["dropped"])}'
                for d in drops.get(s["name"], []))
            if quarantined.get(s["name"]):
                reasons += (", " if reasons else "") + ", ".join(
                    f"quarantined ({escape(str(qr['reason']))}): {fmt(qr['rows'])}" for qr in quarantined[s["name"]])
            rows.append(
                f'<tr id="step-{escape(s["name"])}" data-step="{escape(s["name"])}" data-rows-in="{s["rows_in"]}" '
                f'data-rows-out="{s["rows_out"]}"><td>{escape(s["name"])}</td><td>{escape(s["kind"])}</td>'
                f'<td class="state-{escape(s["state"] or "")}">{escape(s["state"] or "")}</td>'
                f'<td class="num">{fmt(s["rows_in"])}</td><td class="num">{fmt(s["rows_out"])}</td>'
                f'<td>{reasons}</td><td class="num">{fmt(s["seconds"])}</td></tr>')
        table = ('<table class="data"><thead><tr><th>step</th><th>kind</th><th>state</th><th>rows in</th>'
                 '<th>rows out</th><th>dropped (reason: rows)</th><th>seconds</th></tr></thead><tbody>'
                 + "".join(rows) + "</tbody></table>")
        funnel_items = [(f"{d['step']}: {d['reason']}", d["dropped"]) for ds in drops.values() for d in ds]
        funnel = (svg.hbars(funnel_items, "samples dropped per step and reason") if funnel_items
                  else '<p class="empty">no step dropped a sample.</p>')
        return (f'<div class="side"><div class="figure dag">{svg.dag(self.steps, edges, "the pipeline: steps and their inputs")}'
                f"</div>{table}</div><h3>Funnel: drops per step and reason</h3><div class=\"figure\">{funnel}</div>"
                + self._drop_examples())

    def _drop_examples(self) -> str:
        examples = self.run("drop_examples", EXAMPLES)
        if not examples:
            return ""
        out = ["<h3>Examples of dropped samples</h3>"]
        by_reason: dict[tuple[str, str], list[dict]] = {}
        for e in examples:
            by_reason.setdefault((e["step"], e["reason"]), []).append(e)
        for (step, reason), items in by_reason.items():
            parent = self.parents(self.by_name.get(step, {"parents": "{}"})).get("input")
            found = self.messages(parent, [e["sample_id"] for e in items]) if parent else {}
            chats = []
            for e in items:
                extra = []
                if e["score"] is not None:
                    extra.append(f"score {fmt(e['score'])}")
                if e["related_id"]:
                    extra.append(f"related {e['related_id']}")
                chats.append(_chat(e["sample_id"], found.get(e["sample_id"]), ", ".join(extra)))
            out.append(f'<details id="drop-{escape(step)}-{escape(_slug(reason))}" class="examples"><summary>'
                       f'{escape(step)}: {escape(reason)} ({len(items)} shown)</summary>{"".join(chats)}</details>')
        return "".join(out)

    def lengths(self) -> str:
        parts = []
        groups = []
        mix = self.steps_of("mix")
        if mix and self.has_columns(mix[-1]["name"], "source", "est_tokens", "messages"):
            groups.append(("lengths_by_source", mix[-1]["name"], "per source", "est. tokens (mix's estimate)"))
        # tokens_out is what the model wrote: the answer (generate) or the instruction (reconstruct)
        for kind, written in (("reconstruct", "instruction tokens"), ("generate", "response tokens")):
            for s in self.steps_of(kind):
                if self.has_columns(s["name"], "model", "tokens_out", "messages"):
                    groups.append(("lengths_by_model", s["name"], "per generating model", written))
        if not groups:
            return '<p class="empty">no step with chats and a source or model column.</p>'
        for query, table, by, token_label in groups:
            parts.append(f"<h3>{escape(table)} ({escape(by)})</h3>")
            for column, what in (("instruction_chars", "instruction characters"),
                                 ("response_chars", "response characters"), ("tokens", token_label)):
                values = f"SELECT grp, {column} AS x FROM ({self.sql[query]})"
                stats, hists = self.distribution(values, [table])
                if stats:
                    parts.append(self._distribution_block(f"{table}: {what}", what, stats, hists))
        return "".join(parts)

    def _distribution_block(self, label: str, what: str, stats: list[dict], hists: dict) -> str:
        charts = "".join(
            f'<div class="small"><div class="cap">{escape(str(g))}</div>'
            f'{svg.histogram(edges, counts, f"{label}: {g}", what, fill=svg.colour(i))}</div>'
            for i, (g, (edges, counts)) in enumerate(hists.items()))
        rows = "".join(
            f'<tr data-group="{escape(str(s["grp"]))}"><td>{escape(str(s["grp"]))}</td><td class="num">{fmt(s["n"])}</td>'
            + "".join(f'<td class="num">{fmt(s[k])}</td>' for k in ("min", "p10", "p50", "p90", "max", "mean")) + "</tr>"
            for s in stats)
        table = ('<table class="data compact"><thead><tr><th></th><th>n</th><th>min</th><th>p10</th><th>median</th>'
                 f'<th>p90</th><th>max</th><th>mean</th></tr></thead><tbody>{rows}</tbody></table>')
        return (f'<div class="dist"><div class="label">{escape(label)}</div><div class="side"><div class="row">{charts}</div>'
                f"{table}</div></div>")

    def scores(self) -> str:
        parts = []
        for s in self.steps_of("judge"):
            table = s["name"]
            parts.append(f"<h3>{escape(table)}</h3>")
            if self.has_columns(table, "scores"):
                stats, hists = self.distribution(f"SELECT grp, x FROM ({self.sql['judge_scores']})", [table])
                if stats:
                    parts.append(self._distribution_block(f"{table}: score per judge", "score", stats, hists))
            if self.has_columns(table, "model", "score"):
                stats, hists = self.distribution(f"SELECT grp, x FROM ({self.sql['model_scores']})", [table])
                if stats:
                    parts.append(self._distribution_block(f"{table}: score per generating model", "score", stats, hists))
            if self.has_columns(table, "scores", "sample_id"):
                pairs = self.run("judge_agreement", table)
                if pairs:
                    rows = "".join(f"<tr><td>{escape(p['judge_a'])}</td><td>{escape(p['judge_b'])}</td>"
                                   f"<td class=\"num\">{fmt(p['candidates'])}</td><td class=\"num\">{fmt(p['correlation'])}</td></tr>"
                                   for p in pairs)
                    parts.append("<h4>Agreement between judges (Pearson correlation)</h4>"
                                 '<table class="data compact"><thead><tr><th>judge</th><th>judge</th><th>candidates</th>'
                                 f"<th>correlation</th></tr></thead><tbody>{rows}</tbody></table>")
                else:
                    parts.append('<p class="note">one judge: no agreement to measure.</p>')
        kept = self.run("kept_vs_lost")
        for step in dict.fromkeys(k["step"] for k in kept):
            values = f"SELECT grp, x FROM ({self.sql['kept_vs_lost']}) WHERE step = ?"
            stats, hists = self.distribution(values, [step])
            parts.append(f"<h3>{escape(step)}: kept against lost candidates</h3>"
                         + self._distribution_block(f"{step}: score of kept and lost candidates", "score", stats, hists))
        return "".join(parts) or '<p class="empty">no judge or select step in this store.</p>'

    def dedup(self) -> str:
        totals = self.run("dedup_totals")
        steps = self.steps_of("dedup")
        if not steps:
            return '<p class="empty">no dedup step in this store.</p>'
        parts = []
        for s in steps:
            mine = [t for t in totals if t["step"] == s["name"]]
            removed = ", ".join(f"{t['reason']}: {fmt(t['removed'])}" for t in mine) or "nothing removed"
            parts.append(f"<h3>{escape(s['name'])}</h3><p>{fmt(s['rows_in'])} in, {fmt(s['rows_out'])} kept; "
                         f"{escape(removed)}.</p>")
        sizes = self.run("cluster_sizes")
        if sizes:
            items = [(f"{r['step']}: size {r['cluster_size']}", r["clusters"]) for r in sizes]
            parts.append(f'<h4>Cluster sizes</h4><div class="figure">{svg.hbars(items, "duplicate clusters by size", "clusters")}</div>')
        else:
            parts.append('<p class="note">no duplicate clusters: every sample was unique at the threshold.</p>')
        pairs = self.run("duplicate_pairs", EXAMPLES)
        for p in pairs:
            step = self.by_name.get(p["step"], {"parents": "{}", "config": "{}"})
            parent = self.parents(step).get("input")
            texts = self.messages(parent, [p["sample_id"], p["related_id"]]) if parent else {}
            reference = self.config(step).get("reference")
            if p["reason"] == "contamination" and reference in self.by_name:  # the matched row is the reference's
                texts.update(self.messages(reference, [p["related_id"]]))
            label = "contamination hit" if p["reason"] == "contamination" else "near-duplicate pair"
            parts.append(f'<details class="examples"><summary>{escape(p["step"])}: {label}, similarity '
                         f'{fmt(p["similarity"])}</summary><div class="pair">'
                         f'{_chat(p["sample_id"], texts.get(p["sample_id"]), "removed")}'
                         f'{_chat(p["related_id"] or "", texts.get(p["related_id"]), "kept / matched")}</div></details>')
        contamination = [t for t in totals if t["reason"] == "contamination"]
        parts.append(f"<p>decontamination: {fmt(sum(t['removed'] for t in contamination))} samples matched a reference.</p>"
                     if contamination else '<p class="note">no decontamination hits (no step with a reference, or none matched).</p>')
        return "".join(parts)

    def mix(self) -> str:
        mixes = self.run("mixes")
        if not mixes:
            return '<p class="empty">no mix step in this store.</p>'
        parts = []
        for m in mixes:
            ratio = json.loads(m["ratio"]) if isinstance(m["ratio"], str) else (m["ratio"] or {})
            total = sum(float(v) for v in ratio.values()) or 1.0
            comp = self.run("composition", m["name"])
            sources = [c["source"] for c in comp]
            requested = [float(ratio.get(s, 0)) / total for s in sources]
            chart = svg.grouped_bars(sources, {f"requested ({m['unit']})": requested,
                                               "samples": [c["sample_fraction"] for c in comp],
                                               "tokens": [c["token_fraction"] for c in comp]},
                                     f"{m['name']}: composition against the requested ratio", percent=True)
            rows = "".join(
                f'<tr data-source="{escape(str(c["source"]))}" data-samples="{c["samples"]}" data-tokens="{c["tokens"]}">'
                f'<td>{escape(str(c["source"]))}</td><td class="num">{fmt(r)}</td><td class="num">{fmt(c["samples"])}</td>'
                f'<td class="num">{fmt(c["sample_fraction"])}</td><td class="num">{fmt(c["tokens"])}</td>'
                f'<td class="num">{fmt(c["token_fraction"])}</td></tr>' for c, r in zip(comp, requested))
            parts.append(f"<h3>{escape(m['name'])}</h3><div class=\"figure\">{chart}</div>"
                         '<table class="data compact"><thead><tr><th>source</th><th>requested</th><th>samples</th>'
                         '<th>sample fraction</th><th>est. tokens</th><th>token fraction</th></tr></thead>'
                         f"<tbody>{rows}</tbody></table>")
        return "".join(parts)

    def shards(self) -> str:
        parts = []
        for s in self.steps_of("export"):
            if not self.has_columns(s["name"], "folder", "status"):
                continue
            info = self.run("shard_folders", s["name"])[0]
            manifest = _read_json(os.path.join(info["folder"] or "", "manifest.json"))
            if manifest is None:
                parts.append(f"<h3>{escape(s['name'])}</h3><p class=\"note\">its manifest ({escape(str(info['folder']))}) "
                             "is gone; the counts below are the store's.</p>")
                manifest = {}
            counts = manifest.get("counts", {})
            facts = [("sequences", manifest.get("sequences")), ("seq_len", manifest.get("seq_len")),
                     ("tokens", manifest.get("tokens")), ("label tokens", manifest.get("label_tokens")),
                     ("padding fraction", manifest.get("padding_fraction")),
                     ("samples packed", counts.get("packed", info["samples"])),
                     ("truncated", counts.get("truncated", info["truncated"])),
                     ("dropped (too long)", counts.get("dropped_overlong")),
                     ("dropped (no labels)", counts.get("dropped_no_labels"))]
            rows = "".join(f"<tr><td>{escape(k)}</td><td class=\"num\">{fmt(v)}</td></tr>" for k, v in facts if v is not None)
            by_source = manifest.get("label_tokens_by_source") or {}
            chart = svg.hbars(sorted(by_source.items()), f"{s['name']}: label tokens per source", "tokens") if by_source else ""
            parts.append(f"<h3>{escape(s['name'])}</h3><div class=\"side\"><table class=\"data compact\"><tbody>{rows}</tbody>"
                         f"</table><div class=\"figure\">{chart}</div></div>")
        return "".join(parts) or '<p class="empty">no shards export in this store.</p>'

    def training(self) -> str:
        parts = []
        for s in self.steps_of("train"):
            for t in self.run("train_steps", s["name"]):
                metrics_file = os.path.join(os.path.dirname(t["model_path"] or ""), "metrics.jsonl")
                metrics = _read_jsonl(metrics_file)
                parts.append(f"<h3>{escape(s['name'])}</h3><p>{fmt(t['steps'])} steps on {escape(str(t['base_model']))}, "
                             f"{fmt(t['tokens'])} tokens, final loss {fmt(t['final_loss'])}.</p>")
                if not metrics:
                    parts.append(f'<p class="note">no metrics file at {escape(metrics_file)}.</p>')
                    continue
                charts = []
                for key, label in (("loss", "loss"), ("lr", "learning rate"), ("grad_norm", "grad norm"),
                                   ("tokens_per_s", "tokens/s")):
                    pts = [(m["step"], m.get(key)) for m in metrics if "step" in m and m.get(key) is not None]
                    if pts:
                        chart = svg.lines({label: pts}, f"{s['name']}: {label}", "step", label)
                        charts.append(f'<div class="small">{chart}</div>')
                parts.append(f'<div class="row">{"".join(charts)}</div>')
        return "".join(parts) or '<p class="empty">no train step in this store.</p>'

    def evaluation(self) -> str:
        if not self.exists("dm", "forgetting"):
            return '<p class="empty">no evaluation in this store.</p>'
        rows = self.run("forgetting")
        if not rows:
            return '<p class="empty">no evaluation in this store.</p>'
        parts = []
        for metric in dict.fromkeys(r["metric"] for r in rows):
            mine = [r for r in rows if r["metric"] == metric]
            chart = svg.scatter([(r["domain_gain"], r["forgetting"], str(r["model"])) for r in mine],
                                f"forgetting against domain gain ({metric})", f"domain gain ({metric})",
                                f"forgetting ({metric})")
            body = "".join(
                f'<tr data-model="{escape(str(r["model"]))}"><td>{escape(str(r["step"]))}</td><td>{escape(str(r["model"]))}</td>'
                + "".join(f'<td class="num">{fmt(r.get(k))}</td>' for k in
                          ("forgetting", "forgetting_stderr", "domain_gain", "domain_gain_stderr", "forgetting_removed",
                           "domain_gain_kept")) + "</tr>" for r in mine)
            parts.append(f"<h3>{escape(str(metric))}</h3><div class=\"figure\">{chart}</div>"
                         '<table class="data compact"><thead><tr><th>step</th><th>model</th><th>forgetting</th><th>±</th>'
                         '<th>domain gain</th><th>±</th><th>forgetting removed</th><th>gain kept</th></tr></thead>'
                         f"<tbody>{body}</tbody></table>")
        return "".join(parts)

    def cost(self) -> str:
        if not self.exists("dm", "cost"):
            return '<p class="empty">no model calls recorded in this store.</p>'
        rows = self.run("cost")
        if not rows:
            return '<p class="empty">no model calls recorded in this store.</p>'
        cols = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "retries", "failed", "seconds", "usd",
                "saved_usd")
        body = "".join(
            f'<tr data-step="{escape(r["step"])}" data-model="{escape(r["model"])}">'
            f'<td>{escape(r["step"])}</td><td>{escape(r["model"])}</td>'
            + "".join(f'<td class="num" data-col="{c}">{_money(r[c]) if "usd" in c else fmt(r[c])}</td>' for c in cols)
            + "</tr>" for r in rows)
        totals = {c: sum((r[c] or 0) for r in rows) for c in cols}
        any_price = any(r["usd"] is not None for r in rows)
        foot = ("<tr><th>total</th><th></th>" + "".join(
            f'<th class="num" data-total="{c}">{_money(totals[c]) if "usd" in c and any_price else ("" if "usd" in c else fmt(totals[c]))}</th>'
            for c in cols) + "</tr>")
        items = [(f"{r['step']} / {r['model']}", (r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0)) for r in rows]
        note = ("" if any_price else '<p class="note">no model has a <code>price:</code> in the pipeline, so there is '
                "no money column; tokens are what a hosted API would bill.</p>")
        return (f'<div class="figure">{svg.hbars(items, "tokens per step and model", "tokens")}</div>{note}'
                '<table class="data compact"><thead><tr><th>step</th><th>model</th><th>calls</th><th>cache hits</th>'
                '<th>prompt tokens</th><th>completion tokens</th><th>retries</th><th>failed</th><th>seconds</th>'
                f"<th>USD</th><th>saved by cache (USD)</th></tr></thead><tbody>{body}</tbody><tfoot>{foot}</tfoot></table>")


TITLES = {"overview": "Overview", "pipeline": "Pipeline and funnel", "lengths": "Lengths", "scores": "Judge scores",
          "dedup": "Dedup and decontamination", "mix": "The mix", "shards": "Shards", "training": "Training",
          "evaluation": "Evaluation", "cost": "Cost"}


def build(query: Query, store_path: str, title: str | None = None) -> str:
    """The report of the store behind `query` as one HTML page."""
    r = _Report(query, store_path)
    runs = query("SELECT pipeline, spec_path, started_at, status FROM dm.runs ORDER BY started_at DESC LIMIT 1") \
        if r.exists("dm", "runs") else []
    name = runs[0]["pipeline"] if runs else os.path.basename(store_path)
    title = title or f"datamix report: {name}"
    sections = []
    for key in SECTIONS:
        sections.append(f'<section id="{key}" data-section="{key}"><h2>{escape(TITLES[key])}</h2>{getattr(r, key)()}</section>')
    nav = "".join(f'<a href="#{k}">{escape(TITLES[k])}</a>' for k in SECTIONS)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    last = f"last run {runs[0]['started_at']:%Y-%m-%d %H:%M} ({escape(str(runs[0]['status']))})" if runs else ""
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{escape(title)}</title><style>{CSS}</style></head>'
            f'<body><header><h1>{escape(title)}</h1><p class="meta">store {escape(store_path)} · {last} · '
            f'written {when} by datamix report</p><nav>{nav}</nav></header><main>{"".join(sections)}</main></body></html>')
    # samples may hold control characters (a NUL in a sampled instruction), which HTML may not:
    # each shows as U+FFFD; the page's own markup has none
    return _CONTROL.sub("\ufffd", page)


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def write(query: Query, store_path: str, out: str, title: str | None = None) -> str:
    """Write the report to `out` (atomically: a browser never sees half a page); returns its path."""
    page = build(query, store_path, title)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, out)
    return out


def default_out(store_path: str) -> str:
    """Beside the store: .datamix/quickstart.duckdb -> .datamix/quickstart.report.html."""
    base = store_path[: -len(".duckdb")] if store_path.endswith(".duckdb") else store_path
    return base + ".report.html"
