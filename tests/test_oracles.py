"""The oracles must be right before anything is tested against them: check them against each
other (numpy.fft vs scipy.fft vs the cos/sin matrix) and against a worked example."""
import numpy as np
import pytest
import scipy.fft

from oracles import (TOL_C, circular_convolution_oracle, circular_correlation_oracle,
                     dft_matrix_packed, extended_irdfft_oracle, extended_rdfft_oracle,
                     fft_relative_error, full_spectrum_norm, pack_complex, packed_irfft_oracle,
                     packed_rfft_oracle, packed_weights, round_trip_tolerance, scale_factor,
                     tolerance, unpack_to_complex)


def test_worked_example_n8():
    # docs/layout.rst: n = 8 -> [Re0, Re1, Re2, Re3, Re4, Im3, Im2, Im1]
    x = np.array([1.0, 2.0, 0.0, -1.0, 3.0, 0.5, -2.0, 4.0])
    Y = np.fft.rfft(x)
    X = packed_rfft_oracle(x)
    expected = [Y[0].real, Y[1].real, Y[2].real, Y[3].real, Y[4].real,
                Y[3].imag, Y[2].imag, Y[1].imag]
    np.testing.assert_array_equal(X, expected)


def test_small_known_values():
    np.testing.assert_array_equal(packed_rfft_oracle(np.array([1.0, 2.0, 0.0, -1.0])),
                                  [2.0, 1.0, 0.0, -3.0])
    np.testing.assert_array_equal(packed_rfft_oracle(np.array([3.0])), [3.0])
    np.testing.assert_array_equal(packed_rfft_oracle(np.array([3.0, 1.0])), [4.0, 2.0])
    # odd n = 3: [Re0, Re1, Im1]
    x = np.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(packed_rfft_oracle(x), [1.0, 1.0, 0.0], atol=1e-15)
    x = np.array([0.0, 1.0, 0.0])   # Y1 = exp(-2 pi i / 3)
    np.testing.assert_allclose(packed_rfft_oracle(x),
                               [1.0, np.cos(2 * np.pi / 3), -np.sin(2 * np.pi / 3)], atol=1e-15)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 31, 64, 100])
def test_dft_matrix_matches_numpy_and_scipy(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, n))
    R = dft_matrix_packed(n)
    X = packed_rfft_oracle(x)
    atol = tolerance(n, np.float64, np.linalg.norm(x, axis=-1).max())
    np.testing.assert_allclose(x @ R.T, X, rtol=0, atol=atol)
    Xs = pack_complex(scipy.fft.rfft(x), n)
    np.testing.assert_allclose(Xs, X, rtol=0, atol=atol)
    # R R^T = n diag(w/2 ... ): rows are orthogonal with squared norms n/w' (docs/operators.rst, "Gradients without saved buffers")
    G = R @ R.T
    wdiag = np.where(packed_weights(n) == 1.0, 1.0, 0.5)
    np.testing.assert_allclose(G, n * np.diag(wdiag), atol=1e-9 * n)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 15, 16, 1000])
@pytest.mark.parametrize("norm", [None, "backward", "ortho", "forward"])
def test_round_trip_and_norms(n, norm):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, n))
    X = packed_rfft_oracle(x, norm=norm)
    np.testing.assert_allclose(X, pack_complex(np.fft.rfft(x, norm=norm), n), atol=0)
    np.testing.assert_allclose(packed_irfft_oracle(X, norm=norm), x, atol=1e-12 * max(1, n))
    # scale_factor agrees with numpy's normalisation
    X_back = packed_rfft_oracle(x)
    np.testing.assert_allclose(X, X_back * scale_factor(n, norm, True), atol=1e-12 * n)


@pytest.mark.parametrize("n", [2, 3, 8, 9, 4097, 8192])
def test_loops_and_index_arrays_agree(n):
    rng = np.random.default_rng(n)
    Y = rng.standard_normal((2, n // 2 + 1)) + 1j * rng.standard_normal((2, n // 2 + 1))
    a = pack_complex(Y, n, use_loops=True)
    b = pack_complex(Y, n, use_loops=False)
    np.testing.assert_array_equal(a, b)
    X = rng.standard_normal((2, n))
    np.testing.assert_array_equal(unpack_to_complex(X, use_loops=True),
                                  unpack_to_complex(X, use_loops=False))


@pytest.mark.parametrize("n", [1, 2, 5, 8, 33])
def test_parseval_weights_and_full_norm(n):
    x = np.random.default_rng(n).standard_normal(n)
    X = packed_rfft_oracle(x)
    np.testing.assert_allclose(np.sum(packed_weights(n) * X * X), n * np.sum(x * x), rtol=1e-12)
    np.testing.assert_allclose(full_spectrum_norm(X), np.linalg.norm(np.fft.fft(x)), rtol=1e-12)


def test_axis_argument():
    x = np.random.default_rng(0).standard_normal((6, 4, 5))
    for axis in range(3):
        X = packed_rfft_oracle(x, axis=axis)
        ref = np.moveaxis(packed_rfft_oracle(np.moveaxis(x, axis, -1)), -1, axis)
        np.testing.assert_array_equal(X, ref)
        np.testing.assert_allclose(packed_irfft_oracle(X, axis=axis), x, atol=1e-12)


def test_convolution_oracles():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 9))
    np.testing.assert_allclose(circular_convolution_oracle(a, b),
                               np.fft.irfft(np.fft.rfft(a) * np.fft.rfft(b), 9), atol=1e-12)
    np.testing.assert_allclose(circular_correlation_oracle(a, b),
                               np.fft.irfft(np.conj(np.fft.rfft(a)) * np.fft.rfft(b), 9),
                               atol=1e-12)


