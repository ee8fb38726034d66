"""The `datamix` command: parses arguments, delegates, prints. No logic here.

running.py: run, validate, plan. inspecting.py: status, sql, show, lineage, report.
tools.py: models tiny, template, eval, train.

Exit status: 0 success, 1 a step or run failed, 2 bad spec or bad input.
Heavy modules are imported inside the commands so `datamix --help` is instant.
"""

from datamix.cli.common import main

# the commands, one module per group of them; importing them registers them on `main`
from datamix.cli import inspecting, running, tools  # noqa: F401

__all__ = ["main"]

if __name__ == "__main__":
    main()
