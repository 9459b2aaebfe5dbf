"""`dcssa-rt eval`: metric maths against hand-computed cases and a literal re-implementation of the
published evaluation code, the two protocols against the PyTorch reference model, the report files,
and every malformed dataset a user can hand it."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from dcssa.runtime import Bundle
from dcssa.runtime.cli import evaluate as ecli
from dcssa.runtime.cli import main as rt
from dcssa.runtime.data.qmul import DatasetError, load_coordinates, load_split
from dcssa.runtime.evaluation import metrics as M
from dcssa.runtime.evaluation.protocols import PROTOCOLS, STEP_KINDS, completion, points20_marks
from dcssa.runtime.stroke.parse import points_to_strokes, strokes_to_points
from dcssa.runtime.stroke.pipeline import PhotoPipeline, SketchPipeline
from dcssa.runtime.stroke.raster import rasterize, rasterize_steps


def run(*args):
    return CliRunner().invoke(rt, [str(a) for a in args])


# ------------------------------------------------------------------------------------------------
# metric maths
# ------------------------------------------------------------------------------------------------

# four unit photos in 2-D; photo 2 is an exact copy of photo 0
PHOTOS = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], np.float32)


@pytest.mark.parametrize(
    "query, target, rank",
    [
        ([1, 0], 0, 2),  # distance 0, but its twin (photo 2) ties: a tie counts against the query
        ([1, 0], 2, 2),
        ([1, 0], 3, 3),  # 0, 0 and 0.894 are <= 0.894
        ([1, 0], 1, 4),  # the farthest photo
        ([0, 1], 1, 1),  # strictly the closest
        ([0, 1], 3, 2),  # 0.632: only photo 1 (0) is closer
        ([0, 1], 0, 4),  # sqrt(2) for photos 0 and 2: both count
    ],
)
def test_rank_by_hand_with_ties(query, target, rank):
    assert M.rank_from_distances(M.distances(np.array(query, np.float32), PHOTOS), target) == rank


def test_step_ranks_and_distances_follow_the_reference():
    emb = np.array([[1, 0], [0, 1], [0.8, 0.6]], np.float32)
    assert M.step_ranks(emb, PHOTOS, 3).tolist() == [3, 2, 1]
    # distances are torch's pairwise_distance (it adds eps to the difference), in float32
    q = torch.tensor([0.8, 0.6])
    want = F.pairwise_distance(q.unsqueeze(0), torch.from_numpy(PHOTOS)).numpy()
    got = M.distances(q.numpy(), PHOTOS)
    assert got.dtype == np.float32 and np.allclose(got, want, rtol=0, atol=1e-7)


def test_summary_by_hand():
    # gallery of 5; sketch A ranks 3 then 1, sketch B ranks 5, 2, 2
    got = M.summarize([np.array([3, 1]), np.array([5, 2, 2])], 5)
    e = math.e
    w2 = [math.exp(1 - 1 / 2) / e, math.exp(1 - 2 / 2) / e]
    w3 = [math.exp(1 - k / 3) / e for k in (1, 2, 3)]
    pa, pb = [0.5, 1.0], [0.0, 0.75, 0.75]
    ia, ib = [1 / 3, 1.0], [1 / 5, 1 / 2, 1 / 2]
    want = {
        "acc@1": 0.5, "acc@5": 1.0, "acc@10": 1.0,
        "m@A": (0.75 + 0.5) / 2,
        "m@B": ((1 / 3 + 1) / 2 + 1.2 / 3) / 2,
        "wm@A": (sum(w * p for w, p in zip(w2, pa)) / 2 + sum(w * p for w, p in zip(w3, pb)) / 3) / 2,
        "wm@B": (sum(w * p for w, p in zip(w2, ia)) / 2 + sum(w * p for w, p in zip(w3, ib)) / 3) / 2,
    }
    assert got == pytest.approx(want, rel=1e-12)


def _published_literal(rank_lists, n):
    """The authors' evaluate_model metric code, re-written from SPEC section 5 as plain loops."""
    num_steps = len(rank_lists[0])
    rank_all = np.zeros((len(rank_lists), num_steps), np.float32)
    factor = np.exp(1 - np.linspace(1, num_steps, num_steps) / num_steps) / np.e
    area, area_pct, our_a, our_b = [], [], [], []
    weighted_a, weighted_b = [], []  # never reset: the quirk
    for i, ranks in enumerate(rank_lists):
        inv, pct_list = [], []
        for t, r in enumerate(ranks):
            rank_all[i, t] = r  # IndexError when a sketch is longer than the first
            pct = float(np.float32((np.float32(n) - rank_all[i, t]) / np.float32(n - 1)))
            if r == 0:
                inv.append(1.0)
            else:
                inv.append(1 / float(r))
                pct_list.append(pct)
                weighted_b.append(1 / float(r) * factor[t])
                weighted_a.append(pct * factor[t])
        area.append(np.sum(inv) / len(inv))
        area_pct.append(np.sum(pct_list) / len(pct_list))
        our_b.append(np.sum(weighted_b) / len(weighted_b))
        our_a.append(np.sum(weighted_a) / len(weighted_a))
    out = {f"acc@{k}": float(np.sum(rank_all[:, -1] <= k) / len(rank_lists)) for k in (1, 5, 10)}
    out.update({"m@A": np.mean(area_pct), "m@B": np.mean(area), "wm@A": np.mean(our_a), "wm@B": np.mean(our_b)})
    return out


