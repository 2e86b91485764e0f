"""Bad input: a TypeError/ValueError naming the argument, and the caller's arrays untouched."""
import os

import numpy as np
import pytest

import circfft

FUNCS = ["rdfft", "irdfft"]
X_NAME = r"\bx\b"
OUT_NAME = r"\bout\b"


def expect_error(fn, exc, match, x, *args, others=(), **kwargs):
    """Call ``fn(x, ...)`` expecting ``exc`` whose message matches ``match``; then check that
    ``x`` and the arrays in ``others`` (for example ``out``) are unchanged, bit for bit."""
    arrays = [a for a in (x, *others) if isinstance(a, np.ndarray)]
    clones = [a.copy() for a in arrays]
    with pytest.raises(exc, match=match):
        fn(x, *args, **kwargs)
    for a, c in zip(arrays, clones):
        assert a.dtype == c.dtype and a.shape == c.shape
        if a.dtype.kind in "fc":
            np.testing.assert_array_equal(a, c)
        else:
            assert (a == c).all()


@pytest.fixture(params=FUNCS)
def fn(request):
    return getattr(circfft, request.param)


@pytest.mark.parametrize("bad", [
    np.arange(8) + 1j, np.ones(8, dtype=np.complex64), np.ones(8, dtype=bool),
    np.array([1.0] * 8, dtype=object), np.array(["a"] * 8), np.array([b"ab"] * 8),
    np.zeros(8, dtype="datetime64[s]")], ids=["complex128", "complex64", "bool", "object",
                                                "str", "bytes", "datetime"])
@pytest.mark.parametrize("inplace", [False, True])
def test_bad_dtypes(fn, bad, inplace, backend):
    expect_error(fn, TypeError, X_NAME, bad, out=bad if inplace else None, backend=backend)


def test_complex_error_message_is_helpful():
    with pytest.raises(TypeError, match="complex"):
        circfft.rdfft(np.ones(4, dtype=complex))


def test_zero_dimensional(fn, backend):
    expect_error(fn, ValueError, X_NAME, np.float64(3.0), backend=backend)
    expect_error(fn, ValueError, X_NAME, np.array(3.0), backend=backend)
    a = np.array(3.0)
    expect_error(fn, ValueError, X_NAME, a, out=a, backend=backend)


@pytest.mark.parametrize("axis", [2, -3, 10, -100])
def test_axis_out_of_range(fn, axis, backend):
    x = np.ones((4, 8))
    expect_error(fn, ValueError, "axis", x, axis=axis, backend=backend)
    expect_error(fn, ValueError, "axis", x, axis=axis, out=x, backend=backend)


@pytest.mark.parametrize("axis", [1.0, "0", None, [0]])
def test_axis_wrong_type(fn, axis, backend):
    expect_error(fn, TypeError, "axis", np.ones((4, 8)), axis=axis, backend=backend)


@pytest.mark.parametrize("norm", ["BACKWARD", "orthonormal", "", 1, "none"])
def test_unknown_norm(fn, norm, backend):
    x = np.ones((2, 8))
    expect_error(fn, ValueError, "norm", x, norm=norm, backend=backend)
    expect_error(fn, ValueError, "norm", x, norm=norm, out=x, backend=backend)


def test_out_wrong_type(fn, backend):
    x = np.ones(8)
    expect_error(fn, TypeError, OUT_NAME, x, out=[0.0] * 8, backend=backend)
    expect_error(fn, TypeError, OUT_NAME, x, out=tuple([0.0] * 8), backend=backend)


def test_out_wrong_shape(fn, backend):
    x = np.ones((2, 8))
    for out in (np.empty(8), np.empty((2, 4)), np.empty((8, 2)), np.empty((1, 2, 8))):
        expect_error(fn, ValueError, OUT_NAME, x, out=out, others=(out,), backend=backend)


