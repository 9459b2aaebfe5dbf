"""The FAISS index comparison script writes its JSON, Markdown and plot, with the exact search as reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss", reason="the [faiss] extra is not installed")
pytest.importorskip("matplotlib")

from dcssa.benchmarks.cli import main as bench  # noqa: E402


def main(args: list[str]) -> None:
    """``dcssa-bench search-scaling ARGS`` in this process: returns when it succeeds, a failure exits."""
    bench.main(["search-scaling", *args], standalone_mode=False)


def test_index_comparison_report(tmp_path, capsys):
    out = tmp_path / "idx"
    main(["--sizes", "3000", "--dim", "16", "--data", "isotropic", "--kinds", "flat,ivf", "--queries", "60",
          "--eval-queries", "80", "--latency-queries", "20", "--out", str(out), "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == ["indexes.json", "indexes.md", "indexes.png"]
    rows = {r["index"]: r for r in rep["rows"]}
    assert set(rows) == {"exact (numpy)", "flat", "ivf"}
    assert rows["flat"]["recall_at_10"] == 1.0 and rows["flat"]["bytes_per_photo"] >= 16 * 4
    assert rows["ivf"]["factory"].startswith("IVF") and "nprobe" in rows["ivf"]["search_params"]
    assert 0 < rows["ivf"]["recall_at_10"] <= 1 and rows["ivf"]["p50_ms"] <= rows["ivf"]["p99_ms"]
    assert "| isotropic | 3,000 | 16 | ivf |" in (out / "indexes.md").read_text()
    # isotropic queries are their target turned to cosine 0.9: the exact top 10 holds nearly all of them
    assert rows["exact (numpy)"]["exact_target_in_top10"] > 0.9 and rows["flat"]["target_kept"] == 1.0
    assert rows["ivf"]["target_held"] == rows["exact (numpy)"]["target_held"] and rows["ivf"]["peak_rss_mb"] > 0
    assert 0 < rows["ivf"]["peak_anon_mb"] <= rows["ivf"]["peak_rss_mb"]  # the mapped catalogue pages come on top
    assert rep["complete"] is True and not list(tmp_path.glob("*.partial.*"))  # the finished folder replaced them
    with pytest.raises(SystemExit):  # the folder exists: refused without --force, nothing overwritten
        main(["--sizes", "3000", "--dim", "16", "--data", "isotropic", "--kinds", "flat", "--out", str(out), "-q"])


def test_stopped_run_keeps_the_rows_it_measured(tmp_path):
    """A run that fails at its third index leaves the exact and flat rows in OUT.partial.json (and no OUT)."""
    out = tmp_path / "idx"
    with pytest.raises(SystemExit):  # "IVF5000" is no index_factory string: a clear error, exit != 0
        main(["--sizes", "800", "--dim", "8", "--data", "isotropic", "--kinds", "flat,IVF5000", "--queries", "30",
              "--eval-queries", "30", "--latency-queries", "5", "--out", str(out), "-q"])
    assert not out.exists()
    rep = json.loads((tmp_path / "idx.partial.json").read_text())
    assert rep["complete"] is False
    assert [r["index"] for r in rep["rows"]] == ["exact (numpy)", "flat"]
    assert rep["rows"][1]["recall_at_10"] == 1.0
    assert (tmp_path / "idx.partial.md").read_text().startswith("**Partial**")


def test_shared_exact_reference_gives_the_same_recall():
    """build_index with a precomputed truth measures what it measures when it computes the truth itself."""
    from dcssa.benchmarks.search_scaling import random_unit_vectors
    from dcssa.runtime.indexing.faiss_build import IndexSpec, build_index, exact_topk_labels, heldout_queries

    emb = random_unit_vectors(4000, 16, seed=3)
    labels = np.arange(len(emb), dtype=np.int64) * 7 + 100  # labels that are not row numbers
    q = heldout_queries(emb, 80, seed=4)
    truth = exact_topk_labels(emb, labels, q)
    own = build_index(emb, labels, IndexSpec.parse("ivf", nprobe=2), queries=q)
    shared = build_index(emb, labels, IndexSpec.parse("ivf", nprobe=2), queries=q, truth=truth)
    assert shared.info["recall_at_10"] == own.info["recall_at_10"] < 1.0
    with pytest.raises(ValueError, match="rows"):
        build_index(emb, labels, IndexSpec.parse("flat"), queries=q, truth=truth[:10])


def test_realistic_rows_come_from_the_fit_and_reuse_the_cache(tmp_path, capsys):
    """Realistic data from a fit made here; the cached catalogue is reused (same exact reference) by a rerun."""
    from dcssa.benchmarks.embeddings import fit

    rng = np.random.default_rng(0)
    photos = rng.normal(size=(600, 16)) * np.linspace(2, 0.1, 16)
    photos /= np.linalg.norm(photos, axis=1, keepdims=True)
    targets = rng.integers(600, size=300)
    comp = rng.choice([0.25, 0.5, 1.0], size=300)
    queries = 0.9 * photos[targets] + 0.1 * rng.normal(size=(300, 16)) / 4
    fit(photos, queries, targets, comp, clusters=4, source={"name": "made-here"}).save(tmp_path / "fit.npz")
    args = ["--sizes", "2000", "--dim", "16", "--fit", str(tmp_path / "fit.npz"), "--kinds", "ivf-sq8:nlist=16",
            "--queries", "50", "--eval-queries", "60", "--latency-queries", "5", "--cache", str(tmp_path / "cache"),
            "--json"]
    main([*args, "--out", str(tmp_path / "a")])
    first = json.loads(capsys.readouterr().out)
    main([*args, "--out", str(tmp_path / "b")])
    second = json.loads(capsys.readouterr().out)
    assert [r["data"] for r in first["rows"]] == ["realistic", "realistic"] and "made-here" in first["config"]["fits"]
    assert first["rows"][0]["exact_target_in_top10"] == second["rows"][0]["exact_target_in_top10"]
    assert first["rows"][1]["factory"] == "IVF16,SQ8" and first["rows"][1]["objective"] == "target_kept"
    assert (tmp_path / "a" / "embedding-fit-16.json").is_file()
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_streamed_exact_reference_equals_a_full_sort():
    from dcssa.benchmarks.search_indexes import exact_top10

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 16)).astype(np.float32)
    q = rng.normal(size=(30, 16)).astype(np.float32)
    want = np.argsort(-(q.astype(np.float64) @ x.T.astype(np.float64)), axis=1, kind="stable")[:, :10]
    assert np.array_equal(exact_top10(x, q, chunk=100), want)  # 7 pieces of 3200 rows, merged


def test_held_queries_by_rejection_equal_a_full_scan_of_every_candidate():
    """The staged rejection rules out only candidates a full scan would rule out too (it is exact):
    with the same draws, early cuts after 300 and 3000 rows keep exactly the queries no cut keeps, and
    each kept query's photo is in its float64 top 10."""
    from dcssa.benchmarks.search_indexes import held_queries

    rng = np.random.default_rng(5)
    # photos crowded round one direction: a photo turned to cosine 0.9 often has 10 others above it
    emb = rng.normal(size=(12000, 16)).astype(np.float32) * np.linspace(0.4, 0.05, 16).astype(np.float32)
    emb[:, 0] += 1
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    staged = held_queries("isotropic", emb, 150, None, np.random.default_rng(1), batch=400, stages=(300, 3000))
    full = held_queries("isotropic", emb, 150, None, np.random.default_rng(1), batch=400, stages=())
    assert len(staged["targets"]) == 150 and int(staged["drawn"]) > int(staged["found"]) >= 150  # some were not held
    for key in ("queries", "targets", "truth", "drawn", "found"):
        assert np.array_equal(staged[key], full[key]), key
    scores = staged["queries"].astype(np.float64) @ emb.T.astype(np.float64)
    want = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    assert (want == staged["targets"][:, None]).any(1).all()
    assert np.array_equal(np.sort(staged["truth"], 1), np.sort(want, 1))


def test_both_exact_scans_agree(monkeypatch):
    """The threshold scan (few queries) and FAISS's brute force (many) give one answer, merged over a
    scan in two parts, with ties going to the lower row."""
    from dcssa.benchmarks import search_indexes as si

    rng = np.random.default_rng(2)
    x = rng.normal(size=(5000, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[4000] = x[10]  # a tie: row 10 must win it
    q = rng.normal(size=(40, 8)).astype(np.float32)
    q[0] = x[10]
    want = np.argsort(-(q.astype(np.float64) @ x.T.astype(np.float64)), axis=1, kind="stable")[:, :11]
    few = si.scan_topk(x, q, 11, 0, 2500, chunk=700)
    few = si.scan_topk(x, q, 11, 2500, None, few, chunk=700)
    monkeypatch.setattr(si, "MANY_QUERIES", 10)
    many = si.scan_topk(x, q, 11, chunk=900)
    assert np.array_equal(few[1], want) and np.array_equal(many[1], want)
    assert many[1][0, 0] == 10 and 4000 in many[1][0]
