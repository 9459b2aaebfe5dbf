"""The native TensorRT runner's wiring, on a recording stand-in of ``tensorrt`` and CUDA (no GPU here).

The stand-in engine is the stroke-head step with a toy body (``fake_tensorrt.head_step``) that
depends on every K/V row, run on a byte heap at the addresses the runner set. So these tests check
what the runner moves where -- staging, the device-resident K/V cache that is uploaded only where
the device lacks rows, the row appended on the device -- against numpy on the host feeds, plus
checked TensorRT results, the CUDA context on every calling thread, and clean-up. They say
nothing about TensorRT's numbers (``tests/calibration/test_engines.py`` has the GPU test).
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from fake_tensorrt import FakeCuda, FakeTensorRT, head_engine, head_step

from dcssa.runtime.backends import SerializedRunner, cuda_memory, thread_safe
from dcssa.runtime.backends import tensorrt as trtb
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.errors import BackendError

D, MAX_T = 4, 6
SPEC = mf.graph_spec(mf.HEAD_STEP, D, D)


@pytest.fixture
def fake(monkeypatch):
    trt = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(cuda_memory, "cuda_api", lambda: trt.cuda)
    return trt


@pytest.fixture
def runner(fake, tmp_path):
    path = tmp_path / "head.engine"
    path.write_bytes(head_engine(D, MAX_T))
    return trtb.TensorRTBackend().load(path, SPEC)


class Sketch:
    """One session's host K/V cache, grown from the runner's outputs as a StrokeSession does."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.keys = np.zeros((0, D), np.float32)
        self.values = np.zeros((0, D), np.float32)

    def step(self, runner) -> None:
        feature = self.rng.standard_normal((1, D)).astype(np.float32)
        feeds = {mf.FEATURE: feature, mf.PAST_KEYS: self.keys, mf.PAST_VALUES: self.values}
        want = head_step(feature, self.keys, self.values)
        got = runner.run(feeds)
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        self.keys = np.concatenate([self.keys, got[mf.KEY]])
        self.values = np.concatenate([self.values, got[mf.VALUE]])

    def undo(self) -> None:
        self.keys, self.values = self.keys[:-1], self.values[:-1]


def _cache_uploads(fake: FakeTensorRT, runner) -> int:
    """Host-to-device copies into the K/V buffers so far."""
    caches = {runner.device[mf.PAST_KEYS], runner.device[mf.PAST_VALUES]}
    lo = min(caches)
    hi = max(caches) + runner.plan[mf.PAST_KEYS].nbytes
    return sum(1 for kind, dst, _n in fake.cuda.calls if kind == "h2d" and lo <= dst < hi)


def test_a_live_session_uploads_no_cache_rows(fake, runner):
    s = Sketch(0)
    for _ in range(MAX_T):
        s.step(runner)  # results equal numpy on the full host cache: the device cache is right
    assert _cache_uploads(fake, runner) == 0  # every row was appended on the device
    ctx = fake.contexts[0]
    assert ctx.executions == MAX_T
    assert ctx.shapes[mf.PAST_KEYS] == (MAX_T - 1, D)


def test_interleaved_sessions_and_undo_upload_only_the_rows_the_device_lacks(fake, runner):
    a, b = Sketch(1), Sketch(2)
    for _ in range(3):
        a.step(runner)
    before = _cache_uploads(fake, runner)
    b.step(runner)  # empty cache: nothing to upload; b's row 0 is appended over a's on the device
    b.step(runner)  # the device holds b's row 0: nothing to upload
    assert _cache_uploads(fake, runner) == before
    a.step(runner)  # a's row 0 differs from the device's: a's 3 rows go up, one copy for keys, one for values
    assert _cache_uploads(fake, runner) == before + 2
    a.undo()
    a.undo()
    a.step(runner)  # a shorter cache whose rows the device holds: no upload
    assert _cache_uploads(fake, runner) == before + 2
    b.step(runner)
    for _ in range(3):
        a.step(runner)
    assert len(a.keys) == MAX_T


def test_a_full_cache_still_runs_and_a_longer_one_is_refused(fake, runner):
    s = Sketch(3)
    for _ in range(MAX_T + 1):  # the last call has MAX_T rows: the profile's maximum
        s.step(runner)
    with pytest.raises(BackendError) as err:
        s.step(runner)
    assert "outside the engine's profile" in err.value.message and "dcssa-export engines" in err.value.hint


