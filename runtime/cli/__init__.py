"""``dcssa-rt``: the command line of the runtime (query, index, info, serve, eval, ...).

One module per subcommand; :mod:`.main` registers them on the group, :mod:`.options` holds the
option groups every command shares, :mod:`.console` what a command prints when it fails.
"""

from .main import COMMANDS, main

__all__ = ["main", "COMMANDS"]
