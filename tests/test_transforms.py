"""Accuracy of rdfft/irdfft against independent oracles, both CPU backends, float32/float64.

Every comparison is elementwise with the derived per-element tolerance of ``oracles.tolerance``
(the normwise bound ``(8 log2 n + 1) * eps * sqrt(n) * ||row||_2``, times the normalisation
factor), computed per row.  Non-power-of-two lengths are computed by ``numpy.fft`` inside
circfft, so besides the ``numpy.fft`` oracles they are checked against an O(n^2) DFT summed in
extended precision (``oracles.extended_rdfft_oracle``), which shares no code with any FFT.
"""
import functools

import numpy as np
import pytest

import circfft
from conftest import require
from oracles import (assert_close, dft_matrix_packed, extended_irdfft_oracle,
                     extended_rdfft_oracle, fft_relative_error, full_spectrum_norm,
                     packed_irfft_oracle, packed_rfft_oracle, round_trip_tolerance, row_norms,
                     scale_factor, tolerance)

NORMS = [None, "backward", "ortho", "forward"]
POW2 = [2**p for p in range(0, 21)]
OTHER_LENGTHS = [3, 5, 6, 7, 12, 15, 100, 243, 1000, 1023]


def rows_for(n: int) -> int:
    """Few rows for long transforms; 19 (not a multiple of any SIMD lane count) for short ones."""
    if n <= 2**13:
        return 19
    return max(1, 2**18 // n - 1)


def random_rows(rng, rows, n, dtype):
    return rng.standard_normal((rows, n)).astype(dtype)


def forward_atol(x, norm=None, axis=-1):
    """Per-row tolerance, shaped to broadcast against the packed result."""
    n = x.shape[axis]
    norms = row_norms(x, axis=axis)
    tol = np.vectorize(lambda r: tolerance(n, x.dtype, r))(norms) * scale_factor(n, norm, True)
    return np.expand_dims(tol, axis)


def inverse_atol(X, norm=None, axis=-1):
    n = X.shape[axis]
    norms = full_spectrum_norm(X, axis=axis)
    tol = np.vectorize(lambda r: tolerance(n, X.dtype, r))(norms) * scale_factor(n, norm, False)
    return np.expand_dims(tol, axis)


def check_forward(x, backend, norm=None, axis=-1, **kw):
    x0 = x.copy()
    X = circfft.rdfft(x, axis, norm, backend=backend, **kw)
    np.testing.assert_array_equal(x, x0)        # out=None leaves x alone
    assert X.dtype == x.dtype and X.shape == x.shape
    assert_close(X, packed_rfft_oracle(x, axis=axis, norm=norm), forward_atol(x, norm, axis),
                 err_msg=f"rdfft n={x.shape[axis]} {x.dtype} backend={backend} norm={norm}")
    return X


def check_inverse(X, backend, norm=None, axis=-1, **kw):
    X0 = X.copy()
    x = circfft.irdfft(X, axis, norm, backend=backend, **kw)
    np.testing.assert_array_equal(X, X0)
    assert x.dtype == X.dtype and x.shape == X.shape
    assert_close(x, packed_irfft_oracle(X, axis=axis, norm=norm), inverse_atol(X, norm, axis),
                 err_msg=f"irdfft n={X.shape[axis]} {X.dtype} backend={backend} norm={norm}")
    return x


# --------------------------------------------------------------------------------------------
# Every power of two from 1 to 2^20, and other lengths
# --------------------------------------------------------------------------------------------
def _pow2_params():
    for n in POW2:
        for be in ("numpy", "numba"):
            marks = []  # the numpy backend takes ~1 s at 2^20: not worth a slow mark
            yield pytest.param(n, be, marks=marks, id=f"{be}-n{n}")


@pytest.mark.parametrize("n,backend_name", list(_pow2_params()))
def test_powers_of_two(n, backend_name, dtype, rng):
    x = random_rows(rng, rows_for(n), n, dtype)
    check_forward(x, backend_name)
    X = random_rows(rng, rows_for(n), n, dtype)
    check_inverse(X, backend_name)


@pytest.mark.parametrize("n", OTHER_LENGTHS)
def test_other_lengths(n, backend, dtype, rng):
    x = random_rows(rng, 7, n, dtype)
    check_forward(x, backend)
    check_inverse(random_rows(rng, 7, n, dtype), backend)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 12, 15, 16, 32, 64, 100, 128, 243, 256,
                               512, 1000, 1023, 1024])
