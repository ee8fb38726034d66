"""Start the training recipe: in this process for one rank, through torchrun for several."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence


def train_command(
    config_path: str | None, overrides: Sequence[str] = (), nproc_per_node: int = 1, extra_torchrun_args: Sequence[str] = (),
    log_file: str | None = None,
) -> int:
    """Run datamix.train.recipe with `config_path` and KEY=VALUE `overrides`; returns the exit status.

    nproc_per_node=1 and no torchrun args: the recipe runs in this process (a
    1-rank group). Otherwise `python -m torch.distributed.run --nproc-per-node N
    [extra_torchrun_args: --nnodes, --rdzv-endpoint, ...] -m datamix.train.recipe ...`.
    log_file: the recipe's printed lines (stdout and stderr) go there instead of the terminal.
    """
    args = ([config_path] if config_path else []) + list(overrides)
    with contextlib.ExitStack() as stack:
        out = None
        if log_file:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            out = stack.enter_context(open(log_file, "w"))
        if nproc_per_node <= 1 and not extra_torchrun_args and "RANK" not in os.environ:
            from datamix.train import recipe

            if out is not None:
                stack.enter_context(contextlib.redirect_stdout(out))
                stack.enter_context(contextlib.redirect_stderr(out))
            try:
                return recipe.main(args)
            except SystemExit as exit_:  # the recipe reports bad config as SystemExit(message)
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
                    return 2
                return int(exit_.code or 0)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc_per_node),
               *extra_torchrun_args, "-m", "datamix.train.recipe", *args]
        return subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT if out is not None else None)
