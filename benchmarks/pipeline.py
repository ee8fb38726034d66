"""datamix's core path against the same work as one hand-written DuckDB query.

Pushes N synthetic chat samples (default 1M) plus a domain set through
load -> filter -> exact dedup -> mix -> export with `datamix run`, then does the
same work as a single DuckDB query (read JSONL, the same two filter rules, exact
dedup on normalised instructions, the same mix sizes, write JSONL). Prints rows/s
for both and the ratio. Target: datamix <= 1.5x the query's time while it also
keeps lineage, decisions, quarantine and resumable chunks.

    python benchmarks/pipeline.py                # 1M samples
    python benchmarks/pipeline.py --rows 200000  # quicker
    python benchmarks/pipeline.py --repeat 3     # alternate query / datamix 3 times, compare medians
    python benchmarks/pipeline.py --repeat 3 --baseline /tmp/old   # and an older checkout, alternated
    python benchmarks/pipeline.py --repeat 3 --baseline /tmp/old --digest   # and check both wrote the same

On a shared machine the two sides see different loads (the query uses every free
core, datamix's steps mostly one), so one pair of timings can swing the ratio by 2x;
--repeat alternates them and reports the ratio of the medians as well as each pair's.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import duckdb

PIPELINE = """
name: bench
store: store.duckdb
steps:
  - {name: general, kind: load, path: general.jsonl}
  - {name: domain, kind: load, path: domain.jsonl}
  - name: clean
    kind: filter
    input: general
    chunk_size: 250000
    rules:
      - {rule: length, field: response, min: 3, unit: words}
      - {rule: phrases, field: response, phrases: ["as an ai language model", "i cannot assist"]}
  - {name: dedup, kind: dedup, input: clean, method: exact, fields: [instruction]}
  - name: mix
    kind: mix
    inputs: {general: dedup, domain: domain}
    ratio: {general: 0.8, domain: 0.2}
  - {name: export, kind: export, input: mix, format: jsonl, path: out}