def test_against_dft_matrix(n, backend, dtype, rng):
    """O(n^2) cos/sin matrix: independent of numpy.fft (which non-power-of-two lengths use)."""
    R = dft_matrix_packed(n)
    x = random_rows(rng, 5, n, dtype)
    X = circfft.rdfft(x, backend=backend)
    expected = x.astype(np.float64) @ R.T
    assert_close(X, expected, forward_atol(x), err_msg=f"rdfft vs DFT matrix, n={n}")
    # Inverse: unnormalised inverse is R^T diag(w) X, with w = 1 at 0 (and n/2), 2 elsewhere.
    X = random_rows(rng, 5, n, dtype)
    w = np.full(n, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[n // 2] = 1.0
    expected = (X.astype(np.float64) * w) @ R / n
    x = circfft.irdfft(X, backend=backend)
    assert_close(x, expected, inverse_atol(X), err_msg=f"irdfft vs DFT matrix, n={n}")


#: Lengths for the extended-precision DFT: primes, 3 * 2^k, 5 * 2^k (numpy.fft's mixed radix
#: and Bluestein paths inside circfft) and powers of two (circfft's own kernels), up to 2^12.
EXTENDED_LENGTHS = [1, 2, 3, 5, 7, 13, 97, 1009, 6, 12, 48, 384, 3 * 2**10, 10, 20, 160,
                    5 * 2**9, 8, 256, 2**12]


@functools.lru_cache(maxsize=None)
def _extended_case(n):
    """Rows exactly representable in float32 (so both dtypes see the same numbers) -- random,
    an impulse at 1 (the DFT's first column), small integers, a constant -- and their
    extended-precision spectra / inverse spectra."""
    rng = np.random.default_rng(n)
    x = np.stack([rng.standard_normal(n), np.eye(1, n, min(1, n - 1))[0],
                  rng.integers(-8, 9, n).astype(np.float64), np.full(n, 0.3),
                  rng.standard_normal(n)]).astype(np.float32).astype(np.float64)
    return x, extended_rdfft_oracle(x), extended_irdfft_oracle(x)


@pytest.mark.parametrize("n", EXTENDED_LENGTHS)
def test_against_extended_precision_dft(n, backend, dtype):
    """rdfft / irdfft (out of place and in place) against the O(n^2) extended-precision DFT:
    for n that are not powers of two circfft calls numpy.fft, which the numpy.fft oracles share;
    this oracle shares nothing with any FFT."""
    x64, X_ext, x_ext = _extended_case(n)
    x = x64.astype(dtype)
    for out_is_x in (False, True):
        y = x.copy()
        X = circfft.rdfft(y, out=y if out_is_x else None, backend=backend)
        assert_close(X, X_ext, forward_atol(x),
                     err_msg=f"rdfft vs extended DFT, n={n} in_place={out_is_x}")
        y = x.copy()
        xi = circfft.irdfft(y, out=y if out_is_x else None, backend=backend)
        assert_close(xi, x_ext, inverse_atol(x),
                     err_msg=f"irdfft vs extended DFT, n={n} in_place={out_is_x}")


@pytest.mark.parametrize("n", [8, 64, 1024, 2**14, 2**16])
@pytest.mark.parametrize("workers", [1, 2, -1])
def test_workers(n, workers, backend, dtype, rng):
    x = random_rows(rng, 37, n, dtype)
    check_forward(x, backend, workers=workers)
    check_inverse(x, backend, workers=workers)


# --------------------------------------------------------------------------------------------
# norm, round trips, linearity, Parseval
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n", [1, 2, 8, 15, 64, 100, 1024, 4096])
def test_every_norm(n, norm, backend, dtype, rng):
    x = random_rows(rng, 3, n, dtype)
    X = check_forward(x, backend, norm=norm)
    # The same against numpy's complex rfft with the same norm (unpacked by to_rfft).
    Y = np.fft.rfft(x.astype(np.float64), norm=norm)
    assert_close(circfft.to_rfft(X).real, Y.real, forward_atol(x, norm))
    assert_close(circfft.to_rfft(X).imag, Y.imag, forward_atol(x, norm))
    # Inverse vs numpy.fft.irfft with the same norm.
    Xr = random_rows(rng, 3, n, dtype)
    x_inv = check_inverse(Xr, backend, norm=norm)
    ref = np.fft.irfft(circfft.to_rfft(Xr.astype(np.float64)), n, norm=norm)
    assert_close(x_inv, ref, inverse_atol(Xr, norm))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n", [1, 2, 4, 7, 16, 100, 1024, 2**15])
def test_round_trip(n, norm, backend, dtype, rng):
    x = random_rows(rng, 5, n, dtype)
    back = circfft.irdfft(circfft.rdfft(x, norm=norm, backend=backend), norm=norm,
                          backend=backend)
    # oracles.round_trip_tolerance: (1 + sqrt 2) rel(n) ||x||_2 for any norm (the
    # normalisations cancel)
    atol = np.vectorize(lambda r: round_trip_tolerance(n, dtype, r))(row_norms(x))[:, None]
    assert_close(back, x, atol, err_msg="irdfft(rdfft(x)) != x")
    # and the other way round: the same argument on the spectrum side, ||X_full|| / sqrt(n)
    # in place of ||x||, times sqrt(n) for the scale of a spectrum
    X = random_rows(rng, 5, n, dtype)
    again = circfft.rdfft(circfft.irdfft(X, norm=norm, backend=backend), norm=norm,
                          backend=backend)
    atol = np.vectorize(lambda r: round_trip_tolerance(n, dtype, r))(
        full_spectrum_norm(X))[:, None]
    assert_close(again, X, atol, err_msg="rdfft(irdfft(X)) != X")


@pytest.mark.parametrize("n", [1, 6, 16, 243, 2048])
def test_linearity(n, backend, dtype, rng):
    x, y = random_rows(rng, 2, n, dtype)
    a, b = 1.75, -0.5             # exactly representable: a*x + b*y rounds once per element
    z = (a * x + b * y).astype(dtype)
    lhs = circfft.rdfft(z, backend=backend)
    rhs = a * circfft.rdfft(x, backend=backend).astype(np.float64) \
        + b * circfft.rdfft(y, backend=backend).astype(np.float64)
    # z differs from a*x+b*y by at most eps*|a x + b y| per element: that propagates as
    # ||error of z||_2 * sqrt(n) at worst into one output; the transform errors add up too.
    eps = np.finfo(dtype).eps
    zerr = eps * np.linalg.norm(a * x.astype(np.float64) + b * y.astype(np.float64)) * np.sqrt(n)
    atol = (tolerance(n, dtype, np.linalg.norm(z)) + abs(a) * tolerance(n, dtype, np.linalg.norm(x))
            + abs(b) * tolerance(n, dtype, np.linalg.norm(y)) + zerr)
    assert_close(lhs, rhs, atol)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 9, 64, 243, 1000, 4096, 2**16])
