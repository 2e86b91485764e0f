"""Layout helpers: to_rfft / from_rfft and spectral_mul (docs/layout.rst)."""
import numpy as np
import pytest

import circfft
from oracles import (assert_close, circular_convolution_oracle, circular_correlation_oracle,
                     pack_complex, packed_rfft_oracle, row_norms, tolerance, unpack_to_complex)

LENGTHS = [1, 2, 3, 4, 5, 7, 8, 12, 15, 16, 64, 100, 243]


@pytest.mark.parametrize("n", LENGTHS)
def test_to_rfft_matches_numpy_rfft(n, dtype, rng):
    x = rng.standard_normal((3, n)).astype(dtype)
    X = packed_rfft_oracle(x).astype(dtype)
    Y = circfft.to_rfft(X)
    assert Y.dtype == (np.complex64 if dtype == np.float32 else np.complex128)
    assert Y.shape == (3, n // 2 + 1)
    # the conversion only moves numbers: exact against the loop-based oracle
    np.testing.assert_array_equal(Y, unpack_to_complex(X))
    # and against numpy.fft.rfft itself (up to the float cast of X)
    ref = np.fft.rfft(x.astype(np.float64))
    tol = tolerance(n, dtype, row_norms(x).max())
    assert_close(Y.real, ref.real, tol)
    assert_close(Y.imag, ref.imag, tol)


@pytest.mark.parametrize("n", LENGTHS)
def test_from_rfft_inverse_of_to_rfft(n, dtype, rng):
    X = rng.standard_normal((2, 3, n)).astype(dtype)
    Y = circfft.to_rfft(X)
    back = circfft.from_rfft(Y, n)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, X)
    # from_rfft against the loop-based packer on numpy.fft.rfft output
    x = rng.standard_normal((4, n))
    Yn = np.fft.rfft(x)
    np.testing.assert_array_equal(circfft.from_rfft(Yn, n), pack_complex(Yn, n))


def test_from_rfft_drops_imaginary_dc_and_nyquist():
    Y = np.array([1 + 5j, 2 + 3j, 4 - 7j])         # n = 4: Y0 and Y2 must be real
    np.testing.assert_array_equal(circfft.from_rfft(Y, 4), [1.0, 2.0, 4.0, 3.0])
    np.testing.assert_array_equal(circfft.from_rfft(Y, 5), [1.0, 2.0, 4.0, -7.0, 3.0])


@pytest.mark.parametrize("axis", [0, 1, -1, -3])
def test_layout_axis(axis, rng):
    x = rng.standard_normal((6, 7, 8))
    X = circfft.rdfft(x, axis=axis)
    Y = circfft.to_rfft(X, axis=axis)
    np.testing.assert_allclose(Y, np.fft.rfft(x, axis=axis), atol=1e-12)
    n = x.shape[axis]
    np.testing.assert_allclose(circfft.from_rfft(np.fft.rfft(x, axis=axis), n, axis=axis), X,
                               atol=1e-12)


def test_from_rfft_bad_input():
    with pytest.raises(ValueError, match=r"\bn\b"):
        circfft.from_rfft(np.ones(3, complex), 8)       # needs 5 entries
    with pytest.raises(ValueError, match=r"\bn\b"):
        circfft.from_rfft(np.ones(1, complex), 0)
    with pytest.raises(TypeError, match=r"\bY\b"):
        circfft.from_rfft(np.array(["a", "b"]), 2)
    with pytest.raises(ValueError, match=r"\bY\b"):
        circfft.from_rfft(np.complex128(1), 1)
    with pytest.raises(TypeError, match=r"\bX\b"):
        circfft.to_rfft(np.ones(4, complex))
    with pytest.raises(ValueError, match="axis"):
        circfft.to_rfft(np.ones(4), axis=1)


# --------------------------------------------------------------------------------------------
# spectral_mul
# --------------------------------------------------------------------------------------------
def complex_product(A, B, conj):
    Ya, Yb = unpack_to_complex(A), unpack_to_complex(B)
    return (np.conj(Ya) if conj else Ya) * Yb


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("conj", [False, True])
def test_spectral_mul_matches_complex_product(n, conj, dtype, rng):
    A = rng.standard_normal((4, n)).astype(dtype)
    B = rng.standard_normal((4, n)).astype(dtype)
    A0, B0 = A.copy(), B.copy()
    Z = circfft.spectral_mul(A, B, conj=conj)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(B, B0)
    assert Z.dtype == dtype and Z.shape == (4, n)
    expected = pack_complex(complex_product(A, B, conj), n)
    # one complex multiply: |error| <= (2 + 1) eps |a| |b| per component
    eps = np.finfo(dtype).eps
    tol = 3 * eps * (np.abs(A.astype(np.float64)) + np.abs(A[:, ::-1].astype(np.float64))) \
        .max() * (np.abs(B.astype(np.float64)) + np.abs(B[:, ::-1].astype(np.float64))).max()
    assert_close(Z, expected, tol)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 16, 15, 32])
