"""A calibration reader in onnxruntime's ``CalibrationDataReader`` shape over a :class:`PrefixSet`.

onnxruntime's calibrators pull ``{input_name: batch}`` dicts from ``get_next()`` until it returns
None; ``set_range`` lets the strided MinMax mode walk the set in slices, and ``rewind`` lets the
same reader serve several calibration methods in one recipe search.
"""

from __future__ import annotations

from onnxruntime.quantization import CalibrationDataReader

from dcssa.calibration.calibset import PrefixSet
from dcssa.runtime.contract import manifest as mf


class PrefixReader(CalibrationDataReader):
    """Feeds preprocessed stroke-prefix rasters, ``batch_size`` at a time, to a calibrator."""

    def __init__(self, prefixes: PrefixSet, *, input_name: str = mf.IMAGES, batch_size: int = 1) -> None:
        self.prefixes = prefixes
        self.input_name = input_name
        self.batch_size = max(1, int(batch_size))
        self.start, self.stop = 0, len(prefixes)
        self._pos = 0

    def __len__(self) -> int:
        """Number of batches in the current range."""
        return -(-(self.stop - self.start) // self.batch_size)

    def get_next(self) -> dict | None:
        i = self.start + self._pos * self.batch_size
        if i >= self.stop:
            return None
        self._pos += 1
        return {self.input_name: self.prefixes.images(i, min(i + self.batch_size, self.stop))}

    def rewind(self) -> None:
        self._pos = 0

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restrict to batches ``start_index:end_index`` (batch indices, as onnxruntime passes)."""
        n = len(self.prefixes)
        self.start = min(n, start_index * self.batch_size)
        self.stop = min(n, end_index * self.batch_size)
        self._pos = 0
