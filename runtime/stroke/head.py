"""The sketch head run causally: one step per partial sketch against a growing K/V cache.

Sessions, the evaluator, calibration fidelity reports and export parity all turn step features into
embeddings the way a live user gets them; this is the one place that does it. Phase-1 bundles have
no stroke head: their projection maps each step feature alone, and the cache stays empty. ARNet
bundles have no graph at all after the encoder (``runner=None``): the feature is the embedding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..contract import manifest as mf

#: what the cache rows are rounded to as they are appended. A live session's rows are the rows a
#: session store keeps (half the bytes of float32) and the rows a restored session continues from,
#: so a session rebuilt from the store gives bit-identical results by construction. ``None`` keeps
#: float32 (export parity: the graphs against the reference, not the session's storage).
CACHE_DTYPE: type | None = np.float16

if TYPE_CHECKING:  # any backend's runner: the stroke path does not depend on the backends
    from ..backends import Runner


class CausalHead:
    """A head runner plus a preallocated ``(capacity, D)`` key and value cache; ``pop`` is undo.

    The cache arrays are float32 (what the step graph takes, no conversion per step) holding values
    rounded to ``cache_dtype``, so storing them as ``cache_dtype`` loses nothing.
    """

    def __init__(self, runner: Runner | None, feature_dim: int, capacity: int,
                 cache_dtype: type | None = CACHE_DTYPE) -> None:
        self.runner = runner
        self.cache_dtype = cache_dtype
        # the step graph; a projection has no state, and no head is the identity
        self.stateful = runner is not None and bool(runner.spec.state)
        rows = capacity if self.stateful else 0  # only the step graph keeps a cache
        self.keys = np.zeros((rows, feature_dim), np.float32)
        self.values = np.zeros((rows, feature_dim), np.float32)
        self.length = 0

    def step(self, feature: np.ndarray) -> np.ndarray:
        """The embedding ``(E,)`` of the newest partial sketch, whose ``(1, D)`` feature is given."""
        if self.runner is None:
            return np.asarray(feature, np.float32)[0]
        if not self.stateful:
            return self.runner.run({mf.FEATURES: feature})[mf.EMBEDDINGS][0]
        t = self.length
        out = self.runner.run({mf.FEATURE: feature, mf.PAST_KEYS: self.keys[:t], mf.PAST_VALUES: self.values[:t]})
        self.keys[t] = self._rounded(out[mf.KEY][0])
        self.values[t] = self._rounded(out[mf.VALUE][0])
        self.length = t + 1
        return out[mf.EMBEDDING][0]

    def _rounded(self, row: np.ndarray) -> np.ndarray:
        return row if self.cache_dtype is None else np.asarray(row).astype(self.cache_dtype)

    def pop(self) -> None:
        """Forget the newest row (its slot is overwritten by the next step)."""
        self.length = max(0, self.length - 1)

    def reset(self) -> None:
        self.length = 0

    @classmethod
    def embed_sequence(cls, runner: Runner | None, features: np.ndarray,
                       cache_dtype: type | None = CACHE_DTYPE) -> np.ndarray:
        """``(T, E)`` embeddings of one sketch's ``(T, D)`` step features, oldest first, causally
        (with the cache a live session keeps, unless ``cache_dtype`` says otherwise)."""
        feats = np.asarray(features, np.float32)
        if runner is None:
            return feats.copy()
        head = cls(runner, feats.shape[1], max(len(feats), 1), cache_dtype)
        if not head.stateful:
            return runner.run({mf.FEATURES: feats})[mf.EMBEDDINGS]
        return np.stack([head.step(feats[t : t + 1]) for t in range(len(feats))])
