"""MinHash dedup: datamix vs rensa vs datasketch, every side from raw text to the set of removed ids.

    python benchmarks/dedup.py                          # all sections, 20k synthetic docs + the real corpus
    python benchmarks/dedup.py --sections engine,fixed  # some of: engine, cli, fixed, accuracy
    python benchmarks/dedup.py --cli-docs 10000,100000 --repeat 3 --threads 1
    python benchmarks/dedup.py --sections fixed --baseline /tmp/base   # + another revision's `datamix run`

Corpus: synthetic documents of ~`--words` words (Zipf vocabulary), 30% of them copies of
earlier ones with words substituted at known edit rates; plus the alpaca_eval answers in
/work/shared/datasets when present (a second corpus: 7 models' answers to the same 805
instructions). Settings: word 5-grams, 128 permutations (datamix: 128 bins of one permutation), threshold 0.8, 16 bands x 8 rows
for every side (datamix's default for verified candidates; the peers get the same).

Sections (all timed sides interleaved in every round, best of `--repeat`):
- engine: in one process, from a Python list of str.
    datamix step engine   find_duplicates: Arrow buffer, normalise, shingle, sign, LSH,
                          verify (hybrid), union-find, removal records
    rensa engine          pre-built shingle lists (made before the clock starts):
                          RMinHash.from_token_sets + RMinHashLSH insert/query + estimate >= t
                          + union-find: the same work as datamix's step minus shingling
    rensa from raw text   the same, plus Python normalisation and shingling
    datasketch from raw   Python shingling + MinHash.bulk + MinHashLSH insert/query + estimate
                          (on a `--subset` of the corpus: it runs ~6k docs/s)
- cli: fresh processes on the same JSONL file, each from the file to a list of removed ids:
    `datamix run` of a load + dedup pipeline (new store every time: imports, kernel loading,
    reading, the step, committing decisions) vs this file's `--peer datasketch|rensa` mode
    (imports, json, Python shingling, signatures, LSH, verification).
- fixed: what a run pays whatever its size: `python -c pass`, the imports of the dedup path,
  the first find_duplicates on two texts (numba loading its cached kernels), and
  `datamix run` of a 2-row pipeline.
- --baseline DIR: DIR holds another revision's src/ and sql/ (`git archive REV src sql | tar x -C DIR`);
  its `datamix run` (PYTHONPATH=DIR/src) is timed too, interleaved, in the cli and fixed sections.
- accuracy: recall/precision against exact Jaccard of the shingle sets for pairs with
  J >= 0.8 (every LSH candidate, every planted pair, 200k random pairs), and a digest of the
  removed (index, dup_of) rows: a speed change must leave it unchanged.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

EDIT_RATES = [0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2]
THRESHOLD, NUM_PERM, BANDS, NGRAM = 0.8, 128, 16, 5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
DATAMIX = os.path.join(os.path.dirname(PYTHON), "datamix")


# ---------------------------------------------------------------- corpora


def synthetic(n_docs: int, words: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vocab_size = 30_000
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(vocab_size)]
    p = 1.0 / np.arange(1, vocab_size + 1)
    p /= p.sum()
    n_orig = int(n_docs * 0.7)
    docs = [rng.choice(vocab_size, words, p=p) for _ in range(n_orig)]
    planted = []  # (copy index, original index, edit rate)
    for k in range(n_docs - n_orig):
        src = int(rng.integers(0, n_orig))
        rate = EDIT_RATES[k % len(EDIT_RATES)]
        d = docs[src].copy()
        pos = rng.random(words) < rate
        d[pos] = rng.choice(vocab_size, int(pos.sum()), p=p)
        planted.append((len(docs), src, rate))
        docs.append(d)
    texts = [" ".join(vocab[w] for w in d) + "." for d in docs]
    return texts, planted


def real_corpus():
    texts = []
    for path in sorted(glob.glob("/work/shared/datasets/alpaca_eval/*.json")):
        with open(path) as f:
            data = json.load(f)
        texts += [r["output"] for r in data if isinstance(r, dict) and r.get("output")]
    return texts


def planted_real(real: list[str], n_docs: int, seed: int = 0):
    """The real answers plus near-copies of them (words substituted at the edit rates) up to
    `n_docs`: real text around the threshold, where hybrid verification does most exact work."""
    rng = np.random.default_rng(seed)
    texts, planted = list(real), []
    vocab = [w for t in real[:500] for w in t.split()]
    for k in range(max(n_docs - len(real), 0)):
        src = int(rng.integers(0, len(real)))
        rate = EDIT_RATES[k % len(EDIT_RATES)]
        words = real[src].split()
        for i in np.flatnonzero(rng.random(len(words)) < rate):
            words[i] = vocab[int(rng.integers(0, len(vocab)))]
        planted.append((len(texts), src, rate))
        texts.append(" ".join(words))
    return texts, planted


# ---------------------------------------------------------------- the peers (pure Python around their engines)

_WORD = re.compile(r"[^\W_]+")


def py_shingles(text: str) -> list[str]:
    """Lowercased words (runs of letters and digits, as datamix's normalisation finds them),
    joined as word 5-grams; a text shorter than 5 words is one shingle."""
    w = _WORD.findall(text.lower())
    if not w:
        return []
    return [" ".join(w[i : i + NGRAM]) for i in range(max(len(w) - NGRAM + 1, 1))]


def _union_find_removed(n: int, pairs) -> list[int]:
    """Keep the lowest index of every connected component; the rest are removed."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [i for i in range(n) if find(i) != i]


def rensa_engine(shingles: list[list[str]]) -> list[int]:
    """rensa's fastest path to verified pairs: bulk signatures, bulk LSH insert and query,
    the signature estimate as verification, union-find."""
    import rensa

    mhs = rensa.RMinHash.from_token_sets(shingles, NUM_PERM, 1)
    index = rensa.RMinHashLSH(THRESHOLD, NUM_PERM, BANDS)
    index.insert_many(mhs)
    pairs = []
    for i, cands in enumerate(index.query_all(mhs)):
        m = mhs[i]
        pairs += [(i, j) for j in cands if j > i and m.jaccard(mhs[j]) >= THRESHOLD]
    return _union_find_removed(len(shingles), pairs)


def datasketch_engine(shingles: list[list[str]]) -> list[int]:
    """datasketch as its docs suggest for bulk work: MinHash.bulk, MinHashLSH insert/query,
    the signature estimate as verification, union-find."""
    from datasketch import MinHash, MinHashLSH

    mhs = MinHash.bulk([[s.encode() for s in sh] for sh in shingles], num_perm=NUM_PERM)
    index = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(BANDS, NUM_PERM // BANDS))
    with index.insertion_session() as session:
        for i, m in enumerate(mhs):
            session.insert(i, m)
    pairs = []
    for i, m in enumerate(mhs):
        pairs += [(i, j) for j in index.query(m) if j > i and m.jaccard(mhs[j]) >= THRESHOLD]
    return _union_find_removed(len(shingles), pairs)


def peer_main(peer: str, path: str, out: str) -> None:
    """`--peer`: one fresh process from a JSONL file to the removed row numbers (the CLI section)."""
    with open(path) as f:
        texts = [json.loads(line)["response"] for line in f]
    shingles = [py_shingles(t) for t in texts]
    removed = (rensa_engine if peer == "rensa" else datasketch_engine)(shingles)
    with open(out, "w") as f:
        json.dump(removed, f)


# ---------------------------------------------------------------- helpers


def digest(removed) -> str:
    """Short hash of the removed (index, dup_of, ref_index) rows: equal before and after a speed change."""
    rows = sorted(zip(removed["index"].to_list(), removed["dup_of"].to_list(), removed["ref_index"].to_list()),
                  key=lambda r: r[0])
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def timed(fn, *args):
    """(wall seconds, result); the CPU seconds of this process go to TIMED_CPU[-1]."""
    c, t = time.process_time(), time.perf_counter()
    out = fn(*args)
    TIMED_CPU.append(time.process_time() - c)
    return time.perf_counter() - t, out


TIMED_CPU: list[float] = []


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_child(cmd, **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the child: user + system, all its threads, the result).
    On this shared machine CPU time moves less with the other jobs than wall time does."""
    c, t = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t, children_cpu() - c, proc


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- sections


def engine_section(name, texts, args):
    from datamix.dedup.minhash import MinHashConfig, find_duplicates

    cfg = MinHashConfig(method="minhash")
    assert cfg.band_rows() == (BANDS, NUM_PERM // BANDS), cfg.band_rows()
    n = len(texts)
    priority = np.arange(n, dtype=np.float64)
    shingles = [py_shingles(t) for t in texts]  # the rensa engine's input, made before its clock
    sub = texts[: args.subset]
    removed, wall, cpu = {}, {}, {}
    import numba

    threads = numba.get_num_threads()

    def run(key, fn, *fn_args):
        sec, removed[key] = timed(fn, *fn_args)
        wall[key] = min(wall.get(key, float("inf")), sec)
        cpu[key] = min(cpu.get(key, float("inf")), TIMED_CPU[-1])

    def one_thread(*fn_args):
        numba.set_num_threads(1)
        try:
            return find_duplicates(*fn_args)
        finally:
            numba.set_num_threads(threads)

    for _ in range(args.repeat):  # interleaved: a burst of the other jobs hits every side alike
        run("datamix", find_duplicates, texts, priority, cfg)
        if threads > 1:
            run("datamix 1 thread", one_thread, texts, priority, cfg)
        if _has("rensa"):
            run("rensa engine", rensa_engine, shingles)
            run("rensa raw", lambda: rensa_engine([py_shingles(t) for t in texts]))
        if _has("datasketch"):
            run("datasketch raw", lambda: datasketch_engine([py_shingles(t) for t in sub]))
    print(f"\n--- engine, {name}: {n:,} docs, best of {args.repeat}, load average {load_average()}")
    size = {k: len(sub) if k == "datasketch raw" else n for k in wall}
    label = {
        "datamix": f"datamix find_duplicates from raw text ({threads} threads)",
        "datamix 1 thread": "datamix find_duplicates from raw text (1 thread)",
        "rensa engine": "rensa engine on pre-built shingles",
        "rensa raw": "rensa from raw text (Python shingling)",
        "datasketch raw": f"datasketch from raw text ({len(sub):,}-doc subset)",
    }
    for k in wall:
        print(f"  {label[k]:58s} {wall[k]:7.3f} s wall {size[k] / wall[k]:>10,.0f} docs/s   "
              f"{cpu[k]:7.3f} s CPU {size[k] / cpu[k]:>10,.0f} docs/CPU-s")
    for peer in ("rensa engine", "rensa raw", "datasketch raw"):
        if peer in wall:
            ratio = {k: (wall[peer] / size[peer]) / (wall[k] / n) for k in ("datamix", "datamix 1 thread") if k in wall}
            cpu_ratio = (cpu[peer] / size[peer]) / (cpu["datamix"] / n)
            print(f"  datamix / {peer:15s} " + ", ".join(f"{k.replace('datamix', '') or str(threads) + ' threads'}"
                                                         f" {v:.2f}x" for k, v in ratio.items())
                  + f"; per CPU-second {cpu_ratio:.2f}x")
    counts = {k: len(v) for k, v in removed.items()}
    print(f"  removed: {counts} (datasketch: of its subset); digest {digest(removed['datamix'])}")


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


PIPELINE = """name: dedup_bench
store: store.duckdb
steps:
  - name: docs
    kind: load
    path: docs.jsonl
  - name: dedup
    kind: dedup
    input: docs
    method: minhash
    fields: [response]
"""


def _write_case(folder: str, texts: list[str]) -> None:
    with open(os.path.join(folder, "docs.jsonl"), "w") as f:
        for t in texts:
            f.write(json.dumps({"prompt": "p", "response": t}) + "\n")
    with open(os.path.join(folder, "pipeline.yaml"), "w") as f:
        f.write(PIPELINE)


def _datamix_cli(folder: str, src: str | None = None) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, the dedup step's seconds as the store records them, rows removed);
    src: the baseline's source folder, imported instead of this checkout's."""
    for name in os.listdir(folder):
        if name.startswith("store.duckdb") or name == ".datamix":
            path = os.path.join(folder, name)
            subprocess.run(["rm", "-rf", path], check=True)
    env = None if src is None else {**os.environ, "PYTHONPATH": src}
    # `python -m datamix.cli` rather than the console script: the script imports the installed
    # entry point, which another revision's source may not have
    wall, cpu, _ = run_child([PYTHON, "-m", "datamix.cli", "run", "-q", "pipeline.yaml"], cwd=folder, env=env)
    import duckdb

    con = duckdb.connect(os.path.join(folder, "store.duckdb"), read_only=True)
    step_s, rows_in, rows_out = con.execute(
        "SELECT seconds, rows_in, rows_out FROM dm.steps WHERE name = 'dedup'").fetchone()
    con.close()
    return wall, cpu, float(step_s), rows_in - rows_out


def _peer_cli(folder: str, peer: str) -> tuple[float, float, int]:
    out = os.path.join(folder, f"{peer}.json")
    wall, cpu, _ = run_child([PYTHON, os.path.abspath(__file__), "--peer", peer, os.path.join(folder, "docs.jsonl"), out])
    with open(out) as f:
        return wall, cpu, len(json.load(f))


def cli_section(texts_for, sizes, args):
    for n in sizes:
        texts = texts_for(n)
        with tempfile.TemporaryDirectory(prefix="dedup-bench-") as folder:
            _write_case(folder, texts)
            _datamix_cli(folder)  # a first run outside the timing: page cache, numba's on-disk cache
            base = _baseline_src(args)
            if base:
                _datamix_cli(folder, base)
            runs = {"datamix": [], "baseline": [], "datasketch": [], "rensa": []}
            for _ in range(args.cli_repeat):
                runs["datamix"].append(_datamix_cli(folder))
                if base:
                    runs["baseline"].append(_datamix_cli(folder, base))
                for peer in ("datasketch", "rensa"):
                    if _has(peer):
                        runs[peer].append(_peer_cli(folder, peer))
            print(f"\n--- CLI end to end, {n:,} synthetic docs, best of {args.cli_repeat}, load average {load_average()}")
            wall, cpu = min(r[0] for r in runs["datamix"]), min(r[1] for r in runs["datamix"])
            step, removed = min(r[2] for r in runs["datamix"]), runs["datamix"][0][3]
            print(f"  datamix run (load + dedup)        {wall:7.2f} s wall {cpu:7.2f} s CPU  "
                  f"(dedup step {step:.2f} s)  removed {removed:,}")
            if runs["baseline"]:
                b_wall, b_cpu = min(r[0] for r in runs["baseline"]), min(r[1] for r in runs["baseline"])
                print(f"  baseline datamix run              {b_wall:7.2f} s wall {b_cpu:7.2f} s CPU  "
                      f"(dedup step {min(r[2] for r in runs['baseline']):.2f} s)  removed {runs['baseline'][0][3]:,}")
            for peer in ("datasketch", "rensa"):
                if runs[peer]:
                    p_wall, p_cpu = min(r[0] for r in runs[peer]), min(r[1] for r in runs[peer])
                    print(f"  {peer + ' process':33s} {p_wall:7.2f} s wall {p_cpu:7.2f} s CPU  removed {runs[peer][0][2]:,}"
                          f"   datamix CLI / {peer}: {p_wall / wall:.2f}x wall, {p_cpu / cpu:.2f}x CPU")


FIXED_PROBE = """
import time
t0 = time.perf_counter()
import numpy as np
from datamix.dedup.minhash import MinHashConfig, find_duplicates
t1 = time.perf_counter()
find_duplicates(["one two three four five six", "one two three four five six!"], np.zeros(2), MinHashConfig(method="minhash"))
t2 = time.perf_counter()
import numba, polars
print(t1 - t0, t2 - t1)
"""


def _baseline_src(args) -> str | None:
    return os.path.join(os.path.abspath(args.baseline), "src") if args.baseline else None


def fixed_section(args):
    best = {"python -c pass": float("inf"), "imports": float("inf"), "first call": float("inf"),
            "probe process": float("inf"), "datamix run, 2 rows": float("inf"), "datamix --help": float("inf")}
    with tempfile.TemporaryDirectory(prefix="dedup-fixed-") as folder:
        _write_case(folder, ["one two three four five six", "one two three four five six!"])
        _datamix_cli(folder)
        for _ in range(args.cli_repeat + 2):
            best["python -c pass"] = min(best["python -c pass"], run_child([PYTHON, "-c", "pass"])[0])
            sec, _, proc = run_child([PYTHON, "-c", FIXED_PROBE], capture_output=True, text=True)
            imports, first = map(float, proc.stdout.split())
            best["probe process"] = min(best["probe process"], sec)
            best["imports"] = min(best["imports"], imports)
            best["first call"] = min(best["first call"], first)
            for label, src in [("datamix run, 2 rows", None)] + (
                    [("baseline datamix run, 2 rows", _baseline_src(args))] if args.baseline else []):
                wall, cpu = _datamix_cli(folder, src)[:2]
                best[label] = min(best.get(label, float("inf")), wall)
                best[label + " (CPU)"] = min(best.get(label + " (CPU)", float("inf")), cpu)
            best["datamix --help"] = min(best["datamix --help"], run_child([DATAMIX, "--help"], capture_output=True)[0])
    print(f"\n--- fixed costs, best of {args.cli_repeat + 2}, load average {load_average()}")
    for k, v in best.items():
        print(f"  {k:58s} {v:7.3f} s")
    print(f"  imports + first find_duplicates (2 texts): {best['imports'] + best['first call']:.3f} s")


def accuracy_section(name, texts, planted):
    from datamix.dedup import lsh, shingle
    from datamix.dedup.minhash import MinHashConfig, _PairSimilarity, find_duplicates, signatures

    cfg = MinHashConfig(method="minhash")
    n = len(texts)
    stats = {}
    removed = find_duplicates(texts, np.arange(n, dtype=np.float64), cfg, stats=stats)
    bands, rows = cfg.band_rows()
    sig = signatures(texts, cfg)
    left, right = lsh.candidate_pairs(sig, bands, rows)
    est = _PairSimilarity(sig, texts, None, cfg, {})(left, right)  # as find_duplicates verifies
    verified = set(zip(left[est >= cfg.threshold].tolist(), right[est >= cfg.threshold].tolist()))
    rng = np.random.default_rng(0)
    ra, rb = rng.integers(0, n, 200_000), rng.integers(0, n, 200_000)
    pairs = set(zip(left.tolist(), right.tolist()))
    pairs |= {(min(a, b), max(a, b)) for a, b, _ in planted if a != b}
    pairs |= {(int(min(a, b)), int(max(a, b))) for a, b in zip(ra, rb) if a != b}
    pl_, pr_ = (np.array(x, dtype=np.int64) for x in zip(*sorted(pairs)))
    hashes, offsets = shingle.shingle_hashes(texts, cfg.unit, cfg.ngram)
    sets, set_offsets = shingle.unique_sorted(hashes, offsets)
    jac = shingle.jaccard_pairs(sets, set_offsets, pl_, pr_)
    label = np.arange(n)
    label[removed["index"].to_numpy()] = removed["dup_of"].fill_null(-1).to_numpy()
    same = label[pl_] == label[pr_]
    is_ver = np.array([(a, b) in verified for a, b in zip(pl_.tolist(), pr_.tolist())])
    truth = jac >= cfg.threshold
    print(f"\n--- accuracy, {name}: {len(pl_):,} pairs evaluated, {int(truth.sum()):,} with J >= {cfg.threshold}")
    print(f"  cluster recall {same[truth].mean():.4f}, precision {truth[same].mean():.4f}; "
          f"verified pair recall {is_ver[truth].mean():.4f}, precision {truth[is_ver].mean():.4f}")
    print(f"  counts {stats}; removed {len(removed):,}; digest {digest(removed)}")


def main():
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output goes to a file
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--words", type=int, default=200)
    ap.add_argument("--subset", type=int, default=5_000, help="datasketch's share of the engine corpus")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cli-docs", default="10000,100000")
    ap.add_argument("--cli-repeat", type=int, default=2)
    ap.add_argument("--sections", default="engine,cli,fixed,accuracy")
    ap.add_argument("--baseline", help="folder with another revision's src/ and sql/, timed beside this one (cli, fixed)")
    ap.add_argument("--no-real", action="store_true", help="skip the alpaca_eval corpora")
    ap.add_argument("--real-planted", type=int, default=50_000, help="size of the real + planted corpus (0: none)")
    ap.add_argument("--threads", type=int, default=0, help="numba threads in this process (0: numba's default)")
    ap.add_argument("--peer", nargs=3, metavar=("PEER", "JSONL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer:
        return peer_main(*args.peer)
    sections = set(args.sections.split(","))
    if args.threads:
        __import__("numba").set_num_threads(args.threads)
    print(f"cores {os.cpu_count()}, load average {load_average()}; rensa {'yes' if _has('rensa') else 'MISSING'}, "
          f"datasketch {'yes' if _has('datasketch') else 'MISSING'}")
    if "fixed" in sections:
        fixed_section(args)
    texts, planted = synthetic(args.docs, args.words)
    real = [] if args.no_real else real_corpus()
    if "engine" in sections or "accuracy" in sections:
        from datamix.dedup.minhash import MinHashConfig, find_duplicates

        find_duplicates(texts[:50], np.zeros(50), MinHashConfig(method="minhash"))  # kernels loaded before any clock
    mixed = planted_real(real, args.real_planted) if real and args.real_planted else None
    if "engine" in sections:
        engine_section("synthetic", texts, args)
        if real:
            engine_section(f"alpaca_eval answers ({len(real):,})", real, args)
        if mixed:
            engine_section("alpaca_eval answers + planted near-copies", mixed[0], args)
    if "cli" in sections:
        sizes = [int(s) for s in args.cli_docs.split(",") if s]
        cli_section(lambda n: synthetic(n, args.words)[0], sizes, args)
    if "accuracy" in sections:
        accuracy_section("synthetic", texts, planted)
        if real:
            accuracy_section("alpaca_eval answers", real, [])
        if mixed:
            accuracy_section("alpaca_eval answers + planted near-copies", *mixed)
    print(f"\npeak RSS {rss_mib():,.0f} MiB")


if __name__ == "__main__":
    main()