def test_refused_shapes_and_addresses_are_errors_not_silence(fake, runner, tmp_path):
    fake.contexts[0].refuse_shapes = True
    with pytest.raises(BackendError) as err:
        Sketch(4).step(runner)
    assert "refused shape" in err.value.message and mf.PAST_KEYS in err.value.message
    path = tmp_path / "other.engine"
    path.write_bytes(head_engine(D, MAX_T))
    backend = trtb.TensorRTBackend()
    real = fake.Runtime

    class Refusing(real):
        def deserialize_cuda_engine(self, blob):
            engine = super().deserialize_cuda_engine(blob)
            make = engine.create_execution_context

            def context():
                ctx = make()
                ctx.refuse_addresses = True
                return ctx

            engine.create_execution_context = context
            return engine

    backend.runtime = Refusing(backend.logger)
    with pytest.raises(BackendError) as err:
        backend.load(path, SPEC)
    assert "device address" in err.value.message and err.value.path == str(path)


def test_a_failed_execution_is_an_error_and_the_next_call_reuploads(fake, runner):
    s = Sketch(5)
    s.step(runner)
    s.step(runner)
    fake.contexts[0].fail_execution = True
    with pytest.raises(BackendError, match="execution failed"):
        s.step(runner)
    fake.contexts[0].fail_execution = False
    before = _cache_uploads(fake, runner)
    s.step(runner)  # the device cache is no longer trusted: rows uploaded again, result right
    assert _cache_uploads(fake, runner) == before + 2


def test_an_undeserialisable_engine_names_the_file(fake, tmp_path):
    path = tmp_path / "junk.engine"
    path.write_bytes(b"\x00not an engine")
    with pytest.raises(BackendError) as err:
        trtb.TensorRTBackend().load(path, SPEC)
    assert err.value.path == str(path) and "dcssa-export engines" in err.value.hint


def test_close_frees_every_buffer_and_destroys_the_stream(fake, runner):
    cuda: FakeCuda = fake.cuda
    buffers = set(runner.device.values())
    stream = runner.stream
    assert buffers <= set(cuda.allocs) and stream in cuda.streams
    runner.close()
    assert not (buffers & set(cuda.allocs)) and set(cuda.freed) >= buffers
    assert cuda.destroyed == [stream] and stream not in cuda.streams
    assert cuda.pinned_live == {} and sorted(cuda.pinned_freed) == sorted(p.nbytes for p in runner.plan.values())
    runner.close()  # idempotent
    assert cuda.destroyed == [stream]


def test_one_logger_for_every_backend_and_build(fake, tmp_path):
    a, b = trtb.TensorRTBackend(), trtb.TensorRTBackend()
    assert a.logger is b.logger is trtb.shared_logger(fake)
    trtb.shared_logger(fake, verbose=True)
    assert a.logger.min_severity == fake.Logger.VERBOSE
    trtb.shared_logger(fake)
    assert a.logger.min_severity == fake.Logger.WARNING