@pytest.mark.parametrize("case", ["equal", "shorter", "mixed"])
def test_published_metrics_equal_a_literal_reimplementation(case):
    rng = np.random.default_rng({"equal": 0, "shorter": 1, "mixed": 2}[case])
    n = 37
    lengths = {"equal": [21] * 9, "shorter": [21, 21, 13, 21, 5, 21], "mixed": [8, 3, 8, 8, 1, 6, 8]}[case]
    ranks = [rng.integers(1, n + 1, t) for t in lengths]
    got, notes = M.summarize_published(ranks, n)
    want = _published_literal(ranks, n)
    assert got == pytest.approx(want, rel=1e-9)
    assert bool(notes) == (case != "equal")
    # the quirks matter: the running averages differ from the corrected per-sketch ones
    fixed = M.summarize(ranks, n)
    assert fixed["m@A"] == pytest.approx(got["m@A"], rel=1e-6) and fixed["m@B"] == pytest.approx(got["m@B"])
    assert abs(fixed["wm@A"] - got["wm@A"]) > 1e-4
    if case == "shorter":  # shorter sketches count as hits in the published acc@1
        assert got["acc@1"] > fixed["acc@1"]


def test_published_rank_zero_and_longer_sketch():
    ranks = [np.array([2, 0, 1]), np.array([0, 0, 0]), np.array([4, 4, 1])]
    with np.errstate(invalid="ignore", divide="ignore"):
        want = _published_literal(ranks, 4)
    got, _ = M.summarize_published(ranks, 4)
    for k, v in want.items():
        assert (math.isnan(v) and math.isnan(got[k])) or got[k] == pytest.approx(v, rel=1e-9), k
    values, notes = M.summarize_published([np.array([1, 2]), np.array([1, 2, 3])], 4)
    with pytest.raises(IndexError):
        _published_literal([np.array([1, 2]), np.array([1, 2, 3])], 4)
    assert all(v is None for v in values.values()) and "IndexError" in notes[0]


