"""Out-of-core MinHash (datamix.dedup.ooc): the same decisions as the in-memory path."""

import os
import random

import duckdb
import numpy as np
import polars as pl
import pytest

from datamix.dedup import bands, ooc, sources
from datamix.dedup.minhash import MinHashConfig, find_duplicates


def _planted(n_base=2400, seed=0):
    """Random 60-word texts plus planted near-duplicates at several distances from the
    threshold (1, 2, 3 and 6 edited words: J ~ 0.84, ~0.70, ~0.58, ~0.4, so hybrid verification
    goes to exact Jaccard for some), exact copies and a boilerplate bucket larger than
    lsh.MAX_BUCKET (its star-and-chain edges)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(4000)]
    base = [[rng.choice(vocab) for _ in range(60)] for _ in range(n_base)]
    texts = [" ".join(b) for b in base]
    for i in range(600):
        w = list(base[rng.randrange(n_base)])
        for pos in rng.sample(range(60), rng.choice([1, 2, 2, 3, 6])):
            w[pos] = rng.choice(vocab)
        texts.append(" ".join(w))
    texts += [texts[rng.randrange(n_base)] for _ in range(200)]
    texts += ["the same boilerplate footer text of many pages " + ("x" if i % 2 else "y") for i in range(150)]
    order = list(range(len(texts)))
    rng.shuffle(order)  # duplicates before and after their originals
    return [texts[i] for i in order]


def _both(texts, cfg, priority=None, reference=None, tmp_path=None, budget=None):
    priority = np.arange(len(texts), dtype=float) if priority is None else priority
    mem_stats, ooc_stats = {}, {}
    in_memory = find_duplicates(texts, priority, cfg.model_copy(update={"out_of_core": False}),
                                reference=reference, stats=mem_stats)
    out = ooc.find_duplicates_ooc(ooc.SeriesSource(texts), priority, cfg, str(tmp_path), reference=reference,
                                  stats=ooc_stats, budget=budget)
    return in_memory, out, mem_stats, ooc_stats


@pytest.fixture
def small_blocks(monkeypatch):
    """Many signing chunks and verification blocks, as a large corpus would have (its signatures
    on disk, read back a block of pairs at a time)."""
    monkeypatch.setattr(ooc, "hold_signatures", lambda rows, cfg, budget: None)
    monkeypatch.setattr(ooc._Verifier, "BLOCK", 97)
    monkeypatch.setattr(ooc._Verifier, "TEXT_PAIRS", 41)
    monkeypatch.setattr(ooc._Verifier, "TEXT_DOCS", 53)
    monkeypatch.setattr(ooc.ShingleBags, "GATHER", 7)
    monkeypatch.setattr(ooc.ShingleBags, "SPAN_BYTES", 400)  # some gathers in one read, some a read each
    monkeypatch.setattr(ooc._SignatureRows, "GATHER", 31)
    monkeypatch.setattr(ooc, "SORTED_BATCH", 1000)  # buckets straddle batches


@pytest.mark.parametrize("verify", ["hybrid", "jaccard", "signature", "none"])
def test_same_removals_and_decisions_as_in_memory(tmp_path, small_blocks, verify):
    texts = _planted()
    cfg = MinHashConfig(method="minhash", threshold=0.7, verify=verify, chunk_size=700)
    in_memory, out, mem_stats, ooc_stats = _both(texts, cfg, tmp_path=tmp_path)
    assert len(in_memory) > 400  # the planted ones, found
    assert out.equals(in_memory)  # index, dup_of, ref_index, similarity: every value
    assert ooc_stats == mem_stats  # the same candidates, exact checks and verified pairs
    assert ooc_stats["candidate_pairs"] > 5 * 97  # several verification blocks
    if verify in ("hybrid", "jaccard"):
        assert ooc_stats["exact_pairs"] > 0
    assert len(bands.band_files(str(tmp_path), "docs")) == 5  # 3350 texts in chunks of 700


@pytest.mark.parametrize("verify", ["hybrid", "jaccard"])
def test_signatures_held_in_memory_decide_as_in_memory(tmp_path, verify):
    """Where the budget has room, the signatures are signed into one array and verification reads
    them in place: no signatures.npy, the same decisions."""
    texts = _planted()
    cfg = MinHashConfig(method="minhash", threshold=0.7, verify=verify, chunk_size=700)
    in_memory, out, mem_stats, ooc_stats = _both(texts, cfg, tmp_path=tmp_path)
    assert not os.path.exists(tmp_path / "signatures.npy")
    assert len(in_memory) > 400 and out.equals(in_memory)
    assert ooc_stats == mem_stats and ooc_stats["exact_pairs"] > 0


def test_signatures_are_held_only_where_the_budget_has_room():
    cfg = MinHashConfig(method="minhash")
    budget = ooc.Budget(limit=ooc.parse_size("2GB")).plan(1000)
    rest = budget.rest()
    held = ooc.hold_signatures(1000, cfg, budget)
    assert held is not None and held.shape == (1000, cfg.num_perm)
    assert budget.rest() == rest - 1000 * cfg.num_perm * 4  # charged for them
    too_many = int(ooc.HOLD_SHARE * budget.rest() // (cfg.num_perm * 4)) + 1
    assert ooc.hold_signatures(too_many, cfg, budget) is None


def test_keep_policy_and_reference_rows_out_of_core(tmp_path, small_blocks):
    texts = _planted(n_base=1200, seed=1)
    reference = [texts[i] for i in range(0, 300, 7)] + ["an unrelated reference row"]
    priority = -np.array([len(t) for t in texts], dtype=float)  # keep: longest
    cfg = MinHashConfig(method="minhash", chunk_size=500)
    in_memory, out, mem_stats, ooc_stats = _both(texts, cfg, priority, reference, tmp_path)
    assert out["ref_index"].null_count() < len(out)  # some contamination found
    assert out.equals(in_memory)
    assert ooc_stats == mem_stats


def test_out_of_core_option_routes_find_duplicates(monkeypatch):
    texts = _planted(n_base=300)
    called = []
    real = ooc.find_duplicates_ooc
    monkeypatch.setattr(ooc, "find_duplicates_ooc", lambda *a, **k: called.append(1) or real(*a, **k))
    priority = np.arange(len(texts), dtype=float)
    forced = find_duplicates(texts, priority, MinHashConfig(method="minhash", out_of_core=True))
    assert called and forced.equals(find_duplicates(texts, priority, MinHashConfig(method="minhash", out_of_core=False)))


def test_band_key_layout_on_disk(tmp_path, monkeypatch):
    """What other engines (Ray Data) rely on: (doc, band, key) per document and band, and the
    signatures file (written whenever they are not held in memory)."""
    monkeypatch.setattr(ooc, "hold_signatures", lambda rows, cfg, budget: None)
    texts = _planted(n_base=200)
    cfg = MinHashConfig(method="minhash", chunk_size=100)
    ooc.find_duplicates_ooc(ooc.SeriesSource(texts), np.zeros(len(texts)), cfg, str(tmp_path))
    nb, _ = cfg.band_rows()
    con = duckdb.connect()
    files = bands.band_files(str(tmp_path), "docs")
    schema = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [files]).fetchall()
    assert [(c[0], c[1]) for c in schema] == [("doc", "BIGINT"), ("band", "SMALLINT"), ("key", "UBIGINT")]
    rows, docs = con.execute("SELECT count(*), count(DISTINCT doc) FROM read_parquet(?)", [files]).fetchone()
    assert (rows, docs) == (len(texts) * nb, len(texts))
    per_doc = con.execute("SELECT min(c), max(c) FROM (SELECT count(DISTINCT band) c FROM read_parquet(?) "
                          "GROUP BY doc)", [files]).fetchone()
    assert per_doc == (nb, nb)
    sig = np.load(os.path.join(tmp_path, "signatures.npy"))
    assert sig.shape == (len(texts), cfg.num_perm)


def test_parquet_source_reads_batches_and_rows(tmp_path):
    texts = [f"text number {i}" for i in range(1000)]
    spill = ooc.SpilledTexts(str(tmp_path / "t.parquet"))
    for start in range(0, 1000, 300):
        spill.write(pl.Series(texts[start : start + 300]))
    src = spill.close()
    assert len(src) == 1000
    assert pl.concat(list(src.batches(128))).to_list() == texts
    rows = np.array([0, 5, 299, 300, 301, 998, 999])
    assert src.take(rows).to_list() == [texts[i] for i in rows]
    # what signing reads: the same texts as UTF-8 buffers, batch by batch
    decoded = [bytes(data[offsets[i] : offsets[i + 1]]).decode() for data, offsets in src.utf8_batches(128)
               for i in range(len(offsets) - 1)]
    assert decoded == texts


def test_parquet_source_is_signed_from_its_buffers_as_from_strings(tmp_path):
    texts = _planted(n_base=200) + ["caf\u00e9 na\u00efve \u00c9T\u00c9", None]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), tmp_path / "t.parquet", row_group_size=97)
    cfg = MinHashConfig(method="minhash", chunk_size=50)
    sig_path = tmp_path / "s.npy"
    with ooc._SignatureWriter(str(sig_path), len(texts), cfg.num_perm) as writer:
        ooc._sign(ooc.ParquetSource(str(tmp_path / "t.parquet")), "docs", cfg, str(tmp_path), 120, writer, None, {})
    from datamix.dedup.minhash import signatures

    expected = signatures(pl.Series([t or "" for t in texts]), cfg)
    assert np.array_equal(np.load(sig_path), expected)
    with ooc.HeldSignatures(len(texts), cfg.num_perm) as held:  # signed in place, chunk by chunk
        ooc._sign(ooc.ParquetSource(str(tmp_path / "t.parquet")), "docs", cfg, str(tmp_path), 120, held, None, {})
    assert np.array_equal(held.all, expected)


def test_memory_budget_parsing_and_the_auto_choice():
    assert ooc.parse_size("4GB") == 4 * 10**9 and ooc.parse_size("512 MiB") == 512 * 2**20
    with pytest.raises(ValueError, match="not a size; write e.g. 4GB"):
        ooc.parse_size("lots")
    cfg = MinHashConfig(method="minhash")
    budget = ooc.Budget(limit=4 * 10**9)
    assert not ooc.choose_out_of_core(cfg, 10_000, 6 * 10**6, budget)
    assert ooc.choose_out_of_core(cfg, 2_000_000, 12 * 10**8, budget)
    assert not ooc.choose_out_of_core(cfg.model_copy(update={"out_of_core": False}), 2_000_000, 12 * 10**8, budget)
    assert "out_of_core" not in cfg.model_dump()  # a run setting: not in what the fingerprint hashes


@pytest.mark.parametrize("texts", [["", "", "  "], ["", "", "  ", "a b c d e f g h", "a b c d e f g x"]])
def test_exact_jaccard_from_shingles_on_disk_with_empty_texts(tmp_path, small_blocks, texts):
    """Texts without a shingle among the exact checks (alone, the shingle file stays empty)."""
    cfg = MinHashConfig(method="minhash", threshold=0.5, verify="jaccard")
    in_memory, out, mem_stats, ooc_stats = _both(texts, cfg, tmp_path=tmp_path)
    assert len(out) >= 2 and out.equals(in_memory) and ooc_stats == mem_stats
    assert ooc_stats["exact_pairs"] > 0


@pytest.mark.parametrize("case", ["texts held, shingles in memory", "texts held then dropped, shingles on disk",
                                  "texts read again, shingles spilled midway"])
def test_parquet_source_with_texts_held_or_read_again_decides_as_in_memory(tmp_path, small_blocks, monkeypatch, case):
    """Texts kept from signing when the budget has room (sources.HeldTexts), else read from the
    file again; shingle hashes in memory or on disk: the same removal records either way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = _planted(n_base=1200, seed=3)
    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), tmp_path / "t.parquet", row_group_size=300)
    cfg = MinHashConfig(method="minhash", threshold=0.7, chunk_size=700)
    if case.startswith("texts held then dropped"):  # more text than the metadata said: given up midway
        monkeypatch.setattr(ooc, "HeldTexts", lambda cap: sources.HeldTexts(100_000))
    if case.startswith("texts read again"):
        monkeypatch.setattr(ooc, "HOLD_SHARE", 0.0)
    monkeypatch.setattr(ooc._Verifier, "BAGS_MEMORY", {"in memory": None, "on disk": 0,
                                                       "spilled midway": 60_000}[case.split("shingles ")[1]])
    seen = []
    real_shingles = ooc._Verifier.shingles
    monkeypatch.setattr(ooc._Verifier, "shingles", lambda self, rows, room=None: seen.append(self) or real_shingles(self, rows, room))
    logs, stats, mem_stats = [], {}, {}
    priority = np.arange(len(texts), dtype=float)
    out = ooc.find_duplicates_ooc(ooc.ParquetSource(str(tmp_path / "t.parquet")), priority, cfg,
                                  str(tmp_path / "work"), stats=stats, budget=ooc.Budget(limit=8 * 10**9),
                                  log=logs.append)
    in_memory = find_duplicates(texts, priority, cfg.model_copy(update={"out_of_core": False}), stats=mem_stats)
    assert len(in_memory) > 400 and out.equals(in_memory) and stats == mem_stats
    verifier = seen[0]
    held = case.startswith("texts held,")
    assert (verifier.held is not None) == held
    assert ("held from signing" in logs[0]) == (case != "texts read again, shingles spilled midway")  # the plan
    assert ("of them held for verification" in logs[1]) == held
    assert verifier.bags.on_disk == (case.split("shingles ")[1] != "in memory")