"""

# The same work in one query. Filters: response has >= 3 words and no listed phrase;
# dedup: first row per normalised instruction; mix: the sizes datamix's ratio gives.
QUERY = r"""
COPY (
  WITH general AS (
    SELECT row_number() OVER () AS line, messages FROM read_json('{dir}/general.jsonl', format = 'newline_delimited')
  ), clean AS (
    SELECT * FROM general
    WHERE len(list_filter(string_split(messages[-1].content, ' '), lambda w: w <> '')) >= 3
      AND NOT contains(lower(messages[-1].content), 'as an ai language model')
      AND NOT contains(lower(messages[-1].content), 'i cannot assist')
  ), dedup AS (
    SELECT * FROM clean
    QUALIFY row_number() OVER (
      PARTITION BY md5(trim(regexp_replace(regexp_replace(lower(messages[1].content), '[[:punct:]]', ' ', 'g'), '\s+', ' ', 'g')))
      ORDER BY line) = 1
  ), sizes AS (
    SELECT least((SELECT count(*) FROM dedup) / 0.8, (SELECT count(*) FROM read_json('{dir}/domain.jsonl', format = 'newline_delimited')) / 0.2) AS total
  ), mixed AS (
    (SELECT md5(line::VARCHAR) AS sample_id, messages, 'general' AS source FROM dedup
     ORDER BY hash(line) LIMIT (SELECT CAST(round(total * 0.8) AS BIGINT) FROM sizes))
    UNION ALL
    (SELECT md5(line::VARCHAR), messages, 'domain' FROM (SELECT row_number() OVER () AS line,
        [{{'role': 'user', 'content': prompt}}, {{'role': 'assistant', 'content': response}}] AS messages
        FROM read_json('{dir}/domain.jsonl', format = 'newline_delimited'))
     ORDER BY hash(line) LIMIT (SELECT CAST(round(total * 0.2) AS BIGINT) FROM sizes))
  )
  SELECT * FROM mixed
) TO '{dir}/query_out.jsonl' (FORMAT JSON)
"""


def make_data(folder: str, rows: int, domain_rows: int) -> None:
    """Synthetic chats: ~3% exact-duplicate instructions (row i % 33 = 0 repeats row i - 1 after
    normalisation: case, punctuation, spacing), ~2% refusals, ~2% too short."""
    con = duckdb.connect()
    con.execute(f"""
        COPY (
          SELECT [
            {{'role': 'user', 'content': CASE WHEN i % 33 = 0 THEN 'Question number ' || (i - 1) || '!  Explain topic ' || ((i - 1) % 997) || '?'
                                             ELSE 'question number ' || i || ': explain topic ' || (i % 997) || '.' END}},
            {{'role': 'assistant', 'content': CASE
                WHEN i % 50 = 1 THEN 'As an AI language model, I cannot help.'
                WHEN i % 50 = 2 THEN 'ok'
                ELSE 'Here is an answer about topic ' || (i % 997) || ' with some detail, ' || repeat('more words here ', 3 + i % 20) || 'done.' END}}
          ] AS messages
          FROM range({rows}) t(i)
        ) TO '{folder}/general.jsonl' (FORMAT JSON)
    """)
    con.execute(f"""
        COPY (
          SELECT 'Domain problem ' || i || ': what is ' || i || ' plus ' || (i * 7 % 13) || '?' AS prompt,
                 'The answer is ' || (i + i * 7 % 13) || '.' AS response
          FROM range({domain_rows}) t(i)
        ) TO '{folder}/domain.jsonl' (FORMAT JSON)
    """)
    con.close()


def peak_rss_mb(who=resource.RUSAGE_CHILDREN) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def time_query(folder: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute(QUERY.format(dir=folder))
    con.close()
    elapsed = time.perf_counter() - t0
    return elapsed, sum(1 for _ in open(os.path.join(folder, "query_out.jsonl")))


def time_datamix(folder: str, code: str | None = None) -> tuple[float, int]:
    """`datamix run` from scratch in a subprocess (imports included): a fresh store each time.

    `code`: another checkout's folder (holding src/ and sql/) to run instead of the installed one."""
    for leftover in ("store.duckdb", "store.duckdb.wal"):
        if os.path.exists(os.path.join(folder, leftover)):
            os.remove(os.path.join(folder, leftover))
    shutil.rmtree(os.path.join(folder, "out"), ignore_errors=True)
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.abspath(code), "src")) if code else None
    proc = subprocess.run([sys.executable, "-m", "datamix.cli", "run", "bench.yaml", "-q"], cwd=folder,
                          capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr)
        raise SystemExit("datamix run failed")
    return elapsed, sum(1 for _ in open(os.path.join(folder, "out", "data.jsonl")))