def test_progress_curve_and_agreement_by_hand():
    ranks = [np.array([4, 2, 1]), np.array([3, 1])]
    comp = [np.array([0.2, 0.5, 1.0]), np.array([0.6, 1.0])]
    c = M.progress_curve(ranks, comp, 5, grid=np.array([0.1, 0.2, 0.55, 0.6, 1.0]))
    assert c["sketches"] == [0, 1, 1, 2, 2]
    assert c["mean_inverse_rank"][0] is None and c["mean_percentile"][0] is None
    assert c["mean_inverse_rank"][1:] == pytest.approx([1 / 4, 1 / 2, (1 / 2 + 1 / 3) / 2, 1.0])
    assert c["mean_percentile"][1:] == pytest.approx([1 / 4, 3 / 4, (3 / 4 + 2 / 4) / 2, 1.0])
    a = M.agreement([np.array([[0, 1, 2], [3, 4, 5]])], [np.array([[0, 2, 9], [4, 3, 5]])])
    assert a == pytest.approx({"top1_identical": 0.5, "topk_overlap": (2 / 3 + 1) / 2})


def test_step_slicing_matches_the_rasteriser():
    pts = strokes_to_points([np.array([[10.0, 10], [50, 60], [90, 20]]), np.array([[30.0, 200], [200, 30]])] * 9)
    n = len(pts)
    marks = points20_marks(n)
    rasters = rasterize_steps(pts, 20)
    assert len(rasters) == len(marks) + 1
    for i, raster in zip(marks, rasters):  # raster k is the sketch drawn up to point marks[k]
        assert np.array_equal(raster, rasterize(pts[: i + 1]))
    assert np.allclose(completion(pts, "points20"), [(i + 1) / n for i in marks] + [1.0])
    assert np.allclose(completion(pts, "strokes"), np.cumsum([3, 2] * 9) / n)


# ------------------------------------------------------------------------------------------------
# the QMUL layout and malformed datasets
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    from dcssa.runtime.data.datasets import write_dataset

    return write_dataset(tmp_path_factory.mktemp("evaldata"), photos=6, test_share=1.0, seed=5)


def _copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    root = dst / src.name
    shutil.copytree(src, root)
    return root


def _coords(root: Path) -> dict:
    with open(root / f"{root.name}_Coordinate", "rb") as f:
        return pickle.load(f)


