"""The option groups every ``dcssa-rt`` and ``dcssa-export`` command shares: one name, one default,
one help wording each, so a flag means the same thing whichever command it is given to.

Only click and modules the package imports anyway are loaded here: registering the commands stays light.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..backends import backend_names, execution_precisions
from ..contract import manifest as mf
from ..contract.bundle import BUNDLE_ENV, DEFAULT_BUNDLE, default_bundle_path
from ..session import DEFAULT_BACKEND, DEFAULT_PRECISION

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

#: what `make demo` writes; `serve` falls back to it when no bundle is configured
DEMO_BUNDLE = Path("demo-out/bundle")
THREADS_HELP = "Intra-op threads (default: all cores)."
QUIET_HELP = "No progress or log lines on stderr (warnings and errors still appear)."


def compose(*decorators: Decorator) -> Decorator:
    """Apply ``decorators`` as if stacked in this order above a function (so --help lists them so)."""

    def apply(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


# -- bundle and gallery -----------------------------------------------------------------------------


def _resolve_bundle(demo_fallback: bool) -> Callable[[click.Context, click.Parameter, Path | None], Path]:
    def resolve(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path:
        if value is not None:
            return value
        path = default_bundle_path()  # $DCSSA_BUNDLE, else ./dcssa-bundle
        if (demo_fallback and path == Path(DEFAULT_BUNDLE) and not path.exists()
                and (DEMO_BUNDLE / mf.MANIFEST).is_file()):
            click.echo(f"note: no ./{DEFAULT_BUNDLE}; serving the demo catalogue of `make demo` ({DEMO_BUNDLE})",
                       err=True)
            return DEMO_BUNDLE
        return path

    return resolve


def bundle_option(*, demo_fallback: bool = False) -> Decorator:
    """``--bundle``, else $DCSSA_BUNDLE, else ./dcssa-bundle; ``demo_fallback``: else the `make demo` bundle."""
    demo = f", else {DEMO_BUNDLE} of `make demo`" if demo_fallback else ""
    return click.option(
        "--bundle", type=click.Path(path_type=Path), default=None, callback=_resolve_bundle(demo_fallback),
        help=f"Bundle folder [default: ${BUNDLE_ENV}, else ./{DEFAULT_BUNDLE}{demo}].",
    )


def default_gallery(bundle: Path) -> Path:
    """Where a bundle's gallery lives unless --gallery says otherwise."""
    return bundle / "gallery"


def gallery_option(f: F) -> F:
    """``--gallery``; the command receives BUNDLE/gallery when it is not given (needs :func:`bundle_option`)."""

    @functools.wraps(f)
    def with_gallery(*args: Any, bundle: Path, gallery: Path | None, **kwargs: Any) -> Any:
        return f(*args, bundle=bundle, gallery=gallery if gallery is not None else default_gallery(bundle), **kwargs)

    return click.option("--gallery", type=click.Path(path_type=Path), default=None,
                        help="Gallery folder [default: BUNDLE/gallery].")(with_gallery)  # type: ignore[return-value]


# -- runtime: backend, precision, threads -------------------------------------------------------------


def backend_choices() -> tuple[str, ...]:
    """What ``--backend`` accepts: ``auto`` and every name of the registry."""
    return ("auto", *backend_names())


def backend_option(*, multiple: bool = False) -> Decorator:
    """``--backend NAME``, checked against the registry (a wrong name lists the right ones)."""
    names = ", ".join(backend_names())
    if multiple:
        return click.option("--backend", "backends", type=click.Choice(backend_choices()), multiple=True,
                            metavar="NAME", help=f"Backend to measure, repeatable: {names} "
                            "[default: every one available here].")
    return click.option("--backend", type=click.Choice(backend_choices()), default=DEFAULT_BACKEND, show_default=True,
                        metavar="NAME", help=f"Backend: {names}, or auto (the fastest available here).")


def _execution_modes() -> str:
    modes: dict[str, list[str]] = {}
    for name in backend_names():
        for precision in execution_precisions(name):
            modes.setdefault(precision, []).append(name)
    return "; ".join(f"{p} ({', '.join(names)})" for p, names in modes.items())


def precision_option(*, multiple: bool = False) -> Decorator:
    """``--precision``: a graph precision of the bundle or a backend's execution mode."""
    what = f"Graph precision present in the bundle (see `dcssa-rt info`), or an execution mode: {_execution_modes()}."
    if multiple:
        return click.option("--precision", "precisions", multiple=True,
                            help=f"{what} Repeatable [default: every graph precision in the bundle].")
    return click.option("--precision", default=DEFAULT_PRECISION, show_default=True, help=what)


def threads_option() -> Decorator:
    return click.option("--threads", type=int, default=None, help=THREADS_HELP)


def _to_env(var: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def store(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            os.environ[var] = value  # read by the backend wherever it is built (sessions, serve's replicas)

    return store


def triton_options() -> Decorator:
    """``--triton-url`` and ``--triton-prefix`` of ``--backend triton`` (they set $DCSSA_TRITON_URL / _PREFIX)."""
    from ..backends.triton import DEFAULT_URL, PREFIX_ENV, URL_ENV

    return compose(
        click.option("--triton-url", default=None, expose_value=False, callback=_to_env(URL_ENV), metavar="URL",
                     help=f"--backend triton: the server, HOST:PORT or grpc://HOST:PORT (gRPC) or http://HOST:PORT "
                     f"[default: ${URL_ENV}, else {DEFAULT_URL}]."),
        click.option("--triton-prefix", default=None, expose_value=False, callback=_to_env(PREFIX_ENV),
                     metavar="PREFIX", help=f"--backend triton: model-name prefix given to `dcssa-export triton "
                     f"--name-prefix` [default: ${PREFIX_ENV}, else none]."),
    )


def runtime_options(*, precision: bool = True, multiple: bool = False) -> Decorator:
    """``--backend``, ``--precision`` (unless the command runs only fp32 graphs), ``--threads`` and the
    Triton server options."""
    precision_opts = [precision_option(multiple=multiple)] if precision else []
    return compose(backend_option(multiple=multiple), *precision_opts, threads_option(), triton_options())


# -- output: --json, -q, --force -----------------------------------------------------------------------


def output_options(*, json: str | None = None, quiet: bool = True, force: str | None = None) -> Decorator:
    """``--json`` (printing ``json`` on stdout), ``-q/--quiet`` and ``--force`` (replacing ``force``).

    The command receives ``as_json``, ``quiet`` and ``force``; --json implies -q, so stdout holds only JSON.
    """
    opts = []
    if json is not None:
        opts.append(click.option("--json", "as_json", is_flag=True,
                                 help=f"Print {json} as JSON on stdout (implies -q)."))
    if quiet:
        opts.append(click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP))
    if force is not None:
        opts.append(click.option("--force", is_flag=True, help=f"Replace an existing {force}."))
    return compose(*opts)