def test_a_tensor_type_numpy_lacks_is_a_clear_error(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(fake, "DataType", type(fake.DataType)(FLOAT="FLOAT", HALF="HALF", BF16="BF16"))
    with pytest.raises(BackendError) as err:
        trtb.numpy_dtype(fake, fake.DataType.BF16, "images", tmp_path / "e.engine")
    assert "BF16" in err.value.message and "'images'" in err.value.message and "dcssa-export engines" in err.value.hint
    assert trtb.numpy_dtype(fake, fake.DataType.HALF, "x") == np.float16


def test_the_photo_encoder_sizes_its_context_memory_per_shape(fake, tmp_path):
    """USER_MANAGED context: scratch memory grows with the shapes fed, never the profile's largest."""
    from fake_tensorrt import engine_blob

    prof = [[1, 3, 8, 8], [2, 3, 8, 12], [4, 3, 32, 32]]
    path = tmp_path / "photo.engine"
    path.write_bytes(engine_blob("encoder", [
        {"name": "images", "input": True, "shape": [-1, 3, -1, -1], "profile": prof},
        {"name": "embeddings", "input": False, "shape": [1, 4]}]))
    spec = mf.GraphSpec(mf.PHOTO_ENCODER, {"images": ["N", 3, "H", "W"]}, {"embeddings": ["N", 4]})
    r = trtb.TensorRTBackend().load(path, spec)
    ctx = fake.contexts[-1]
    assert r.per_shape and ctx.strategy == fake.ExecutionContextAllocationStrategy.USER_MANAGED
    assert r.max_batch == 4  # the profile's largest batch: what serve clamps --max-batch to
    r.run({"images": np.zeros((1, 3, 8, 8), np.float32)})
    small = ctx.device_memory
    r.run({"images": np.zeros((2, 3, 16, 24), np.float32)})
    big = ctx.device_memory
    r.run({"images": np.zeros((1, 3, 8, 8), np.float32)})  # a smaller shape keeps the larger buffer
    assert small[1] == trtb._aligned(fake.scratch_bytes((1, 3, 8, 8)))
    assert big[1] == trtb._aligned(fake.scratch_bytes((2, 3, 16, 24))) > small[1]
    assert ctx.device_memory == big and big[1] < trtb._aligned(fake.scratch_bytes((4, 3, 32, 32)))
    with pytest.raises(BackendError) as err:  # a photo far wider than tall: outside the profile
        r.run({"images": np.zeros((1, 3, 8, 40), np.float32)})
    assert "--photo-max-side" in err.value.hint and "crop it" in err.value.hint
    r.close()
    assert big[0] in fake.cuda.freed


def test_other_graphs_keep_tensorrts_own_context_memory(fake, runner):
    assert not runner.per_shape and fake.contexts[-1].strategy is None
    assert runner.max_batch is None  # the head's only dynamic inputs are its K/V caches: no batch limit


def test_calls_from_other_threads_run_in_the_cuda_context(fake, runner):
    """The stand-in refuses device work on a thread with no current context, as CUDA does."""
    s = Sketch(6)
    errors: list[BaseException] = []

    def on_another_thread() -> None:
        try:
            s.step(runner)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    for _ in range(3):
        t = threading.Thread(target=on_another_thread)
        t.start()
        t.join()
    assert not errors, errors
    assert fake.contexts[0].executions == 3


def test_the_runner_is_serialised_and_sessions_on_threads_stay_right(fake, runner):
    """One context and one device cache shared by four sessions on four threads: serialised, every
    result equals numpy on that session's own cache."""
    assert runner.thread_safe is False
    shared = thread_safe(runner)
    assert isinstance(shared, SerializedRunner)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def user(seed: int) -> None:
        try:
            s = Sketch(seed)
            start.wait()
            for _ in range(MAX_T):
                s.step(shared)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    pool = [threading.Thread(target=user, args=(10 + i,)) for i in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    assert fake.contexts[0].executions == 4 * MAX_T


def _doubler(tmp_path, fake, cuda_graphs: bool):
    from fake_tensorrt import engine_blob

    path = tmp_path / "enc.engine"
    path.write_bytes(engine_blob("double", [
        {"name": "images", "input": True, "shape": [-1, 3], "profile": [[1, 3], [1, 3], [4, 3]]},
        {"name": "features", "input": False, "shape": [-1, 3]}]))
    spec = mf.GraphSpec(mf.SKETCH_ENCODER, {"images": ["N", 3]}, {"features": ["N", 3]})
    return trtb.TensorRTBackend(cuda_graphs=cuda_graphs).load(path, spec)


def test_cuda_graphs_are_off_by_default(fake, tmp_path):
    r = _doubler(tmp_path, fake, cuda_graphs=False)
    for _ in range(3):
        r.run({"images": np.ones((1, 3), np.float32)})
    assert fake.cuda.graphs == {} and fake.cuda.launches == []


def test_a_cuda_graph_is_captured_per_shape_on_its_second_call_and_replays_new_inputs(fake, tmp_path):
    r = _doubler(tmp_path, fake, cuda_graphs=True)
    rng = np.random.default_rng(0)
    for step in range(4):  # direct, captured + launched, launched, launched
        for batch in (1, 2):
            x = rng.standard_normal((batch, 3)).astype(np.float32)
            out = r.run({"images": x})
            np.testing.assert_array_equal(out["features"], 2 * x)  # the replay reads this call's input
    assert len(fake.cuda.graphs) == 2  # one per input shape
    assert len(fake.cuda.launches) == 2 * 3 and fake.contexts[-1].executions == 2 * 4
    r.close()
    assert fake.cuda.graphs == {}  # destroyed with the runner


def test_the_head_never_uses_cuda_graphs(fake, tmp_path):
    path = tmp_path / "head.engine"
    path.write_bytes(head_engine(D, MAX_T))
    r = trtb.TensorRTBackend(cuda_graphs=True).load(path, SPEC)
    assert not r.use_graphs  # its K/V append changes between calls: a replay would not see it
    s = Sketch(1)
    for _ in range(3):
        s.step(r)
    assert fake.cuda.graphs == {}


def test_a_tensorrt_without_per_shape_sizing_keeps_its_own_context_memory(fake, tmp_path, monkeypatch):
    """TensorRT 10.0 has USER_MANAGED but not update_device_memory_size_for_shapes: no per-shape memory."""
    monkeypatch.setattr(fake, "IExecutionContext", type("IExecutionContext", (), {}))
    spec = mf.GraphSpec(mf.PHOTO_ENCODER, {"images": ["N", 3, "H", "W"]}, {"embeddings": ["N", 4]})
    assert not trtb.per_shape_memory(fake, None, spec)
    monkeypatch.undo()
    assert trtb.per_shape_memory(fake, None, spec)