def _write_coords(root: Path, obj, protocol: int = 4) -> None:
    with open(root / f"{root.name}_Coordinate", "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_coordinate_pickles_of_every_protocol_load(small_dataset, tmp_path, protocol):
    root = _copy_dataset(small_dataset, tmp_path)
    coords = _coords(root)
    coords["/train/shape0004_2"] = np.arange(9, dtype=np.float64).reshape(3, 3)  # float64, train keys
    coords["/train/shape0001_2"] = coords["/test/shape0001_1"].astype(np.float64)
    _write_coords(root, coords, protocol)
    split = load_split(root)
    assert [s.key for s in split.sketches] == [k for k in coords if "test" in k]
    assert split.photos == [f"shape{i:04d}" for i in range(6)]
    for s in split.sketches:
        assert np.array_equal(s.points, coords[s.key])
    train = load_split(root, "train")
    assert [s.key for s in train.sketches] == ["/train/shape0004_2", "/train/shape0001_2"]
    assert train.photos == ["shape0004", "shape0001"]
    assert len(load_split(root, limit=2).sketches) == 2 and len(load_split(root, limit=2).photos) == 6


class _Evil:
    """Unpickling this calls Path.touch(flag): a stand-in for arbitrary code in a shared pickle."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (self.flag,))


def test_malicious_or_broken_pickle_is_refused_without_running_it(tmp_path):
    flag = tmp_path / "pwned"
    cfile = tmp_path / "DS_Coordinate"
    evil = pickle.dumps({"/test/a_1": _Evil(flag)}, protocol=4)
    cfile.write_bytes(evil)
    with pytest.raises(DatasetError, match="refusing to import pathlib") as exc:
        load_coordinates(cfile)
    assert exc.value.path == str(cfile) and not flag.exists()
    cfile.write_bytes(pickle.dumps({"/test/a_1": np.zeros((2, 3))})[:-1] + b"X")
    with pytest.raises(DatasetError, match="not a readable pickle"):
        load_coordinates(cfile)
    pickle.loads(evil)  # the payload is live: the plain unpickler runs it
    assert flag.exists()


@pytest.mark.parametrize(
    "breakage, message, named",
    [
        ("no-folder", "no dataset folder", "Nowhere"),
        ("no-coordinates", "missing coordinate file", "Shapes_Coordinate"),
        ("no-photo-folder", "missing photo folder", "photo"),
        ("garbage", "not a readable pickle", "Shapes_Coordinate"),
        ("truncated", "not a readable pickle", "Shapes_Coordinate"),
        ("not-a-dict", "not a dict", "Shapes_Coordinate"),
        ("empty-split", "no 'test' sketches", "Shapes_Coordinate"),
        ("missing-photo", "missing photo for sketch '/test/shape0003_1'", "shape0003.png"),
        ("bad-points", "'/test/shape0001_1': points must be an N x 3", "Shapes_Coordinate"),
        ("nan-points", "'/test/shape0001_1': point 1 is not finite", "Shapes_Coordinate"),
        ("no-suffix", "cannot tell its photo", "Shapes_Coordinate"),
        ("one-photo", "at least 2", "Shapes_Coordinate"),
    ],
)
def test_malformed_datasets_name_the_file(small_dataset, tmp_path, breakage, message, named):
    root = _copy_dataset(small_dataset, tmp_path)
    coords = _coords(root)
    cfile = root / "Shapes_Coordinate"
    if breakage == "no-folder":
        root = tmp_path / "Nowhere"
    elif breakage == "no-coordinates":
        cfile.unlink()
    elif breakage == "no-photo-folder":
        import shutil

        shutil.rmtree(root / "photo")
    elif breakage == "garbage":
        cfile.write_bytes(b"this is not a pickle")
    elif breakage == "truncated":
        cfile.write_bytes(cfile.read_bytes()[:100])
    elif breakage == "not-a-dict":
        _write_coords(root, list(coords.values()))
    elif breakage == "empty-split":
        _write_coords(root, {k.replace("test", "train"): v for k, v in coords.items()})
    elif breakage == "missing-photo":
        (root / "photo" / "shape0003.png").unlink()
        (root / "photo" / "shape0005.png").unlink()
    elif breakage == "bad-points":
        coords["/test/shape0001_1"] = coords["/test/shape0001_1"][:, :2]
        _write_coords(root, coords)
    elif breakage == "nan-points":
        coords["/test/shape0001_1"][1, 0] = np.nan
        _write_coords(root, coords)
    elif breakage == "no-suffix":
        coords["/test/shape0001"] = coords.pop("/test/shape0001_1")
        _write_coords(root, coords)
    elif breakage == "one-photo":
        _write_coords(root, {"/test/shape0000_1": coords["/test/shape0000_1"], "/test/shape0000_2": coords["/test/shape0000_1"]})
    with pytest.raises(DatasetError, match=message) as exc:
        load_split(root)
    assert named in str(exc.value.path)
    if breakage == "missing-photo":
        assert "1 more" in exc.value.message


def test_cli_dataset_errors_are_one_line_and_leave_nothing(bundle2, small_dataset, tmp_path):
    root = _copy_dataset(small_dataset, tmp_path)
    (root / "photo" / "shape0002.png").unlink()
    out = tmp_path / "report"
    res = run("eval", "--dataset", root, "--bundle", bundle2, "--out", out, "--backend", "ort-cpu")
    assert res.exit_code == 2
    assert "shape0002.png" in res.output and "missing photo" in res.output and "Traceback" not in res.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["Shapes"]
    (root / "photo" / "shape0002.png").write_bytes(b"not a png")  # present but unreadable
    res = run("eval", "--dataset", root, "--bundle", bundle2, "--out", out, "--backend", "ort-cpu", "-q")
    assert res.exit_code == 2 and "shape0002.png" in res.output and "unreadable" in res.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["Shapes"]  # no temp folder
    res = run("eval", "--dataset", small_dataset, "--bundle", bundle2, "--out", out, "--compare", "fp32,int3")
    assert res.exit_code == 2 and "no int3 version" in res.output and not out.exists()
    res = run("eval", "--dataset", small_dataset, "--bundle", bundle2, "--protocol", "paper", "--steps", "strokes")
    assert res.exit_code == 2 and "points20" in res.output


def test_cli_registration_is_light_and_consistent():
    assert ecli.PROTOCOL_CHOICES == PROTOCOLS and ecli.STEP_CHOICES == STEP_KINDS
    code = ("import sys, dcssa.runtime.cli as c; assert 'eval' in c.main.commands; "
            "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'torch', 'dcssa.runtime.evaluation.', "
            "'dcssa.runtime.cli.evaluate'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['dcssa.runtime.cli.evaluate']"
    assert run("eval", "--help").exit_code == 0


# ------------------------------------------------------------------------------------------------
# end to end against the PyTorch reference model
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_photos(ref_model, small_dataset, bundle2):
    """Reference photo embeddings of the split's photos (names shape0000..shape0005, in order)."""
    photos = PhotoPipeline(Bundle.load(bundle2).photo_recipe)
    with torch.no_grad():
        return torch.cat([
            ref_model.photo_embedding(torch.from_numpy(photos.preprocess(Image.open(p))))
            for p in sorted((small_dataset / "photo").glob("*.png"))
        ])


def _reference_ranks(embeddings: torch.Tensor, photos: torch.Tensor, target: int) -> list[int]:
    """Ranks as the authors' code computes them (separate target distance, `le`, sum)."""
    out = []
    for e in embeddings:
        target_distance = F.pairwise_distance(e, photos[target])
        distance = F.pairwise_distance(e.unsqueeze(0), photos)
        out.append(int(distance.le(target_distance).sum()))
    return out


@pytest.fixture(scope="module")
def causal_report(bundle2, small_dataset, gallery2, tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "report"
    # gallery2 indexes another photo folder: it must be refused and a fresh one built
    res = run("eval", "--dataset", small_dataset, "--bundle", bundle2, "--out", out, "--backend", "ort-cpu",
              "--gallery", gallery2)
    assert res.exit_code == 0, res.output
    return out, res


def test_eval_causal_end_to_end(causal_report, ref_model, small_dataset, torch_photos):
    out, res = causal_report
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "eval.md", "gallery", "rank_vs_progress.png"]
    assert "not reusing" in res.output  # gallery2 indexes another photo folder
    doc = json.loads((out / "eval.json").read_text())
    assert doc["protocol"] == "causal" and doc["steps"] == "strokes" and doc["gallery"]["reused"] is False
    assert doc["dataset"]["sketches"] == 6 and doc["dataset"]["gallery_photos"] == 6 and doc["dataset"]["synthetic"]
    (run_,) = doc["runs"]
    coords = _coords(small_dataset)
    # second code path: PyTorch, every stroke prefix re-rasterised from scratch, head on the prefix
    pre = SketchPipeline().preprocess
    for sk in run_["sketches"][:2]:
        strokes = points_to_strokes(coords[sk["key"]])
        x = np.concatenate([pre(rasterize(strokes_to_points(strokes[: t + 1]))) for t in range(len(strokes))])
        with torch.no_grad():
            feats = ref_model.sketch_feature(torch.from_numpy(x))
            emb = torch.stack([ref_model.attn(feats[: t + 1])[-1] for t in range(len(strokes))])
        target = int(sk["target"].removeprefix("shape"))
        assert sk["ranks"] == _reference_ranks(emb, torch_photos, target)
    all_ranks = [np.array(s["ranks"]) for s in run_["sketches"]]
    assert run_["metrics"] == pytest.approx(M.summarize(all_ranks, 6))
    assert run_["agreement"]["top1_identical"] == 1.0
    md = (out / "eval.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| ort-cpu/fp32"))
    assert row.split("|")[2].strip() == f"{100 * run_['metrics']['acc@1']:.2f}"
    assert "rank_vs_progress.png" in md and "DEMO" in md and "SYNTHETIC" in md
    png = Image.open(out / "rank_vs_progress.png")
    assert png.format == "PNG" and png.size[0] > 600
    assert np.asarray(png.convert("L")).std() > 10  # something was drawn