def test_parseval_packed(n, backend, dtype, rng):
    x = random_rows(rng, 4, n, dtype)
    X = circfft.rdfft(x, backend=backend).astype(np.float64)
    energy = np.sum(x.astype(np.float64) ** 2, axis=-1)
    if n % 2 == 0:
        # sum x^2 = (X0^2 + X_{n/2}^2 + 2 * sum of the other slots^2) / n
        others = np.sum(X ** 2, axis=-1) - X[:, 0] ** 2 - X[:, n // 2] ** 2
        spectral = (X[:, 0] ** 2 + X[:, n // 2] ** 2 + 2 * others) / n
    else:
        # odd n: no Nyquist slot; sum x^2 = (X0^2 + 2 * sum of slots 1..n-1 ^2) / n
        spectral = (X[:, 0] ** 2 + 2 * np.sum(X[:, 1:] ** 2, axis=-1)) / n
    # sum w (X~^2 - X^2) = sum w (X~ - X)(X~ + X): relative energy error <= 2 r (1 + r) with r
    # the normwise relative error of the full spectrum (<= sqrt(2) fft_relative_error: each
    # packed slot appears twice in it), plus the float64 sums (pairwise, log2(n) eps)
    r = np.sqrt(2) * fft_relative_error(n, dtype)
    rel = 2 * r * (1 + r) + 2 * (np.log2(max(n, 2)) + 2) * np.finfo(np.float64).eps
    np.testing.assert_allclose(spectral, energy, rtol=rel, atol=0)
    # ortho: the packed weighted norm equals the signal norm
    Xo = circfft.rdfft(x, norm="ortho", backend=backend).astype(np.float64)
    w = np.full(n, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[n // 2] = 1.0
    np.testing.assert_allclose(np.sum(w * Xo ** 2, axis=-1), energy, rtol=rel, atol=0)


# --------------------------------------------------------------------------------------------
# Backends agree to rounding; any axis
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32, 64, 128, 1024, 4096, 2**14, 2**17, 15, 100])
def test_backends_agree(n, dtype, rng):
    require("numba")
    x = random_rows(rng, rows_for(n), n, dtype)
    for fn in (circfft.rdfft, circfft.irdfft):
        a = fn(x, backend="numpy")
        b = fn(x, backend="numba", workers=2)
        atol = 2 * (forward_atol(x) if fn is circfft.rdfft else inverse_atol(x))
        assert_close(a, b, atol, err_msg=f"{fn.__name__} numpy vs numba")


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
def test_any_axis(axis, backend, dtype, rng):
    x = rng.standard_normal((8, 6, 16)).astype(dtype)
    for norm in (None, "ortho"):
        check_forward(x, backend, norm=norm, axis=axis)
        check_inverse(x, backend, norm=norm, axis=axis)


def test_one_dimensional_and_many_dimensional(backend, dtype, rng):
    for shape in [(32,), (2, 3, 4, 32), (1, 1, 1, 1, 8)]:
        x = rng.standard_normal(shape).astype(dtype)
        check_forward(x, backend)
        check_inverse(x, backend)


# --------------------------------------------------------------------------------------------
# The checks can fail: a layout bug of one slot is far above the tolerance
# --------------------------------------------------------------------------------------------
def _layout_mutants(X, n):
    """Plausible layout bugs applied to a correct packed spectrum: each moves O(|X_k|), i.e.
    O(||x||_2) on a random row, in at least one slot."""
    h = n // 2
    m = X.copy()                                 # imaginary parts off by one (X[n-k-1])
    m[..., h + 1:] = np.roll(X[..., h + 1:], 1, axis=-1)
    yield "imag off by one", m
    m = X.copy()                                 # imaginary parts in ascending order
    m[..., h + 1:] = X[..., h + 1:][..., ::-1]
    yield "imag reversed", m
    yield "conjugated", np.concatenate([X[..., : h + 1], -X[..., h + 1:]], axis=-1)
    m = X.copy()
    m[..., [1, 2]] = X[..., [2, 1]]              # two real slots swapped
    yield "real slots swapped", m


def _twiddle_shifted_spectrum(x):
    """Packed spectrum computed with the split step's twiddle one index off: ``Y_k = E_k +
    W^(k+1) O_k`` instead of ``W^k`` (E, O the DFTs of the even and odd samples), in float64.
    The error is ``|W^(k+1) - W^k| |O_k| ~ (2 pi / n) ||x||_2 / sqrt(2)`` per slot."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    E, O = np.fft.fft(x[..., 0::2]), np.fft.fft(x[..., 1::2])
    k = np.arange(n // 2 + 1)
    Y = E[..., k % (n // 2)] + np.exp(-2j * np.pi * (k + 1) / n) * O[..., k % (n // 2)]
    out = np.zeros(x.shape)
    out[..., : n // 2 + 1] = Y.real
    ki = np.arange(1, (n + 1) // 2)
    out[..., n - ki] = Y[..., ki].imag
    return out


@pytest.mark.parametrize("n", [8, 64, 1024, 2**16, 2**20])
def test_checks_detect_layout_bugs(n, rng):
    """The tolerances used above reject every layout mutant, in both dtypes and at every
    length (so the tests can fail), and a twiddle one index off wherever it is above the
    rounding of the dtype: always in float64; in float32 up to n = 1024 (beyond, the shift's
    (2 pi / n) ||x|| is below float32's own rounding bound, and the float64 runs of the same
    index arithmetic catch it)."""
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((1, n)).astype(dtype)
        X = packed_rfft_oracle(x)
        for name, mutant in _layout_mutants(X, n):
            with pytest.raises(AssertionError):
                assert_close(mutant, X, forward_atol(x), err_msg=name)
        if dtype == np.float64 or n <= 1024:
            with pytest.raises(AssertionError):
                assert_close(_twiddle_shifted_spectrum(x), X, forward_atol(x),
                             err_msg="twiddle shifted")


class _MutantBackend:
    """Wraps the numpy backend and corrupts its output the way real bugs would."""

    def __init__(self, mutation):
        from circfft.backends.numpy_backend import NumpyBackend

        self.inner = NumpyBackend()
        self.mutation = mutation

    def make(self):
        from circfft.backends import Backend

        outer = self

        class Mutant(Backend):
            name = f"mutant-{outer.mutation}"
            family = "numpy"

            def execute(self, x, *, forward, scale, workers):
                outer.inner.execute(x, forward=forward, scale=scale, workers=workers)
                n = x.shape[-1]
                m = outer.mutation
                if m == "imag off by one":
                    x[..., n // 2 + 1:] = np.roll(x[..., n // 2 + 1:].copy(), 1, axis=-1)
                elif m == "conjugated":
                    x[..., n // 2 + 1:] *= -1
                elif m == "dc and nyquist swapped":
                    x[..., [0, n // 2]] = x[..., [n // 2, 0]].copy()
                elif m == "one slot off by 1e-4":
                    x[..., 3] *= 1 + 1e-4
                elif m == "scale applied twice":
                    x *= scale
        return Mutant()


@pytest.mark.parametrize("mutation", ["imag off by one", "conjugated", "dc and nyquist swapped",
                                      "one slot off by 1e-4", "scale applied twice"])
def test_a_broken_backend_fails_these_checks(mutation, rng):
    """The same checks as above, run on deliberately broken backends, must fail."""
    broken = _MutantBackend(mutation).make()
    x = random_rows(rng, 19, 64, np.float64)
    with pytest.raises(AssertionError):
        check_forward(x, broken, norm="ortho")
    with pytest.raises(AssertionError):
        check_inverse(x, broken, norm="ortho")


def test_a_backend_skipping_the_last_row_fails(rng):
    """A lane-remainder bug (the last, partial group of rows left untransformed)."""
    from circfft.backends import Backend
    from circfft.backends.numpy_backend import NumpyBackend

    class SkipsLastRow(Backend):
        name = "skips-last-row"

        def execute(self, x, *, forward, scale, workers):
            rows = x.reshape(-1, x.shape[-1])
            NumpyBackend().execute(rows[:-1], forward=forward, scale=scale, workers=workers)

    x = random_rows(rng, 19, 64, np.float64)
    with pytest.raises(AssertionError):
        check_forward(x, SkipsLastRow())


@pytest.mark.slow
@pytest.mark.parametrize("n", [2**21, 2**22, 2**23, 2**24])
def test_large_powers_of_two_in_place(n, backend, dtype, rng):
    """The issue asks for every power of two up to at least 2^24, in place."""
    x = rng.standard_normal((1, n)).astype(dtype)
    before = x.copy()
    assert circfft.rdfft(x, out=x, backend=backend, workers=2) is x
    assert_close(x, packed_rfft_oracle(before), forward_atol(before))
    X = x.copy()
    assert circfft.irdfft(x, out=x, backend=backend, workers=2) is x
    assert_close(x, packed_irfft_oracle(X), inverse_atol(X))
