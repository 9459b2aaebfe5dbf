"""The Runner base's one ``run()``: feed checks, error wrapping, and the thread-safety policy.

Every backend inherits these, so they are tested on small Runner subclasses; the last test runs a
Retriever whose backend hands out runners that refuse concurrency, over the tiny bundle's real
onnxruntime graphs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from dcssa.runtime.backends import Backend, Runner, SerializedRunner, thread_safe
from dcssa.runtime.backends.ort import OrtBackend
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.errors import BackendError, SessionError

STEP = mf.graph_spec(mf.HEAD_STEP, 4, 2)
THREADS, CALLS = 4, 10


class _Overlap:
    """Counts calls in flight; ``peak`` is the most that were ever in flight at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = self.peak = self.calls = 0

    @contextmanager
    def inside(self, hold: float = 0.003):
        with self._lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(hold)  # widen the window so concurrent callers really meet
            yield
        finally:
            with self._lock:
                self.active -= 1


class _Runner(Runner):
    """A runner whose ``_run_impl`` is ``body``; input names from ``spec`` unless given."""

    def __init__(self, spec: mf.GraphSpec, body: Callable[[Mapping], dict], *, safe: bool = True,
                 input_names: tuple[str, ...] | None = None) -> None:
        self.spec = spec
        self.input_names = input_names or spec.input_names
        self.output_names = spec.output_names
        self.thread_safe = safe
        self.body = body
        self.calls = 0

    def _run_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        return self.body(feeds)


def _echo(feeds: Mapping) -> dict:
    return {mf.EMBEDDING: np.zeros((1, 2), np.float32)}


def _step_feeds(**extra) -> dict:
    z = np.zeros((0, 4), np.float32)
    return {mf.FEATURE: np.zeros((1, 4), np.float32), mf.PAST_KEYS: z, mf.PAST_VALUES: z, **extra}


def _raiser(exc: BaseException) -> Callable[[Mapping], dict]:
    def body(feeds: Mapping) -> dict:
        raise exc

    return body


# -- feeds and errors ------------------------------------------------------------------------------


def test_a_missing_feed_is_named_with_what_the_graph_takes():
    runner = _Runner(STEP, _echo)
    feeds = _step_feeds()
    del feeds[mf.PAST_VALUES]
    with pytest.raises(BackendError) as err:
        runner.run(feeds)
    assert mf.PAST_VALUES in err.value.message and mf.HEAD_STEP in err.value.message
    assert ", ".join(STEP.input_names) in str(err.value)
    assert runner.calls == 0  # refused before the backend saw it


def test_an_unknown_feed_is_named_with_what_the_graph_takes():
    runner = _Runner(STEP, _echo)
    with pytest.raises(BackendError) as err:
        runner.run(_step_feeds(strokes=np.zeros(1)))
    assert "strokes" in err.value.message
    assert ", ".join(STEP.input_names) in str(err.value)
    assert runner.calls == 0


def test_the_right_feeds_reach_the_backend():
    runner = _Runner(STEP, _echo)
    assert set(runner.run(_step_feeds())) == {mf.EMBEDDING}
    assert runner.calls == 1


@pytest.mark.parametrize("exc", [RuntimeError("CUDA failure 700: an illegal memory access\n  at kernel.cu:42"),
                                 ValueError("Got invalid dimensions for input\nmore detail")])
def test_a_library_exception_becomes_a_backend_error_with_its_first_line(exc):
    runner = _Runner(STEP, _raiser(exc))
    with pytest.raises(BackendError) as err:
        runner.run(_step_feeds())
    first, second = str(exc).splitlines()
    assert runner.name in err.value.message
    assert first in err.value.message and type(exc).__name__ in err.value.message
    assert second.strip() not in str(err.value)
    assert err.value.__cause__ is exc


@pytest.mark.parametrize("exc", [SessionError("the session holds 256 strokes"),
                                 BackendError("engine lost", hint="rebuild it")])
def test_a_dcssa_error_passes_through_unchanged(exc):
    runner = _Runner(STEP, _raiser(exc))
    with pytest.raises(type(exc)) as err:
        runner.run(_step_feeds())
    assert err.value is exc