def test_tolerance_is_derived():
    eps32 = np.finfo(np.float32).eps
    # the normwise bound on ||F x||_2 = sqrt(n) ||x||_2, for every element
    assert tolerance(1024, np.float32, 2.0) == pytest.approx((TOL_C * 10 + 1) * eps32 * 32 * 2.0)
    assert tolerance(1, np.float32, 1.0) == pytest.approx((TOL_C + 1) * eps32)
    assert fft_relative_error(1024, np.float32) == pytest.approx((TOL_C * 10 + 1) * eps32)
    # float64 doubles the budget for the oracle's own error
    eps64 = np.finfo(np.float64).eps
    assert tolerance(8, np.float64, 1.0) == pytest.approx(2 * (TOL_C * 3 + 1) * eps64
                                                          * np.sqrt(8))
    assert round_trip_tolerance(64, np.float32, 3.0) == pytest.approx(
        (1 + np.sqrt(2)) * (TOL_C * 6 + 1) * eps32 * 3.0)
    assert tolerance(16, np.float32, 0.0) == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tolerance_covers_concentrated_spectra_and_rejects_layout_bugs(dtype):
    """A constant row puts rounding errors of one ulp of the peak ``X_0 = n c`` into the other
    slots (a GPU run at n = 2^17 did exactly that); the bound must exceed that ulp for every n.
    An off-by-one or a sign in the layout moves O(||x||_2) per element on a random row (each
    |X_k| is about ||x||_2): the bound must stay well below ||x||_2."""
    for log2n in range(1, 25):
        n = 2**log2n
        c = 3.0
        peak = n * c
        assert tolerance(n, dtype, c * np.sqrt(n)) >= 4 * np.spacing(dtype(peak)), n
        assert tolerance(n, dtype, 1.0) < 0.1, n


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 12, 15, 16, 97, 100, 128, 243])
def test_extended_precision_dft_matches_the_other_oracles(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, n))
    X = extended_rdfft_oracle(x)
    assert X.dtype == np.float64 and X.shape == x.shape
    # the cos/sin matrix and numpy.fft, each within its own float64 rounding
    atol = tolerance(n, np.float64, np.linalg.norm(x, axis=-1).max())
    np.testing.assert_allclose(X, x @ dft_matrix_packed(n).T, rtol=0, atol=atol)
    np.testing.assert_allclose(X, packed_rfft_oracle(x), rtol=0, atol=atol)
    Xr = rng.standard_normal((3, n))
    np.testing.assert_allclose(extended_irdfft_oracle(Xr), packed_irfft_oracle(Xr), rtol=0,
                               atol=tolerance(n, np.float64, full_spectrum_norm(Xr).max()) / n)
    np.testing.assert_allclose(extended_irdfft_oracle(X), x, rtol=0,
                               atol=round_trip_tolerance(n, np.float64,
                                                         np.linalg.norm(x, axis=-1).max()))


def test_extended_precision_dft_on_integers_is_exact_where_the_dft_is_integer():
    # n = 4: every twiddle is 0 or +-1, so the spectrum of integers is an exact integer
    x = np.array([[1.0, 2.0, 0.0, -1.0], [3.0, -7.0, 5.0, 11.0]])
    X = extended_rdfft_oracle(x)
    np.testing.assert_array_equal(X[0], [2.0, 1.0, 0.0, -3.0])
    np.testing.assert_array_equal(X, np.rint(x @ dft_matrix_packed(4).T))
    np.testing.assert_array_equal(extended_irdfft_oracle(X), x)
    # a constant row: X_0 = n c exactly, every other slot a sum of cos/sin rounded in
    # extended precision: far below one float64 ulp of the peak
    n = 1009
    X = extended_rdfft_oracle(np.full((1, n), 3.0))
    assert X[0, 0] == 3.0 * n
    assert np.abs(X[0, 1:]).max() <= np.spacing(3.0 * n)