def test_eval_paper_protocol_end_to_end(causal_report, bundle2, small_dataset, ref_model, torch_photos):
    out, _ = causal_report
    res = run("eval", "--dataset", small_dataset, "--bundle", bundle2, "--out", out, "--force", "--json",
              "--protocol", "paper", "--limit", "1", "--compare", "fp32,ort-cpu:fp32",
              "--backend", "ort-cpu")  # pinned: `auto` picks openvino on Intel CPUs where it is installed
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["gallery"]["reused"] is True  # OUT/gallery from the first run, carried over
    assert (out / "gallery" / "embeddings.npy").is_file()
    a, b = doc["runs"]
    assert [a["label"], b["label"]] == ["ort-cpu/fp32", "ort-cpu/fp32#2"]
    assert a["metrics"] == b["metrics"] and b["agreement"]["top1_identical"] == 1.0
    assert b["agreement"]["top10_overlap"] == 1.0
    coords = _coords(small_dataset)
    pre = SketchPipeline().preprocess
    for sk in a["sketches"]:
        x = np.concatenate([pre(r) for r in rasterize_steps(coords[sk["key"]], 20)])
        with torch.no_grad():
            emb = ref_model.attn(ref_model.sketch_feature(torch.from_numpy(x)))  # whole sequence at once
        assert sk["ranks"] == _reference_ranks(emb, torch_photos, int(sk["target"].removeprefix("shape")))
    ranks = [np.array(s["ranks"]) for s in a["sketches"]]
    assert a["published"]["metrics"] == pytest.approx(_published_literal(ranks, 6), rel=1e-9)
    md = (out / "eval.md").read_text()
    assert "As the published evaluation code computes them" in md and "Corrected values" in md


