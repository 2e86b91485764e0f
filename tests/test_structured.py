"""Structured inputs whose spectra are known in closed form (often exactly).

Exactness claims are only made where the arithmetic of a radix-2/4 power-of-two FFT is exact:
sums of small integers, and multiplications by the twiddle W^0 = 1 or by exact zeros.  Other
lengths go through a mixed-radix FFT whose twiddles are rounded, so there we check "near-exact":
within the derived tolerance of ``oracles.tolerance``.  Concentrated spectra (constants, pure
tones) are where a per-element bound must hold for every input, not only for random rows.
"""
import numpy as np
import pytest

import circfft
from oracles import (assert_close, dft_matrix_packed, packed_irfft_oracle, packed_rfft_oracle,
                     round_trip_tolerance, row_norms, scale_factor, tolerance)

POW2 = [1, 2, 4, 8, 16, 64, 256, 1024, 4096, 2**16]
OTHER = [3, 5, 6, 7, 12, 15, 100, 243, 1000, 1023]
NORMS = [None, "backward", "ortho", "forward"]


def is_pow2(n):
    return n & (n - 1) == 0


def atol_rows(x):
    n = x.shape[-1]
    return np.array([tolerance(n, x.dtype, r) for r in row_norms(x)])[:, None]


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", POW2 + OTHER)
def test_small_integers(n, backend, dtype, rng):
    x = rng.integers(-8, 9, size=(9, n)).astype(dtype)
    X = circfft.rdfft(x, backend=backend)
    assert_close(X, packed_rfft_oracle(x), atol_rows(x))
    if is_pow2(n):
        # the sum and the alternating sum only add integers (W^0 = 1): exact
        np.testing.assert_array_equal(X[:, 0], x.sum(axis=-1))
        if n >= 2:
            alt = np.where(np.arange(n) % 2 == 0, 1, -1)
            np.testing.assert_array_equal(X[:, n // 2], (x * alt).sum(axis=-1))
    if n in (1, 2, 4):
        # all twiddles are 0 or +-1: the whole spectrum is integer and exact
        expected = np.rint(x.astype(np.float64) @ dft_matrix_packed(n).T)
        np.testing.assert_array_equal(X, expected)
    # the round trip recovers the integers exactly after rounding to nearest
    back = circfft.irdfft(X, backend=backend)
    np.testing.assert_array_equal(np.rint(back), x)
    assert np.max(np.abs(back - x)) < 0.5


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32, 128, 256, 3, 5, 12, 15, 100, 243])
def test_impulses(n, backend, dtype):
    """Delta at j: the spectrum is column j of the DFT matrix, cos rows then -sin rows."""
    x = np.eye(n, dtype=dtype)                   # row j = delta at j
    X = circfft.rdfft(x, backend=backend)
    R = dft_matrix_packed(n)
    assert_close(X, R.T, tolerance(n, dtype, 1.0))
    # written out for one j, independently of R
    j = n // 3
    k = np.arange(n // 2 + 1)
    assert_close(X[j, : n // 2 + 1], np.cos(2 * np.pi * ((j * k) % n) / n), tolerance(n, dtype, 1.0))
    ki = np.arange(1, (n + 1) // 2)
    assert_close(X[j, n - ki], -np.sin(2 * np.pi * ((j * ki) % n) / n), tolerance(n, dtype, 1.0))
    # delta at 0: all real slots 1, all imaginary slots 0 (exact for powers of two)
    expected0 = np.zeros(n)
    expected0[: n // 2 + 1] = 1.0
    if is_pow2(n):
        np.testing.assert_array_equal(X[0], expected0)
    else:
        assert_close(X[0], expected0, tolerance(n, dtype, 1.0))
    # inverse of an impulse in slot k is a cosine (slot k) or a -sine (slot n-k) over n
    Xi = circfft.irdfft(np.eye(n, dtype=dtype), backend=backend)
    w = np.full(n, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[n // 2] = 1.0
    assert_close(Xi, (w[:, None] * R) / n, tolerance(n, dtype, 2.0) / n)


@pytest.mark.parametrize("n", POW2 + OTHER)
@pytest.mark.parametrize("norm", NORMS)
def test_constants(n, norm, backend, dtype):
    c = np.array([3.0, -1.5, 0.25, 1e3], dtype=dtype)[:, None]
    x = np.broadcast_to(c, (4, n)).copy()
    X = circfft.rdfft(x, norm=norm, backend=backend)
    s = scale_factor(n, norm, True)
    expected0 = (c[:, 0].astype(np.float64) * n) * s
    if is_pow2(n):
        # z = c(1 + i): every difference is an exact 0 and every other slot stays exactly 0
        np.testing.assert_array_equal(X[:, 1:], 0.0)
        assert_close(X[:, 0], expected0, np.abs(expected0) * np.finfo(dtype).eps)
    else:
        assert_close(X[:, 1:], np.zeros((4, n - 1)), atol_rows(x) * s)
        assert_close(X[:, 0], expected0, atol_rows(x)[:, 0] * s)
    # inverse of slot 0 alone is a constant
    Y = np.zeros((4, n), dtype=dtype)
    Y[:, 0] = c[:, 0]
    y = circfft.irdfft(Y, norm=norm, backend=backend)
    expected = np.broadcast_to(c.astype(np.float64) * scale_factor(n, norm, False), (4, n))
    assert_close(y, expected, atol_rows(Y) * scale_factor(n, norm, False))


@pytest.mark.parametrize("n", [2, 4, 8, 16, 64, 1024, 2**16, 6, 12, 100, 1000])
def test_alternating_signs(n, backend, dtype):
    """(-1)^j: only the Nyquist slot n/2 is nonzero (value n)."""
    x = np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(dtype)[None, :] * \
        np.array([1.0, -2.0, 0.5], dtype=dtype)[:, None]
    X = circfft.rdfft(x, backend=backend)
    expected = np.zeros((3, n))
    expected[:, n // 2] = x[:, 0].astype(np.float64) * n
    if is_pow2(n):
        np.testing.assert_array_equal(X, expected)
    else:
        assert_close(X, expected, atol_rows(x))
    back = circfft.irdfft(expected.astype(dtype), backend=backend)
    assert_close(back, x, atol_rows(expected) / n)


@pytest.mark.parametrize("n", [2**12, 2**16, 2**17, 2**20, 3 * 2**12, 1009])
def test_pure_tones_concentrated_spectra(n, backend, dtype):
    """Pure tones put the whole spectrum into one or two slots; the rounding errors of the
    others are of the size of eps * max|X| = eps * sqrt(n/2) ||x||_2, larger than the error of
    a random row (the bound of `oracles.tolerance` covers both; a bound divided by sqrt(n), as
    for random rows, is exceeded here in float32 from n = 2^17 on)."""
    j = np.arange(n)
    x = np.stack([np.cos(2 * np.pi * ((j * 1001) % n) / n),
                  3 * np.sin(2 * np.pi * ((j * 7) % n) / n),
                  np.full(n, 0.1),                                   # not exact in binary
                  np.cos(2 * np.pi * ((j * (n // 2 - 1)) % n) / n)]).astype(dtype)
    X = circfft.rdfft(x, backend=backend)
    assert_close(X, packed_rfft_oracle(x), atol_rows(x))
    back = circfft.irdfft(X.copy(), backend=backend)
    assert_close(back, x, np.array([round_trip_tolerance(n, dtype, r)
                                    for r in row_norms(x)])[:, None])


@pytest.mark.parametrize("n", [4, 8, 16, 64, 1024, 2**15, 12, 100, 243, 1000])
def test_spectra_with_exact_zeros(n, backend, dtype, rng):
    rows = 3
    tol = None
    # (a) a pattern of period p repeated n/p times: only multiples of n/p are nonzero
    for p in [d for d in (1, 2, 3, 4, 5, 8) if n % d == 0 and d < n]:
        x = np.tile(rng.standard_normal((rows, p)), (1, n // p)).astype(dtype)
        X = circfft.rdfft(x, backend=backend)
        tol = atol_rows(x)
        assert_close(X, packed_rfft_oracle(x), tol)
        k = np.arange(n)
        freq = np.minimum(k, n - k)                # slot k and n-k both belong to frequency k
        zero_slots = (freq % (n // p)) != 0
        assert zero_slots.any()
        assert_close(X[:, zero_slots], np.zeros((rows, zero_slots.sum())), tol,
                     err_msg=f"period {p}")
    # (b) even symmetry x[j] = x[n-j]: all imaginary slots vanish
    x = rng.standard_normal((rows, n))
    x = (x + np.roll(x[:, ::-1], 1, axis=-1)).astype(dtype)
    np.testing.assert_array_equal(x[:, 1:], x[:, :0:-1])
    X = circfft.rdfft(x, backend=backend)
    imag = np.arange(n // 2 + 1, n)
    assert_close(X[:, imag], np.zeros((rows, imag.size)), atol_rows(x))
    # (c) odd symmetry x[j] = -x[n-j] (so x[0] = x[n/2] = 0): all real slots vanish
    x = rng.standard_normal((rows, n))
    x = (x - np.roll(x[:, ::-1], 1, axis=-1)).astype(dtype)
    X = circfft.rdfft(x, backend=backend)
    real = np.arange(0, n // 2 + 1)
    assert_close(X[:, real], np.zeros((rows, real.size)), atol_rows(x))
    assert_close(X, packed_rfft_oracle(x), atol_rows(x))


@pytest.mark.parametrize("n", [1, 2, 3, 8, 100, 1024, 2**16])
@pytest.mark.parametrize("norm", NORMS)
def test_zeros_give_zeros_exactly(n, norm, backend, dtype):
    x = np.zeros((5, n), dtype=dtype)
    np.testing.assert_array_equal(circfft.rdfft(x, norm=norm, backend=backend), 0.0)
    np.testing.assert_array_equal(circfft.irdfft(x, norm=norm, backend=backend), 0.0)
    y = x.copy()
    assert circfft.rdfft(y, norm=norm, out=y, backend=backend) is y
    np.testing.assert_array_equal(y, 0.0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("n", [1, 2, 8, 64, 1024, 2**14, 12, 243])
@pytest.mark.parametrize("fn", ["rdfft", "irdfft"])
def test_nan_and_inf_propagate(n, fn, backend, dtype, rng):
    """A NaN/Inf in one row makes that row non-finite somewhere; other rows are unaffected."""
    transform = getattr(circfft, fn)
    oracle = packed_rfft_oracle if fn == "rdfft" else packed_irfft_oracle
    rows = 19                                 # spans several SIMD lane groups
    x = rng.standard_normal((rows, n)).astype(dtype)
    x[5, n // 2] = np.nan
    x[11, 0] = np.inf
    x[16, n - 1] = -np.inf
    bad = [5, 11, 16]
    good = [r for r in range(rows) if r not in bad]
    for out_is_x in (False, True):
        y = x.copy()
        Y = transform(y, out=y if out_is_x else None, backend=backend)
        assert np.isnan(Y[5]).any()
        for r in (11, 16):
            assert not np.isfinite(Y[r]).all()
        assert np.isfinite(Y[good]).all()
        ref = oracle(x[good])
        if fn == "rdfft":
            tol = atol_rows(x[good])
        else:
            from oracles import full_spectrum_norm
            tol = np.array([tolerance(n, dtype, r) / n
                            for r in full_spectrum_norm(x[good])])[:, None]
        assert_close(Y[good], ref, tol)
