"""MinHash on a real local Ray: the signatures, band-key files and candidate pairs are those of
the single-machine paths (minhash.signatures, bands.write_band_keys, lsh.candidate_pairs)."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

from datamix.dedup import bands as layout  # noqa: E402
from datamix.dedup.lsh import candidate_pairs as local_pairs  # noqa: E402
from datamix.dedup.minhash import MinHashConfig, signatures  # noqa: E402
from datamix.executors import RayExecutor  # noqa: E402
from datamix.executors.ray_minhash import candidate_pairs, sign  # noqa: E402

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def texts(n: int = 600) -> list[str]:
    """Distinct 40-word texts, every fifth followed by a copy with one word changed (J ~ 0.85),
    and five exact copies of the first."""
    rng = random.Random(7)
    words = [f"w{i}" for i in range(3000)]
    out = []
    while len(out) < n:
        t = [rng.choice(words) for _ in range(40)]
        out.append(" ".join(t))
        if len(out) % 5 == 0:
            t[rng.randrange(40)] = "changed"
            out.append(" ".join(t))
    return out[:n] + [out[0]] * 5  # a bucket of six in every band: the cap has work to do


def test_signatures_band_keys_and_candidate_pairs_on_ray_equal_one_machines(cluster, tmp_path):
    cfg = MinHashConfig(method="minhash", num_perm=64, threshold=0.7)
    docs = texts()
    spec = RayExecutor(type="ray", address=cluster, concurrency=2)
    parts = sign(pa.array(docs), cfg, str(tmp_path), chunk=128, spec=spec)
    assert [(p["first"], p["docs"]) for p in parts] == [(s, min(128, len(docs) - s)) for s in range(0, len(docs), 128)]
    expected = signatures(docs, cfg)
    assert np.array_equal(np.concatenate([np.load(p["sig"]) for p in parts]), expected)
    n_bands, rows = cfg.band_rows()
    for p in parts:  # each chunk's file is what the out-of-core path writes for it
        first, n = p["first"], p["docs"]
        assert pq.read_table(p["bands"]).equals(layout.band_table(expected[first:first + n], first, n_bands, rows))
    # a cap of 3 per bucket: the six copies' buckets keep their lowest documents, as on one machine
    left, right = candidate_pairs([p["bands"] for p in parts], max_bucket=3, spec=spec)
    want_left, want_right = local_pairs(expected, n_bands, rows, max_bucket=3)
    assert len(want_left) > 100  # the planted copies and chance collisions: real work for the shuffle
    assert np.array_equal(left, want_left) and np.array_equal(right, want_right)
    assert len(local_pairs(expected, n_bands, rows, max_bucket=64)[0]) > len(want_left)  # the cap did bite


def test_a_minhash_dedup_step_under_ray_signs_and_shuffles_there_and_decides_as_local(cluster, tmp_path):
    """load -> dedup (minhash) under executor ray: the same removals (removed, kept, similarity)
    and step records as under executor local, with the signing done by Ray tasks."""
    from datamix import runner, spec
    from datamix.store import Store
    from tests.helpers import chat, write_jsonl, write_pipeline

    docs = texts()
    write_jsonl(tmp_path / "data.jsonl", [chat(t, f"answer {i}") for i, t in enumerate(docs)])
    steps = [{"name": "src", "kind": "load", "path": "data.jsonl"},
             # chunks of 128: five chunks, two windows of signing tasks on the two-CPU cluster
             {"name": "dd", "kind": "dedup", "input": "src", "method": "minhash", "fields": ["instruction"],
              "num_perm": 64, "threshold": 0.7, "chunk_size": 128}]
    found = {}
    for name, executor in (("local", "local"), ("ray", {"type": "ray", "address": cluster})):
        log: list[str] = []
        p = spec.load(str(write_pipeline(tmp_path, steps, name=name, store=f"{name}.duckdb", executor=executor)))
        result = runner.run(p, p.store_path(), log=log.append)
        assert result.ok, result.error
        s = Store(str(tmp_path / f"{name}.duckdb"), read_only=True)
        try:
            found[name] = (
                s.con.execute("SELECT sample_id, kept, reason, score, related_id FROM dm.decisions "
                              "WHERE step = 'dd' ORDER BY ALL").fetchall(),
                s.con.execute("SELECT name, fingerprint, state, rows_in, rows_out FROM dm.steps "
                              "ORDER BY name").fetchall())
        finally:
            s.close()
        found[name + " log"] = "\n".join(log)
    assert len(found["local"][0]) > 100  # the planted near-copies (most pass the threshold) and the exact copies
    assert found["ray"] == found["local"]
    assert "signing and the band shuffle on Ray" in found["ray log"]
    assert "signed 5 chunks as Ray tasks" in found["ray log"]
    assert "Ray" not in found["local log"]


def test_a_parquet_source_is_read_by_the_tasks_and_signed_as_on_one_machine(cluster, tmp_path, monkeypatch):
    """Stages.sign on a Parquet file (what the dedup step spills its texts to): the tasks read
    their row groups themselves (the driver never reads the texts), and signatures.npy and the
    band-key files are those of the single-machine signing."""
    from datamix.dedup import ooc
    from datamix.dedup.sources import ParquetSource
    from datamix.executors.ray_minhash import Stages

    cfg = MinHashConfig(method="minhash", num_perm=64, threshold=0.7)
    docs = texts()
    path = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": docs}), path, row_group_size=100)  # 7 groups, the last of 5 rows
    source = ParquetSource(str(path))

    def no_reading(*args, **kwargs):
        raise AssertionError("the driver read the texts")

    monkeypatch.setattr(ParquetSource, "batches", no_reading)
    monkeypatch.setattr(ParquetSource, "utf8_batches", no_reading)
    stages = Stages(RayExecutor(type="ray", address=cluster, concurrency=2))
    folder = tmp_path / "work"
    folder.mkdir()
    with ooc._SignatureWriter(str(folder / "signatures.npy"), len(docs), cfg.num_perm) as writer:
        stages.sign(source, "docs", cfg, str(folder), 250, writer)
    assert stages.tasks == 3  # row groups 0-2, 3-5 (300 rows each: at least 250), and 6
    expected = signatures(docs, cfg)
    assert np.array_equal(np.load(folder / "signatures.npy"), expected)
    n_bands, rows = cfg.band_rows()
    files = layout.band_files(str(folder), "docs")
    assert len(files) == 3
    got = pa.concat_tables([pq.read_table(f) for f in files]).sort_by([("doc", "ascending"), ("band", "ascending")])
    want = layout.band_table(expected, 0, n_bands, rows).sort_by([("doc", "ascending"), ("band", "ascending")])
    assert got.equals(want)
