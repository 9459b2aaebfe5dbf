"""The FAISS index comparison script writes its JSON, Markdown and plot, with the exact search as reference."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("faiss", reason="the [faiss] extra is not installed")
pytest.importorskip("matplotlib")

from dcssa.benchmarks.search_scaling import main  # noqa: E402


def test_index_comparison_report(tmp_path, capsys):
    out = tmp_path / "idx"
    main(["--sizes", "3000", "--dim", "16", "--kinds", "flat,ivf", "--queries", "60", "--latency-queries", "20",
          "--out", str(out), "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == ["indexes.json", "indexes.md", "indexes.png"]
    rows = {r["index"]: r for r in rep["rows"]}
    assert set(rows) == {"exact (numpy)", "flat", "ivf"}
    assert rows["flat"]["recall_at_10"] == 1.0 and rows["flat"]["bytes_per_photo"] >= 16 * 4
    assert rows["ivf"]["factory"].startswith("IVF") and "nprobe" in rows["ivf"]["search_params"]
    assert 0 < rows["ivf"]["recall_at_10"] <= 1 and rows["ivf"]["p50_ms"] <= rows["ivf"]["p99_ms"]
    assert "| 3,000 | 16 | ivf |" in (out / "indexes.md").read_text()
    with pytest.raises(SystemExit):  # the folder exists: refused without --force, nothing overwritten
        main(["--sizes", "3000", "--dim", "16", "--kinds", "flat", "--out", str(out), "-q"])