def test_parquet_source_reads_a_row_group_once_for_fetches_in_position_order(tmp_path):
    """Consecutive fetches share their boundary row group: `take` keeps the last one it read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"text number {i}" for i in range(1000)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "t.parquet", row_group_size=100)
    src = ooc.ParquetSource(str(tmp_path / "t.parquet"))
    reads = []
    real = src._file.read_row_group
    src._file.read_row_group = lambda g, **kw: reads.append(g) or real(g, **kw)
    wanted = np.arange(3, 1000, 7)
    fetched = [src.take(wanted[s : s + 20]) for s in range(0, len(wanted), 20)]  # 140 rows each: groups straddled
    assert pl.concat(fetched).to_list() == [texts[i] for i in wanted]
    assert reads == list(range(10))  # each group once
    src.release()
    assert src.take(np.array([999])).to_list() == [texts[999]] and reads[-1] == 9 and len(reads) == 11


def test_scattered_signature_rows_are_read_without_the_map(tmp_path):
    """Rows that each lie in a fault-around window of their own are read one by one (a fault would
    map the 64 KB around each); denser ones through the map; the rows are the file's either way."""
    sig = np.arange(3000 * 128, dtype=np.uint32).reshape(3000, 128)
    with ooc._SignatureWriter(str(tmp_path / "s.npy"), 3000, 128) as writer:
        writer.append(sig)
    reader = ooc._SignatureRows(str(tmp_path / "s.npy"))
    scattered, dense = np.arange(0, 3000, 200), np.arange(0, 3000, 3)  # 100 KB apart; 1.5 KB apart
    assert reader.scattered(scattered) and not reader.scattered(dense) and not reader.scattered(dense[:0])
    for rows in (scattered, dense, np.sort(np.random.default_rng(0).choice(3000, 500, replace=False))):
        assert np.array_equal(reader(rows), sig[rows])
    assert reader(dense[:0]).shape == (0, 128)
