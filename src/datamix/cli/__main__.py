"""`python -m datamix.cli ...`, as the tests and torchrun-free subprocesses call it."""

from datamix.cli import entry

entry()
