"""The `datamix` command: parses arguments, delegates, prints. No logic here.

running.py: run, validate, plan. inspecting.py: status, sql, show, lineage, report.
tools.py: models tiny, template, eval, train.

Exit status: 0 success, 1 a step or run failed, 2 bad spec or bad input.
Heavy modules are imported inside the commands so `datamix --help` is instant.
"""

import gc

from datamix.cli.common import main

# the commands, one module per group of them; importing them registers them on `main`
from datamix.cli import inspecting, running, tools  # noqa: F401

__all__ = ["entry", "main"]


def entry() -> None:
    """The `datamix` program (console script and `python -m datamix.cli`): `main`, then a quick exit.

    Python collects garbage over every object again while it shuts down; with numba's compiler
    loaded (a MinHash step) that took ~0.2 s of every run's exit. Once the command is done,
    what exists is frozen out of those collections (gc.freeze); exit handlers (atexit, temporary
    directories, closing files) run as before. `main` itself, as tests invoke it in process,
    freezes nothing."""
    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    entry()
