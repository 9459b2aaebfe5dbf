"""``dcssa-bench`` (also ``python -m dcssa.benchmarks``): every benchmark harness as a subcommand.

Each subcommand is the ``command`` of the harness module it runs, with the option groups of
:mod:`dcssa.runtime.cli.options`, so ``--bundle``, ``--gallery``, ``--backend``, ``--threads``,
``--json``, ``-q`` and ``--force`` mean the same here as on ``dcssa-rt`` and ``dcssa-export``. The
harness modules import their heavy libraries (torch, FAISS, NNCF, httpx) only when they run.

``dcssa-rt bench`` is ``dcssa-bench run`` in a child process (the runtime never imports this package);
it sets ``$DCSSA_HELP_WIDTH`` (:data:`~dcssa.runtime.cli.bench.HELP_WIDTH_ENV`) to the width it would
format its own help at, so ours matches.
"""

from __future__ import annotations

import os

import click

from dcssa.benchmarks import (
    abuse,
    arnet_precision,
    capacity,
    fit_embeddings,
    gpu_check,
    load_test,
    openvino_fastpath,
    ptq_compare,
    redis_capacity,
    run,
    scale_out,
    search_scaling,
    session_fidelity,
    soak,
)
from dcssa.runtime.cli.bench import HELP_WIDTH_ENV


def _help_width() -> int | None:
    """The width --help is formatted at, in columns (None: click's own choice)."""
    value = os.environ.get(HELP_WIDTH_ENV, "")
    return int(value) if value.isdigit() else None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "terminal_width": _help_width()})
@click.version_option(package_name="dcssa-rt")
def main() -> None:
    """Benchmarks of dcssa-rt: per-stroke latency against the PyTorch peers, search and FAISS index
    scaling, the serving load tests and soak, the Intel fast path, INT8 tools side by side, and the GPU check."""


#: every ``dcssa-bench`` subcommand, registered the one way below
COMMANDS: tuple[click.Command, ...] = (run.command, search_scaling.command, load_test.command, scale_out.command,
                                       openvino_fastpath.command, ptq_compare.command, gpu_check.command,
                                       abuse.command, soak.command, redis_capacity.command,
                                       session_fidelity.command, capacity.command,
                                       arnet_precision.command, fit_embeddings.command)
for _command in COMMANDS:
    main.add_command(_command)
