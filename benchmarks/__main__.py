"""``python -m dcssa.benchmarks``: the same as ``dcssa-bench`` (what ``dcssa-rt bench`` runs)."""

from dcssa.benchmarks.cli import main

if __name__ == "__main__":
    main(prog_name="dcssa-bench")