@pytest.mark.parametrize("conj", [False, True])
def test_spectral_mul_is_circular_convolution(n, conj, backend, dtype, rng):
    a = rng.standard_normal((3, n)).astype(dtype)
    b = rng.standard_normal((3, n)).astype(dtype)
    A = circfft.rdfft(a, backend=backend)
    B = circfft.rdfft(b, backend=backend)
    c = circfft.irdfft(circfft.spectral_mul(A, B, conj=conj), backend=backend)
    ref = (circular_correlation_oracle if conj else circular_convolution_oracle)(a, b)
    # forward errors of A, B (tol each, relative to ||a||, ||b||), one product, one inverse:
    # a bound proportional to ||a|| ||b|| * tol(n, dtype, 1) * 3
    scale = (row_norms(a) * row_norms(b))[:, None]
    assert_close(c, ref, 3 * tolerance(n, dtype, 1.0) * scale)


@pytest.mark.parametrize("conj", [False, True])
@pytest.mark.parametrize("which", ["A", "B"])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 12, 64])
def test_spectral_mul_in_place_on_either_operand(conj, which, n, dtype, rng):
    A = rng.standard_normal((3, n)).astype(dtype)
    B = rng.standard_normal((3, n)).astype(dtype)
    expected = circfft.spectral_mul(A, B, conj=conj)
    target = A if which == "A" else B
    other = B if which == "A" else A
    other0 = other.copy()
    result = circfft.spectral_mul(A, B, conj=conj, out=target)
    assert result is target
    np.testing.assert_array_equal(target, expected)
    np.testing.assert_array_equal(other, other0)
    # A * A in place (both operands are the output)
    C = rng.standard_normal((2, n)).astype(dtype)
    expected = circfft.spectral_mul(C, C, conj=conj)
    assert circfft.spectral_mul(C, C, conj=conj, out=C) is C
    np.testing.assert_array_equal(C, expected)


def test_spectral_mul_broadcasting(dtype, rng):
    n = 8
    W = rng.standard_normal((n,)).astype(dtype)               # one kernel
    X = rng.standard_normal((5, 3, n)).astype(dtype)          # many signals
    Z = circfft.spectral_mul(W, X)
    assert Z.shape == (5, 3, n)
    for i in range(5):
        for j in range(3):
            np.testing.assert_array_equal(Z[i, j], circfft.spectral_mul(W, X[i, j]))
    W2 = rng.standard_normal((5, 1, n)).astype(dtype)
    Z2 = circfft.spectral_mul(W2, X, conj=True)
    assert Z2.shape == (5, 3, n)
    np.testing.assert_array_equal(Z2[2, 1], circfft.spectral_mul(W2[2, 0], X[2, 1], conj=True))
    # broadcasting into an out that is one of the operands (the larger one)
    expected = circfft.spectral_mul(W, X)
    assert circfft.spectral_mul(W, X, out=X) is X
    np.testing.assert_array_equal(X, expected)


def test_spectral_mul_axis(rng):
    A = rng.standard_normal((8, 3))
    B = rng.standard_normal((8, 3))
    Z = circfft.spectral_mul(A, B, axis=0)
    np.testing.assert_array_equal(Z, circfft.spectral_mul(A.T, B.T).T)


def test_spectral_mul_strided_out(rng):
    A = rng.standard_normal((4, 16))
    B = rng.standard_normal((4, 16))
    big = np.zeros((8, 32))
    out = big[::2, ::-2]
    expected = circfft.spectral_mul(A, B)
    assert circfft.spectral_mul(A, B, out=out) is out
    np.testing.assert_array_equal(out, expected)
    assert (big[1::2] == 0).all() and (big[:, 0::2] == 0).all()


def test_spectral_mul_bad_input():
    A = np.ones((2, 8))
    with pytest.raises(TypeError, match=r"\bA\b"):
        circfft.spectral_mul(np.ones(8, complex), np.ones(8))
    with pytest.raises(TypeError, match=r"\bB\b"):
        circfft.spectral_mul(np.ones(8), np.ones(8, bool))
    with pytest.raises(TypeError, match="dtype"):
        circfft.spectral_mul(np.ones(8), np.ones(8, np.float32))
    with pytest.raises(ValueError, match="length"):
        circfft.spectral_mul(np.ones(8), np.ones(6))
    with pytest.raises(ValueError, match="broadcast"):
        circfft.spectral_mul(np.ones((3, 8)), np.ones((2, 8)))
    for out, exc in ((np.ones((3, 8)), ValueError), (np.ones((2, 8), np.float32), TypeError),
                     ([0.0] * 16, TypeError)):
        A0 = A.copy()
        with pytest.raises(exc, match=r"\bout\b"):
            circfft.spectral_mul(A, A, out=out)
        np.testing.assert_array_equal(A, A0)
    ro = np.ones((2, 8))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"\bout\b"):
        circfft.spectral_mul(A, A, out=ro)
