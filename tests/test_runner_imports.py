"""A run imports only what its steps use: a load -> filter -> MinHash dedup run pays no import
of pandas (pyarrow's pa.array and to_numpy import it), torch, transformers, ray, openai or
scipy.linalg; `import datamix.cli` (every command's start, `--help` included) none of the
libraries a command imports when it needs them."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import chat, query, store_of, write_jsonl, write_pipeline

PROBE = """
import sys
from datamix.cli import main
try:
    main(["run", "-q", sys.argv[1]], standalone_mode=False)
finally:
    heavy = {"pandas", "torch", "transformers", "ray", "openai"}
    # scipy.linalg: numba's BLAS probe imported it (~0.15 s); the MinHash warm-up loads numba without
    print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m == "scipy.linalg"))
"""


def test_a_small_dedup_run_imports_nothing_heavy_it_does_not_use(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [chat("q", "one two three four five six seven"),
                                        chat("q", "one two three four five six seven!"),
                                        chat("q", "no")])
    pipeline = write_pipeline(tmp_path, [
        {"name": "src", "kind": "load", "path": "in.jsonl"},
        {"name": "clean", "kind": "filter", "input": "src",
         "rules": [{"rule": "length", "field": "response", "min": 3, "unit": "chars"}]},
        {"name": "near", "kind": "dedup", "input": "clean", "method": "minhash", "fields": ["response"]}])
    out = subprocess.run([sys.executable, "-c", PROBE, str(pipeline)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    # the run did its work: the filter dropped the short answer, dedup the near-copy
    dropped = query(store_of(pipeline), "SELECT step, reason FROM dm.decisions WHERE NOT kept ORDER BY step")
    assert dropped == [("clean", "length(response)"), ("near", "near_duplicate")]


CLI_IMPORTS = """
import sys
import datamix.cli
libraries = {"polars", "numpy", "numba", "pyarrow", "duckdb", "pydantic", "yaml", "rich", "jinja2", "scipy",
             "pandas", "torch", "transformers", "ray", "vllm", "openai"}
print(sorted({m.split(".")[0] for m in sys.modules} & libraries))
"""


def test_importing_the_cli_imports_none_of_the_libraries_the_commands_use():
    out = subprocess.run([sys.executable, "-c", CLI_IMPORTS], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
