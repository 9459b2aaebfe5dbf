"""The calibration reader follows onnxruntime's ``CalibrationDataReader`` protocol."""

from __future__ import annotations

import numpy as np

from dcssa.calibration.calibset import prefix_set, synthetic_sketches
from dcssa.calibration.reader import PrefixReader


def test_reader_follows_onnxruntime_protocol():
    ps = prefix_set(synthetic_sketches(1, seed=2))
    n = len(ps)
    r = PrefixReader(ps, batch_size=2)
    assert len(r) == -(-n // 2)
    got = list(iter(r.get_next, None))
    assert sum(len(b["images"]) for b in got) == n
    np.testing.assert_array_equal(got[0]["images"], ps.images(0, 2))
    r.set_range(1, 2)
    only = list(iter(r.get_next, None))
    assert len(only) == 1
    np.testing.assert_array_equal(only[0]["images"], ps.images(2, 4))
    r.rewind()
    np.testing.assert_array_equal(r.get_next()["images"], ps.images(2, 4))