def test_causal_points20_is_the_step_head_over_point_slices(bundle2, small_dataset, tmp_path):
    """Second code path: causal step t == last row of the full head on steps 1..t."""
    from dcssa.runtime import Retriever
    from dcssa.runtime.evaluation.protocols import SketchEvaluator
    from dcssa.runtime.evaluation.run import eval_gallery
    from dcssa.runtime.search.gallery import Gallery
    from dcssa.runtime.stroke.head import CausalHead

    b = Bundle.load(bundle2)
    split = load_split(small_dataset, limit=1)
    g = Gallery(None, np.eye(6, b.embed_dim, dtype=np.float32), [f"shape{i:04d}.png" for i in range(6)],
                {"photo_encoder_sha256": b.photo_encoder_id(), "count": 6, "dim": b.embed_dim})
    r = Retriever(b, eval_gallery(g, split), backend="ort-cpu")
    ev = SketchEvaluator(r, "causal", "points20")
    rasters = rasterize_steps(split.sketches[0].points, 20)
    feats = ev._features(rasters)
    causal = ev._causal(feats)
    # the maths with a float32 cache; what a session gives (float16 cache rows) within their rounding
    exact = CausalHead.embed_sequence(r.head, feats, cache_dtype=None)
    full = r.load("stroke_head_full")
    for t in range(len(rasters)):
        last = full.run({"features": feats[: t + 1]})["embeddings"][-1]
        assert np.abs(exact[t] - last).max() <= 1e-5
        assert np.abs(causal[t] - last).max() <= 1e-4
    # the paper protocol differs before the last step (it sees the future) and agrees at the last
    paper = full.run({"features": feats})["embeddings"]
    assert np.abs(paper[-1] - exact[-1]).max() <= 1e-5 and np.abs(paper[0] - causal[0]).max() > 1e-3