# -- thread safety ---------------------------------------------------------------------------------


def _hammer(call: Callable[[], object], threads: int = THREADS, calls: int = CALLS) -> None:
    """``calls`` calls from each of ``threads`` threads released together; re-raises a thread's error."""
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            start.wait()
            for _ in range(calls):
                call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]


def _recording(safe: bool) -> tuple[Runner, _Overlap]:
    overlap = _Overlap()

    def body(feeds: Mapping) -> dict:
        with overlap.inside():
            return _echo(feeds)

    return _Runner(STEP, body, safe=safe), overlap


def test_a_runner_that_is_not_thread_safe_is_called_one_at_a_time():
    runner, overlap = _recording(safe=False)
    shared = thread_safe(runner)
    assert isinstance(shared, SerializedRunner)
    _hammer(lambda: shared.run(_step_feeds()))
    assert overlap.calls == THREADS * CALLS
    assert overlap.peak == 1


def test_a_thread_safe_runner_is_left_alone_and_does_overlap():
    """The recorder can see overlap: without the lock, the same calls meet."""
    runner, overlap = _recording(safe=True)
    assert thread_safe(runner) is runner
    _hammer(lambda: runner.run(_step_feeds()))
    assert overlap.calls == THREADS * CALLS
    assert overlap.peak > 1


def test_serialised_runner_still_checks_feeds():
    shared = thread_safe(_recording(safe=False)[0])
    with pytest.raises(BackendError, match="strokes"):
        shared.run(_step_feeds(strokes=np.zeros(1)))


# -- a Retriever over runners that are not thread-safe ---------------------------------------------


class _UnsafeOrt(Backend):
    """onnxruntime CPU graphs behind runners that declare themselves not thread-safe, recorded."""

    name = "unsafe-ort"

    def __init__(self) -> None:
        self.ort = OrtBackend("ort-cpu")
        self.overlaps: dict[str, _Overlap] = {}

    @classmethod
    def available(cls) -> bool:
        return True

    def load(self, path: Path, spec: mf.GraphSpec | None = None, *, precision: str | None = None) -> Runner:
        inner = self.ort.load(path, spec, precision=precision)
        overlap = self.overlaps.setdefault(inner.spec.name, _Overlap())

        def body(feeds: Mapping) -> dict:
            with overlap.inside(hold=0.002):
                return inner.run(feeds)

        return _Runner(inner.spec, body, safe=False, input_names=inner.input_names)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")
    from tiny_bundle import write_tiny_bundle, write_tiny_gallery

    from dcssa.runtime.contract.bundle import Bundle

    root = tmp_path_factory.mktemp("tiny")
    bundle = write_tiny_bundle(root / "bundle")
    return Bundle.load(bundle), write_tiny_gallery(bundle, root / "gallery", photos=5)


def _draw(retriever, sketch: list[np.ndarray]) -> list:
    session = retriever.session()
    return [session.add_stroke(s) for s in sketch]


def test_a_retriever_serialises_runners_that_are_not_thread_safe(tiny):
    from dcssa.runtime.data.synthetic import random_sketch
    from dcssa.runtime.session import Retriever

    bundle, gallery = tiny
    backend = _UnsafeOrt()
    shared = Retriever(bundle, gallery, backend=backend, topk=3)
    sketches = [random_sketch(np.random.default_rng(seed), 4) for seed in range(THREADS)]
    got: dict[int, list] = {}
    it = iter(range(THREADS))
    lock = threading.Lock()

    def one_user() -> None:
        with lock:
            i = next(it)
        got[i] = _draw(shared, sketches[i])

    _hammer(one_user, calls=1)
    for name in (mf.SKETCH_ENCODER, mf.HEAD_STEP):
        assert backend.overlaps[name].calls == THREADS * 4
        assert backend.overlaps[name].peak == 1, name
    plain = Retriever(bundle, gallery, backend="ort-cpu", topk=3)
    for i, sketch in enumerate(sketches):
        for mine, want in zip(got[i], _draw(plain, sketch), strict=True):
            np.testing.assert_allclose(mine.embedding, want.embedding, atol=1e-6)
            assert mine.ids == want.ids
