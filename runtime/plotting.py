"""Figures for the reports (eval, confidence, calibration curves, benchmarks): matplotlib is optional.

Drawn on bare Agg figures, never through pyplot, so a library call leaves matplotlib's global backend
and figure registry as it found them. Without matplotlib :func:`agg_figure` raises
:class:`~dcssa.runtime.errors.MissingExtra`; a report then says which plot it left out and why.
"""

from __future__ import annotations

from typing import Any

from .extras import require


def agg_figure(size: tuple[float, float], needed_for: str, *, layout: str | None = "constrained",
               dpi: float | None = None) -> Any:
    """A matplotlib ``Figure`` of ``size`` inches with an Agg canvas (``needed_for`` names the plot)."""
    require("matplotlib", needed_for)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout=layout, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig
