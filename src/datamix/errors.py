"""The two errors a step raises for the user to act on; the CLI maps them to exit statuses.

Their own module so that the store and the steps can both raise them without importing
each other (steps.base re-exports them: `from datamix.steps.base import BadInput` works).
"""


class StepError(Exception):
    """A step failed for a reason the user can act on (exit status 1)."""


class BadInput(Exception):
    """The input or spec is wrong (exit status 2). Say what, where, and what to do."""
