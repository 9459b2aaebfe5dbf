"""``dcssa-bench fit-embeddings``: fit the realistic embedding generator on what a bundle produces.

The real data: the gallery's photo embeddings, and every stroke prefix of the tracings beside the
photo folder pushed through the bundle's sketch encoder (and head), each with its target photo.
They are kept in ``--real-cache`` so the fit (seconds) can be redone without re-encoding (minutes).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from dcssa.benchmarks.embeddings import CLUSTERS, EmbeddingFit, completions_of, fit, fit_check, plot_fit_checks
from dcssa.runtime.cli.console import fail_cleanly
from dcssa.runtime.cli.options import output_options
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.progress import Progress, Say, silent

CHECK_PNG = "embedding-fit-check.png"


def collect(bundle_path: Path, photos: Path, gallery_path: Path, tracings: int, say: Say = silent) -> dict:
    """Real photo embeddings and partial-sketch queries (target row, completion) of one bundle."""
    from dcssa.runtime.backends import get_backend
    from dcssa.runtime.contract.bundle import Bundle
    from dcssa.runtime.indexing.queries import targeted_sketch_queries
    from dcssa.runtime.progress import Progress as Reporter
    from dcssa.runtime.search.gallery import Gallery

    bundle = Bundle.load(bundle_path)
    gallery = Gallery.load(gallery_path, bundle, load_index=False)
    found = targeted_sketch_queries(photos, bundle, get_backend("ort-cpu"), max_sketches=tracings,
                                    report=Reporter(False))
    if found is None:
        raise DcssaError("no tracings beside the photo folder", path=photos,
                         hint="use a `dcssa-rt make-dataset` photo folder (its DS_Coordinate file lies beside it)")
    queries, _, names = found
    rows = {Path(i).stem: r for r, i in enumerate(gallery.ids)}
    missing = sorted({n for n in names if n not in rows})
    if missing:
        raise DcssaError(f"{len(missing)} target photos are not in the gallery (e.g. {missing[0]})", path=gallery_path,
                         hint="index the same photo folder the tracings belong to")
    say(f"fit-embeddings: {len(gallery.ids)} photos, {len(queries)} partial sketches of {len(set(names))} tracings")
    return {"photos": np.asarray(gallery.embeddings, np.float32), "queries": queries,
            "target_rows": np.array([rows[n] for n in names], np.int64), "completions": completions_of(names)}


@click.command("fit-embeddings")
@click.option("--bundle", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="The bundle whose encoders produce the real embeddings (needed unless --real-cache exists).")
@click.option("--photos", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="A `dcssa-rt make-dataset` photo folder (tracings beside it).")
@click.option("--gallery", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Gallery folder [default: BUNDLE/gallery].")
@click.option("--tracings", type=click.IntRange(2), default=100, show_default=True, help="Tracings replayed.")
@click.option("--clusters", type=click.IntRange(1), default=CLUSTERS, show_default=True, help="k-means centres.")
@click.option("--name", required=True, help="What the fit is called in reports (e.g. dcssa-demo).")
@click.option("--real-cache", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The real embeddings (.npz): read if it exists, else collected and written.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The fit (.npz).")
@click.option("--check-dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help=f"Writes embedding-fit-check-DIM.json here and redraws {CHECK_PNG} from every check in it.")
@output_options(json="the fit check")
def command(bundle: Path | None, photos: Path | None, gallery: Path | None, tracings: int, clusters: int, name: str,
            real_cache: Path, out: Path, check_dir: Path, as_json: bool, quiet: bool) -> None:
    """Fit the realistic embedding generator (photos: k-means centres + residual spectrum; sketch
    queries: per-completion offsets from their target) and check it against the real data."""
    say = Progress(quiet or as_json)
    with fail_cleanly():
        if real_cache.is_file():
            with np.load(real_cache) as z:
                real = {k: z[k] for k in z.files}
        else:
            if bundle is None or photos is None:
                raise click.UsageError("--bundle and --photos are needed to collect the real embeddings")
            real = collect(bundle, photos, gallery or bundle / "gallery", tracings, say)
            real_cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(real_cache, **real)
        model = fit(real["photos"], real["queries"], real["target_rows"], real["completions"], clusters=clusters,
                    source={"name": name, "bundle": str(bundle) if bundle else None, "real_cache": str(real_cache)})
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save(out)
        check = fit_check(EmbeddingFit.load(out), real["photos"], real["queries"], real["target_rows"],
                          real["completions"])
        check_dir.mkdir(parents=True, exist_ok=True)
        (check_dir / f"embedding-fit-check-{model.dim}.json").write_text(json.dumps(check) + "\n")
        checks = [json.loads(p.read_text()) for p in sorted(check_dir.glob("embedding-fit-check-*.json"))]
        plot_fit_checks(sorted(checks, key=lambda c: c["dim"]), check_dir / CHECK_PNG)
    brief = {k: v for k, v in check.items() if k != "curves"}
    click.echo(json.dumps(brief, indent=2) if as_json else fit_check_markdown(brief))


def fit_check_markdown(check: dict) -> str:
    r, g = check["real"], check["generated"]
    lines = [f"Embedding fit {check['source'].get('name')} ({check['dim']}-d, {check['photos']} photos, "
             f"{check['queries']} partial sketches): generated vs real at the real size", "",
             "| | real | generated |", "|---|---|---|"]
    for key in ("dims_for_90pct_variance", "nn_distance_quantiles", "target_rank_quantiles", "target_in_top1",
                "target_in_top10"):
        lines.append(f"| {key} | {r[key]} | {g[key]} |")
    lines += ["", f"KS nearest-neighbour distance {check['ks_nn_distance']}, KS log target rank "
              f"{check['ks_log_target_rank']}, spectrum L1 {check['spectrum_l1']}", "",
              "| completion | queries | real in top 10 | generated in top 10 |", "|---|---|---|---|"]
    lines += [f"| {b['band']} | {b['queries']} | {b['real_in_top10']} | {b['generated_in_top10']} |"
              for b in check["by_completion"]]
    return "\n".join(lines) + "\n"