def test_out_wrong_dtype(fn, backend):
    x = np.ones((2, 8))
    for out in (np.empty((2, 8), np.float32), np.empty((2, 8), complex),
                np.empty((2, 8), np.int64)):
        expect_error(fn, TypeError, OUT_NAME, x, out=out, others=(out,), backend=backend)
    x32 = np.ones(8, np.float32)
    out = np.empty(8)
    expect_error(fn, TypeError, OUT_NAME, x32, out=out, others=(out,), backend=backend)
    xi = np.arange(8)                               # integers -> float64 result
    out = np.empty(8, np.float32)
    expect_error(fn, TypeError, OUT_NAME, xi, out=out, others=(out,), backend=backend)


def test_out_read_only(fn, backend):
    x = np.ones(8)
    out = np.zeros(8)
    out.flags.writeable = False
    expect_error(fn, ValueError, OUT_NAME, x, out=out, others=(out,), backend=backend)


@pytest.mark.parametrize("xs,outs", [
    (slice(0, 8), slice(1, 9)), (slice(1, 9), slice(0, 8)), (slice(0, 8), slice(7, 15)),
    (slice(0, 16, 2), slice(0, 8)), (slice(0, 8), slice(7, None, -1))])
def test_out_partially_overlapping_x(fn, xs, outs, backend):
    a = np.arange(16, dtype=np.float64)
    x, out = a[xs], a[outs]
    assert x.shape == out.shape and np.shares_memory(x, out)
    expect_error(fn, ValueError, OUT_NAME, x, out=out, others=(a,), backend=backend)


def test_out_overlapping_other_axis(fn, backend):
    a = np.zeros((4, 8))
    a[:] = np.arange(8)
    # same memory, different strides (rows reversed): neither a separate array nor out=x
    expect_error(fn, ValueError, OUT_NAME, a, out=a[::-1], others=(a,), backend=backend)


def test_read_only_x_with_out_x(fn, backend):
    x = np.arange(8.0)
    x.flags.writeable = False
    expect_error(fn, ValueError, X_NAME, x, out=x, backend=backend)
    # the same data through a read-only view of a writeable base
    base = np.arange(16.0)
    view = base[::2]
    view.flags.writeable = False
    expect_error(fn, ValueError, X_NAME, view, out=view, others=(base,), backend=backend)


@pytest.mark.parametrize("dt", [np.int32, np.int64, np.uint16, np.float16])
def test_non_float_x_with_out_x(fn, dt, backend):
    x = np.arange(8).astype(dt)
    expect_error(fn, TypeError, X_NAME, x, out=x, backend=backend)


def test_out_x_needs_an_ndarray(fn, backend):
    x = [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(TypeError, match=X_NAME):
        fn(x, out=x, backend=backend)
    assert x == [1.0, 2.0, 3.0, 4.0]


def test_workers(fn, backend):
    x = np.ones((3, 8))
    expect_error(fn, ValueError, "workers", x, workers=0, backend=backend)
    expect_error(fn, ValueError, "workers", x, workers=0, out=x, backend=backend)
    expect_error(fn, TypeError, "workers", x, workers=1.5, backend=backend)
    expect_error(fn, TypeError, "workers", x, workers="2", backend=backend)
    ncpu = os.cpu_count() or 1
    expect_error(fn, ValueError, "workers", x, workers=-ncpu - 1, backend=backend)


def test_valid_workers_values(fn, backend):
    """scipy's rules: None, positive, -1 (all CPUs), -k down to -cpu_count."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 64))
    expected = fn(x, backend=backend)
    ncpu = os.cpu_count() or 1
    for w in (None, 1, 2, 8, -1, -ncpu):
        np.testing.assert_allclose(fn(x, workers=w, backend=backend), expected,
                                   rtol=0, atol=1e-12 * np.abs(expected).max())


def test_unknown_backend(fn):
    x = np.ones(8)
    expect_error(fn, ValueError, "no_such_backend", x, backend="no_such_backend")


def test_errors_before_any_write_in_place(fn, backend):
    """Each check fires before data is touched even when out=x would transform in place."""
    x = np.arange(16.0).reshape(2, 8)
    expect_error(fn, ValueError, "axis", x, axis=5, out=x, backend=backend)
    expect_error(fn, ValueError, "norm", x, norm="bad", out=x, backend=backend)
    expect_error(fn, ValueError, "workers", x, workers=0, out=x, backend=backend)
