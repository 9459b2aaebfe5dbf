"""The ``dcssa-rt`` group: every subcommand registered the one way, from :data:`COMMANDS`.

Each subcommand is a standalone ``click.command`` in the module named for it, with the option groups
of :mod:`.options`. Heavy modules are imported when a command runs, so ``dcssa-rt --help`` needs
neither FastAPI nor matplotlib.
"""

from __future__ import annotations

import sys

import click

from .api_key import api_key
from .bench import bench
from .dataset import make_dataset
from .evaluate import calibrate_confidence_command, eval_command
from .index import index
from .info import info
from .query import query
from .serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dcssa-rt")
def main() -> None:
    """Serve exported DC-SSA bundles: per-stroke sketch retrieval over a photo catalogue."""


#: every ``dcssa-rt`` subcommand, registered the one way below
COMMANDS: tuple[click.Command, ...] = (query, index, info, make_dataset, bench, eval_command, calibrate_confidence_command,
                                       serve, api_key)
for _command in COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
