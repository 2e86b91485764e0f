"""The oracles must be right before anything is tested against them: check them against each
other (numpy.fft vs scipy.fft vs the cos/sin matrix) and against a worked example."""
import numpy as np
import pytest
import scipy.fft

from oracles import (TOL_C, circular_convolution_oracle, circular_correlation_oracle,
                     dft_matrix_packed, full_spectrum_norm, pack_complex, packed_irfft_oracle,
                     packed_rfft_oracle, packed_weights, scale_factor, tolerance,
                     unpack_to_complex)


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
    atol = tolerance(n, np.float64, np.linalg.norm(x, axis=-1).max()) * np.sqrt(n)
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
    assert tolerance(1024, np.float32, 2.0) == pytest.approx((TOL_C * 10 + 1) * eps32 * 2.0)
    assert tolerance(1, np.float32, 1.0) == pytest.approx((TOL_C + 1) * eps32)
    # float64 doubles the budget for the oracle's own error
    eps64 = np.finfo(np.float64).eps
    assert tolerance(8, np.float64, 1.0) == pytest.approx(2 * (TOL_C * 3 + 1) * eps64)
    # tight enough to see one ulp-scale layout error? An off-by-one moves O(||x||) of signal.
    assert tolerance(2**20, np.float32, 1.0) < 1e-3
