"""``dcssa-export triton`` (model repository) and ``--backend triton`` against a real Triton server.

Repository: every config.pbtxt is parsed with tritonclient's ``model_config_pb2`` and checked
against the ONNX graph it serves (names, dtypes, dims as onnx reads them from the file) and against
the bundle (file bytes, manifest sha256). Backend: PyTriton's bundled tritonserver serves the
repository's models (``triton_harness``); results are compared with in-process onnxruntime
(``ort-cpu``). If the server cannot start here the server tests skip, saying why.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")
pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (pip install 'dcssa-rt[dev]')")

import onnx  # noqa: E402
from onnx import TensorProto  # noqa: E402
from tiny_bundle import write_tiny_bundle, write_tiny_gallery  # noqa: E402
from triton_harness import parse_config, serve_repository  # noqa: E402

from dcssa.export.cli import main as export_main  # noqa: E402
from dcssa.export.triton import write_repository  # noqa: E402
from dcssa.runtime.backends import get_backend  # noqa: E402
from dcssa.runtime.backends.triton import TritonBackend  # noqa: E402
from dcssa.runtime.cli import main as rt_main  # noqa: E402
from dcssa.runtime.contract import manifest as mf  # noqa: E402
from dcssa.runtime.contract.bundle import Bundle  # noqa: E402
from dcssa.runtime.data.synthetic import random_sketch  # noqa: E402
from dcssa.runtime.errors import BackendError  # noqa: E402
from dcssa.runtime.indexing.build import build_gallery  # noqa: E402
from dcssa.runtime.search.gallery import Gallery
from dcssa.runtime.session import Retriever  # noqa: E402

ATOL = 1e-5
#: ONNX element type -> Triton DataType name (what a graph's tensor must be declared as)
ONNX_TO_TRITON = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.FLOAT16: "TYPE_FP16", TensorProto.INT64: "TYPE_INT64"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("triton")


@pytest.fixture(scope="module")
def tiny(root) -> Path:
    bundle = write_tiny_bundle(root / "bundle", seed=0)
    write_tiny_gallery(bundle, bundle / "gallery", photos=6)
    return bundle


@pytest.fixture(scope="module")
def repo(tiny, root) -> Path:
    write_repository(tiny, root / "repo", max_batch=8, queue_delay_us=200_000)
    return root / "repo"


def _check_against_onnx(cfg, onnx_path: Path) -> None:
    """Every config tensor is a graph input/output of the same name, dtype and compatible dims."""
    from tritonclient.grpc import model_config_pb2 as pb

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name for i in graph.initializer}
    for tensors, values in ((cfg.input, [v for v in graph.input if v.name not in inits]), (cfg.output, graph.output)):
        by_name = {v.name: v for v in values}
        assert [t.name for t in tensors] == list(by_name), "config tensors != graph tensors"
        for t in tensors:
            tt = by_name[t.name].type.tensor_type
            assert pb.DataType.Name(t.data_type) == ONNX_TO_TRITON[tt.elem_type], (cfg.name, t.name)
            onnx_dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            cfg_dims = ([-1] if cfg.max_batch_size > 0 else []) + list(t.dims)
            # what Triton's onnxruntime backend accepts: same rank; a fixed graph dim is declared as is,
            # a dynamic one (-1) may be declared -1 or fixed by the manifest (ARNet's E)
            assert len(cfg_dims) == len(onnx_dims), (cfg.name, t.name)
            assert all(o in (-1, c) for c, o in zip(cfg_dims, onnx_dims)), (cfg.name, t.name, cfg_dims, onnx_dims)


def _check_repository(bundle_path: Path, repo: Path, *, prefix: str = "", max_batch: int = 8) -> dict:
    """Parse and cross-check every model of ``repo``; returns {model name: ModelConfig}."""
    bundle = Bundle.load(bundle_path)
    manifest_sha = hashlib.sha256((bundle_path / mf.MANIFEST).read_bytes()).hexdigest()
    configs = {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir()):
        cfg = parse_config(folder / "config.pbtxt")
        assert cfg.name == folder.name
        graph = cfg.parameters["dcssa_graph"].string_value
        assert cfg.name == prefix + graph
        assert cfg.platform == "onnxruntime_onnx"
        onnx_file = folder / "1" / "model.onnx"
        assert onnx_file.read_bytes() == (bundle_path / f"{graph}.onnx").read_bytes()
        assert cfg.parameters["dcssa_manifest_sha256"].string_value == manifest_sha
        assert cfg.parameters["dcssa_graph_sha256"].string_value == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
        assert cfg.parameters["dcssa_family"].string_value == bundle.family
        assert cfg.max_batch_size == max_batch
        assert list(cfg.dynamic_batching.preferred_batch_size)[-1] == max_batch
        assert all(1 < b <= max_batch for b in cfg.dynamic_batching.preferred_batch_size)
        _check_against_onnx(cfg, onnx_file)
        configs[cfg.name] = cfg
    return configs


# -- the repository -------------------------------------------------------------------------------


def test_repository_of_a_dcssa_bundle_serves_the_encoders_only(tiny, root):
    out = root / "repo-cli"
    res = CliRunner().invoke(export_main, ["triton", str(tiny), "--out", str(out), "--instances", "2",
                                           "--queue-delay-us", "500", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    configs = _check_repository(tiny, out)
    assert set(configs) == {mf.SKETCH_ENCODER, mf.PHOTO_ENCODER} == set(doc["models"])  # no stroke head
    for cfg in configs.values():
        assert cfg.instance_group[0].count == 2
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    # the photo encoder takes any H x W, the sketch encoder the recipe's fixed size
    assert list(configs[mf.PHOTO_ENCODER].input[0].dims) == [3, -1, -1]
    assert not list(out.parent.glob(".repo-cli.tmp-*"))


def test_repository_of_an_arnet_bundle(arnet_bundle, tmp_path):
    write_repository(arnet_bundle, tmp_path / "repo", prefix="shoes_", max_batch=4)
    configs = _check_repository(arnet_bundle, tmp_path / "repo", prefix="shoes_", max_batch=4)
    assert set(configs) == {"shoes_sketch_encoder", "shoes_photo_encoder"}
    assert list(configs["shoes_sketch_encoder"].input[0].dims) == [3, 224, 224]
    assert configs["shoes_sketch_encoder"].output[0].name == mf.EMBEDDINGS


def test_repository_without_batching(tiny, tmp_path):
    """--max-batch 0: no dynamic batcher, the batch dim is an ordinary -1 dim of every tensor."""
    write_repository(tiny, tmp_path / "repo", max_batch=0, kind="cpu")
    for graph in (mf.SKETCH_ENCODER, mf.PHOTO_ENCODER):
        cfg = parse_config(tmp_path / "repo" / graph / "config.pbtxt")
        assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
        assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
        assert all(t.dims[0] == -1 for t in (*cfg.input, *cfg.output))
        _check_against_onnx(cfg, tmp_path / "repo" / graph / "1" / "model.onnx")


def test_repository_errors_leave_nothing(tiny, repo, root):
    runner = CliRunner()
    res = runner.invoke(export_main, ["triton", str(tiny), "--out", str(repo)])
    assert res.exit_code != 0 and "already exists" in res.output and "--force" in res.output
    out = root / "repo-trt"
    res = runner.invoke(export_main, ["triton", str(tiny), "--out", str(out), "--platform", "tensorrt"])
    assert res.exit_code != 0 and "dcssa-export engines" in res.output and not out.exists()
    res = runner.invoke(export_main, ["triton", str(tiny), "--out", str(out), "--precision", "int8"])
    assert res.exit_code != 0 and "no int8 version" in res.output and not out.exists()
    res = runner.invoke(export_main, ["triton", str(root / "nope"), "--out", str(out)])
    assert res.exit_code != 0 and "no bundle folder" in res.output and not out.exists()


# -- a real server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(repo):
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (pip install 'dcssa-rt[dev]', x86_64 Linux)")
    try:
        served = serve_repository(repo)
    except Exception as exc:  # noqa: BLE001 - whatever stops the server here is the skip reason
        pytest.skip(f"PyTriton's tritonserver did not start here: {type(exc).__name__}: {exc}")
    yield served
    served.stop()


def _sketch(seed: int = 5, strokes: int = 6):
    return random_sketch(np.random.default_rng(seed), strokes)


def test_query_through_triton_equals_ort_cpu(tiny, server):
    bundle = Bundle.load(tiny)
    gallery = Gallery.load(tiny / "gallery", bundle)
    local = Retriever(bundle, gallery, backend="ort-cpu", topk=4).session()
    remote_r = Retriever(bundle, gallery, backend=TritonBackend(server.grpc_url), topk=4)
    assert remote_r.encoder.__class__.__name__ == "TritonRunner"
    assert remote_r.head.__class__.__name__ == "OrtRunner"  # the head stays local
    remote = remote_r.session()
    for stroke in _sketch():
        a, b = local.add_stroke(stroke), remote.add_stroke(stroke)
        assert np.max(np.abs(a.embedding - b.embedding)) <= ATOL
        assert a.ids == b.ids
    # undo runs nothing remotely and returns the previous result exactly
    assert remote.undo().ids == local.undo().ids


def test_http_url_and_batches_beyond_max_batch(tiny, server):
    """11 images through a max_batch_size-8 model (two requests), over HTTP when tritonclient[http] is here."""
    try:
        backend = TritonBackend(server.http_url)
    except BackendError:
        backend = TritonBackend(server.grpc_url)
    bundle = Bundle.load(tiny)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((11, 3, 299, 299)).astype(np.float32)
    remote = backend.load(backend.artifact(bundle, mf.SKETCH_ENCODER, "fp32"), bundle.graph_spec(mf.SKETCH_ENCODER))
    ort = get_backend("ort-cpu")
    local = ort.load(ort.artifact(bundle, mf.SKETCH_ENCODER, "fp32"), bundle.graph_spec(mf.SKETCH_ENCODER))
    got, want = remote.run({mf.IMAGES: images}), local.run({mf.IMAGES: images})
    assert got[mf.FEATURES].shape == (11, bundle.feature_dim)
    assert np.max(np.abs(got[mf.FEATURES] - want[mf.FEATURES])) <= ATOL


def test_concurrent_clients_are_batched_by_the_server(tiny, server):
    bundle = Bundle.load(tiny)
    backend = TritonBackend(server.grpc_url)
    runner = backend.load(backend.artifact(bundle, mf.SKETCH_ENCODER, "fp32"), bundle.graph_spec(mf.SKETCH_ENCODER))
    ort = get_backend("ort-cpu")
    local = ort.load(ort.artifact(bundle, mf.SKETCH_ENCODER, "fp32"), bundle.graph_spec(mf.SKETCH_ENCODER))
    images = np.random.default_rng(1).standard_normal((6, 1, 3, 299, 299)).astype(np.float32)
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(images))
    before = len(server.batches.get(mf.SKETCH_ENCODER, []))

    def client(i: int) -> None:
        start.wait()
        results[i] = runner.run({mf.IMAGES: images[i]})[mf.FEATURES]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, image in enumerate(images):  # each client got its own row back
        assert np.max(np.abs(results[i] - local.run({mf.IMAGES: image})[mf.FEATURES])) <= ATOL
    executed = server.batches[mf.SKETCH_ENCODER][before:]
    assert sum(executed) == len(images)
    assert max(executed) > 1, f"no batch formed: {executed}"  # the repository's 200 ms queue delay


def test_index_through_triton_equals_ort_cpu(tiny, server, root):
    bundle = Bundle.load(tiny)
    photos = tiny / "gallery-photos"
    out = root / "g-triton"
    g = build_gallery(photos, bundle, out, backend=TritonBackend(server.grpc_url))
    ref = Gallery.load(tiny / "gallery", bundle)
    assert g.ids == ref.ids
    assert np.max(np.abs(np.asarray(g.embeddings, np.float32) - np.asarray(ref.embeddings, np.float32))) <= ATOL


def test_cli_query_backend_triton(tiny, server, root, monkeypatch):
    monkeypatch.setenv("DCSSA_TRITON_URL", "localhost:1")  # --triton-url wins (and the env is restored after)
    strokes = root / "strokes.json"
    strokes.write_text(json.dumps({"strokes": [s.tolist() for s in _sketch(7, 4)]}))
    runner = CliRunner()
    common = ["query", str(strokes), "--bundle", str(tiny), "--topk", "3", "--json"]
    local = runner.invoke(rt_main, [*common, "--backend", "ort-cpu"])
    remote = runner.invoke(rt_main, [*common, "--backend", "triton", "--triton-url", server.grpc_url])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    for a, b in zip(local.output.splitlines(), remote.output.splitlines(), strict=True):
        ra, rb = json.loads(a)["results"], json.loads(b)["results"]
        assert [r["id"] for r in ra] == [r["id"] for r in rb]
        assert np.allclose([r["score"] for r in ra], [r["score"] for r in rb], atol=ATOL)


def test_unreachable_server_is_a_clear_error(tiny):
    from triton_harness import free_port

    url = f"localhost:{free_port()}"
    with pytest.raises(BackendError, match="unreachable") as err:
        Retriever(Bundle.load(tiny), backend=TritonBackend(url))
    assert url in str(err.value) and "--triton-url" in str(err.value)


def test_missing_model_is_a_clear_error(tiny, server):
    with pytest.raises(BackendError, match="no ready model 'nosuch_sketch_encoder'") as err:
        Retriever(Bundle.load(tiny), backend=TritonBackend(server.grpc_url, prefix="nosuch_"))
    assert "dcssa-export triton" in str(err.value)


def test_model_of_another_bundle_is_refused(server, root, monkeypatch):
    monkeypatch.setenv("DCSSA_TRITON_URL", "localhost:1")  # restored after the CLI sets it
    other = write_tiny_bundle(root / "other", seed=1)  # other weights: another manifest
    with pytest.raises(BackendError, match="generated from another bundle") as err:
        Retriever(Bundle.load(other), backend=TritonBackend(server.grpc_url))
    assert str(other / mf.MANIFEST) in str(err.value) and "dcssa-export triton" in str(err.value)
    strokes = root / "one.json"
    strokes.write_text(json.dumps({"strokes": [[[10, 10], [200, 200]]]}))
    write_tiny_gallery(other, other / "gallery", photos=2)
    res = CliRunner().invoke(rt_main, ["query", str(strokes), "--bundle", str(other), "--backend", "triton",
                                       "--triton-url", server.grpc_url])
    assert res.exit_code != 0 and "another bundle" in res.output
