"""``dcssa-rt bench``: deprecated alias of ``dcssa-bench run`` (removed in 0.3).

The runtime imports none of the benchmarks (they need torch, FAISS, matplotlib; see ``.importlinter``),
so the alias runs ``python -m dcssa.benchmarks run ARGS...`` in a child process: every argument goes
through unparsed, the child's stdout and stderr are relayed as they come (progress bars included) to
click's streams, and the alias exits with the child's code. ``--help`` is the run command's help, at
the width this command would use, after one line naming the new command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from typing import IO, Any

import click

from .console import warn
from .options import bundle_option, compose, gallery_option, output_options, runtime_options

TARGET = "dcssa-bench run"
CHILD = (sys.executable, "-m", "dcssa.benchmarks", "run")
#: the width the child formats --help at (dcssa.benchmarks.cli reads it): this command's own
HELP_WIDTH_ENV = "DCSSA_HELP_WIDTH"
DEPRECATED = f"`dcssa-rt bench` is a deprecated alias of `{TARGET}` (the same options; removed in 0.3)"

#: the shared options of ``dcssa-bench run``, declared here only so that completion and the option
#: checks see them; the child parses every argument
SHARED = compose(bundle_option(), gallery_option, runtime_options(multiple=True),
                 output_options(json="bench.json", force="output folder"))


class Alias(click.Command):
    """A command that hands its arguments, unparsed, to ``dcssa-bench run`` in a child process."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.args = list(args)  # --help included: the child answers it
        return []

    def invoke(self, ctx: click.Context) -> Any:
        asks_help = any(a in ctx.help_option_names for a in ctx.args)
        if asks_help:
            click.echo(DEPRECATED + "\n")
        else:
            warn(DEPRECATED)
        ctx.exit(relay([*CHILD, *ctx.args], {**os.environ, HELP_WIDTH_ENV: str(_help_width(ctx))}))


def _help_width(ctx: click.Context) -> int:
    """The width click would format this command's help at (what ``make_formatter`` picks)."""
    if ctx.terminal_width is not None:
        return ctx.terminal_width
    return max(min(shutil.get_terminal_size().columns, ctx.max_content_width or 80) - 2, 50)


def _pump(pipe: IO[bytes], err: bool) -> None:
    """Copy the child's output to click's stream chunk by chunk as it arrives (a bar's \\r line too)."""
    with pipe:
        for chunk in iter(lambda: os.read(pipe.fileno(), 65536), b""):
            click.echo(chunk, nl=False, err=err)


def relay(cmd: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` (in ``env``, else this one) with its stdout and stderr relayed to click's; its exit
    code (128 + N if a signal N killed it)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    pumps = [threading.Thread(target=_pump, args=(pipe, err), daemon=True)
             for pipe, err in ((proc.stdout, False), (proc.stderr, True))]
    for t in pumps:
        t.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # the child got the same Ctrl-C: let it clean up and say so
        code = proc.wait()
    for t in pumps:
        t.join()
    return 128 - code if code < 0 else code


@click.command("bench", cls=Alias, add_help_option=False,
               short_help=f"Deprecated alias of `{TARGET}` (the per-stroke benchmark).")
@SHARED
def bench(**_shared: Any) -> None:
    """Deprecated alias of ``dcssa-bench run``: per-stroke latency against the PyTorch peers, phases,
    undo, cold start, memory and search scaling (``dcssa-rt bench --help`` shows its options)."""
