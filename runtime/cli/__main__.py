"""``python -m dcssa.runtime.cli``: the same as ``dcssa-rt``."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
