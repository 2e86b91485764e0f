"""NaN and Inf inputs: the documented rule (``docs/layout.rst``, "Non-finite values").

Every output slot that numpy.fft computes as NaN or +-Inf is NaN or +-Inf here too, in both
directions and on every CPU backend; a finite input never gives a non-finite output.  (Where a
twiddle factor is exactly 0, numpy.fft may return 0 for a slot fed by an infinite input, and
circfft NaN: 0 * inf.  That is the one documented difference.)
"""
import numpy as np
import pytest

import circfft
from oracles import pack_complex

CASES = [[np.inf, 0, 0, 0], [np.inf, 1, 2, 3, 4, 5, 6, 7], [1, np.nan, 0, 0, 0, 0, 0, 0],
         [0] * 5 + [-np.inf] + [0] * 10, [np.inf, -np.inf] + [0] * 30, [np.nan] * 6]


@pytest.mark.parametrize("values", CASES, ids=lambda v: str(len(v)))
def test_non_finite_propagates_where_numpy_does(values, backend):
    x = np.array(values, dtype=np.float64)
    n = x.size
    with np.errstate(all="ignore"):
        expected_fwd = pack_complex(np.fft.rfft(x), n)
        got_fwd = circfft.rdfft(x, backend=backend)
        expected_inv = np.fft.irfft(np.fft.rfft(x), n)
        got_inv = circfft.irdfft(got_fwd, backend=backend)
    assert np.all(~np.isfinite(got_fwd)[~np.isfinite(expected_fwd)])
    assert np.all(~np.isfinite(got_inv)[~np.isfinite(expected_inv)])
    finite = np.isfinite(expected_fwd) & np.isfinite(got_fwd)
    assert np.allclose(got_fwd[finite], expected_fwd[finite])


def test_finite_input_gives_finite_output(backend):
    x = np.random.default_rng(1).standard_normal((4, 64)) * 1e300
    with np.errstate(over="ignore"):
        assert np.isfinite(circfft.rdfft(x / 64, backend=backend)).all()
