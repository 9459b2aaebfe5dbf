"""``dcssa-rt query``: replay a strokes file stroke by stroke and print the ranking after each."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..contract.bundle import DEMO_WARNING
from ..progress import Progress
from ..session import DEFAULT_TOPK
from .console import fail_cleanly
from .options import bundle_option, gallery_option, output_options, runtime_options

STAGES = ("rasterise", "preprocess", "encode", "head", "search")


def _print_result(res, sketch_len: int, rank: int | None, gallery_len: int, target: str | None) -> None:
    t = res.timings
    split = "  ".join(f"{k} {t[k]:.1f}" for k in STAGES)
    extra = f"  target rank {rank}/{gallery_len}" if rank is not None else ""
    if res.confidence is not None:
        extra += f"  P(top1) {res.confidence['top1']:.2f}  P(top10) {res.confidence['top10']:.2f}"
    click.echo(f"stroke {res.stroke:3d}/{sketch_len}  [{split}  = {t['total']:.1f} ms]{extra}")
    for i, (pid, score) in enumerate(zip(res.ids, res.scores), 1):
        mark = " <- target" if pid == target else ""
        click.echo(f"    {i:2d}. {score:+.4f}  {pid}{mark}")


def _target_index(gallery, target: str | None) -> int | None:
    if target is None:
        return None
    if target not in gallery.ids:
        raise click.BadParameter(f"{target!r} is not an id of the gallery", param_hint="--target")
    return gallery.ids.index(target)


@click.command()
@click.argument("strokes", type=click.Path(path_type=Path))
@bundle_option()
@gallery_option
@click.option("--topk", type=click.IntRange(1), default=DEFAULT_TOPK, show_default=True)
@runtime_options()
@click.option("--target", default=None, help="A gallery id to follow: prints its rank after every stroke.")
@output_options(json="one object per stroke")
def query(strokes: Path, bundle: Path, gallery: Path, topk: int, backend: str, precision: str,
          threads: int | None, target: str | None, as_json: bool, quiet: bool) -> None:
    """Replay STROKES.json stroke by stroke and print the top-K photos after each stroke.

    STROKES.json: {"strokes": [[[x, y], ...], ...], "frame": [w, h]} or the QMUL
    {"points": [[x, y, pen_up], ...]} or QuickDraw {"drawing": [[[x...], [y...]], ...]} form.
    """
    import numpy as np

    from ..contract.bundle import Bundle
    from ..search.gallery import Gallery
    from ..session import Retriever
    from ..stroke.parse import load_strokes_file

    say = Progress(quiet or as_json)
    with fail_cleanly():
        b = Bundle.load(bundle)
        sketch = load_strokes_file(strokes)
        g = Gallery.load(gallery, b)
        target_idx = _target_index(g, target)
        r = Retriever(b, g, backend=backend, precision=precision, topk=topk, threads=threads)
        if b.demo:
            click.echo(DEMO_WARNING, err=True)
        say(f"backend {r.backend.name}, precision {precision}, {len(g)} photos, {len(sketch)} strokes")
        session = r.session()
        for stroke in sketch:
            res = session.add_stroke(stroke)
            rank = None
            if target_idx is not None:
                s = g.scores(res.embedding)
                rank = int(np.sum(s >= s[target_idx]))  # ties count against the target, as the reference's <=
            if as_json:
                click.echo(json.dumps({**res.to_dict(), **({} if rank is None else {"target_rank": rank})}))
            else:
                _print_result(res, len(sketch), rank, len(g), target)