def store_digest(folder: str) -> dict[str, str]:
    """Rows and an order-free hash of every table of the store in `folder` (each step's, and
    dm's decisions, edges, quarantine and chunk keys), and a hash of the exported files: what
    `--digest` compares between the baseline and this code. Hashed inside DuckDB (the sum of
    each row's JSON hash), so 1M rows need no Python objects."""
    import hashlib

    con = duckdb.connect(os.path.join(folder, "store.duckdb"), read_only=True)
    names = [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' UNION "
        "SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal").fetchall()]
    out = {}
    for name in sorted(names) + ["dm.decisions", "dm.edges", "dm.quarantine", "dm.chunks"]:
        source = name if name.startswith("dm.") else '"' + name.replace('"', '""') + '"'
        cols = [c[0] for c in con.execute(f"DESCRIBE {source}").fetchall() if c[0] != "committed_at"]
        row = "struct_pack(" + ", ".join(f'"{c}" := "{c}"' for c in cols) + ")"
        n, h = con.execute(f"SELECT count(*), sum(hash(to_json({row})::VARCHAR)::HUGEINT) FROM {source}").fetchone()
        out[name] = f"{n} rows, {h}"
    con.close()
    for f in ("data.jsonl", "sample_ids.txt"):
        sha = hashlib.sha256()
        with open(os.path.join(folder, "out", f), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                sha.update(block)
        out[f"out/{f}"] = sha.hexdigest()[:16]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--domain-rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two sides this many times; medians")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--digest", action="store_true",
                    help="after the last run of each datamix side, hash its store and exported files "
                         "(untimed) and say whether the baseline's and this code's are the same")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also time this checkout (a folder with src/ and sql/, e.g. from "
                         "`git archive REV src sql | tar -x -C DIR`), alternated with the other two")
    args = ap.parse_args()

    folder = tempfile.mkdtemp(prefix="datamix-bench-")
    try:
        t0 = time.perf_counter()
        make_data(folder, args.rows, args.domain_rows)
        print(f"data: {args.rows:,} general + {args.domain_rows:,} domain samples "
              f"({os.path.getsize(os.path.join(folder, 'general.jsonl')) / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s")
        with open(os.path.join(folder, "bench.yaml"), "w") as f:
            f.write(PIPELINE)
        total_in = args.rows + args.domain_rows

        pairs, baseline, digests = [], [], {}
        for attempt in range(args.repeat):
            last = attempt == args.repeat - 1
            t_query, q_rows = time_query(folder)
            if args.baseline:
                t_base, b_rows = time_datamix(folder, args.baseline)
                baseline.append(t_base)
                if b_rows != q_rows:
                    print(f"note: baseline gave {b_rows:,} rows, the query {q_rows:,}")
                if args.digest and last:
                    t_digest = time.perf_counter()
                    digests["baseline"] = store_digest(folder)
                    print(f"baseline outputs hashed in {time.perf_counter() - t_digest:.1f}s (untimed)")
            t_datamix, d_rows = time_datamix(folder)
            if args.digest and last:
                digests["datamix"] = store_digest(folder)
            pairs.append((t_query, t_datamix))
            base = f", baseline {t_base:.2f}s ({t_base / t_query:.2f}x)" if args.baseline else ""
            print(f"run {attempt + 1}: query {t_query:.2f}s{base}, datamix {t_datamix:.2f}s, ratio {t_datamix / t_query:.2f}x")
        rss = peak_rss_mb()

        con = duckdb.connect(os.path.join(folder, "store.duckdb"), read_only=True)
        funnel = con.execute("SELECT name, rows_in, rows_out, round(seconds, 2) FROM dm.steps ORDER BY started_at").fetchall()
        con.close()
        print("\ndatamix steps of the last run (name, rows in, rows out, seconds):")
        for r in funnel:
            print("  ", *r)
        t_query = statistics.median(q for q, _ in pairs)
        t_datamix = statistics.median(d for _, d in pairs)
        label = "" if len(pairs) == 1 else f" (median of {len(pairs)})"
        print(f"\n{'':<26}{'seconds':>9}{'rows/s':>12}{'rows out':>10}")
        print(f"{'hand-written DuckDB query':<26}{t_query:>9.2f}{total_in / t_query:>12,.0f}{q_rows:>10,}")
        print(f"{'datamix run':<26}{t_datamix:>9.2f}{total_in / t_datamix:>12,.0f}{d_rows:>10,}")
        if baseline:
            t_base = statistics.median(baseline)
            print(f"{'baseline datamix run':<26}{t_base:>9.2f}{total_in / t_base:>12,.0f}"
                  f"   ratio {t_base / t_query:.2f}x ({args.baseline})")
        print(f"\nratio datamix / query time{label}: {t_datamix / t_query:.2f}x (target <= 1.5x); "
              f"datamix peak RSS {rss:,.0f} MB")
        if digests:
            print("\noutputs of the last run (rows, hash):")
            for name, value in digests["datamix"].items():
                same = "" if "baseline" not in digests else (
                    "  same as the baseline" if digests["baseline"].get(name) == value
                    else f"  DIFFERS from the baseline ({digests['baseline'].get(name)})")
                print(f"   {name}: {value}{same}")
            if "baseline" in digests and set(digests["baseline"]) != set(digests["datamix"]):
                print(f"   tables only in the baseline: {sorted(set(digests['baseline']) - set(digests['datamix']))}")
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
