"""``out`` / ``overwrite_x`` semantics, dtype promotion and empty arrays."""
import numpy as np
import pytest

import circfft
from oracles import (assert_close, full_spectrum_norm, packed_irfft_oracle, packed_rfft_oracle,
                     row_norms, tolerance)

FUNCS = ["rdfft", "irdfft"]


def reference(fn, x, axis=-1):
    """Oracle result and its per-row tolerance for transform ``fn`` of ``x``."""
    x64 = np.asarray(x, dtype=np.float64)
    n = x64.shape[axis]
    dt = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    if x.dtype == np.float16:
        dt = np.float32
    if fn == "rdfft":
        ref = packed_rfft_oracle(x64, axis=axis)
        tol = np.vectorize(lambda r: tolerance(n, dt, r))(row_norms(x64, axis=axis))
    else:
        ref = packed_irfft_oracle(x64, axis=axis)
        tol = np.vectorize(lambda r: tolerance(n, dt, r) / n)(full_spectrum_norm(x64, axis=axis))
    return ref, np.expand_dims(tol, axis)


def addr(a):
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("fn", FUNCS)
def test_out_is_x_returns_same_object_and_buffer(fn, backend, dtype, rng):
    x = rng.standard_normal((5, 64)).astype(dtype)
    before = x.copy()
    ptr, strides = addr(x), x.strides
    result = getattr(circfft, fn)(x, out=x, backend=backend)
    assert result is x
    assert addr(result) == ptr and result.strides == strides and result.dtype == dtype
    ref, tol = reference(fn, before)
    assert_close(x, ref, tol)
    assert not np.array_equal(x, before)


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize("n", [8, 12])
def test_out_none_returns_new_array_and_leaves_x(fn, n, backend, dtype, rng):
    x = rng.standard_normal((3, n)).astype(dtype)
    clone = x.copy()
    result = getattr(circfft, fn)(x, backend=backend)
    assert result is not x
    assert not np.shares_memory(result, x)
    np.testing.assert_array_equal(x, clone)
    assert result.dtype == dtype and result.shape == x.shape
    ref, tol = reference(fn, clone)
    assert_close(result, ref, tol)


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_separate_out_receives_result(fn, layout, backend, dtype, rng):
    x = rng.standard_normal((4, 32)).astype(dtype)
    clone = x.copy()
    if layout == "C":
        out = np.full_like(x, np.nan)
    elif layout == "F":
        out = np.asfortranarray(np.full_like(x, np.nan))
    else:
        big = np.full((8, 64), np.nan, dtype=dtype)
        out = big[::2, ::-2]
    result = getattr(circfft, fn)(x, out=out, backend=backend)
    assert result is out
    np.testing.assert_array_equal(x, clone)
    ref, tol = reference(fn, clone)
    assert_close(out, ref, tol)
    if layout == "strided":
        assert np.isnan(big[1::2]).all() and np.isnan(big[::2, ::2]).all()


@pytest.mark.parametrize("fn", FUNCS)
def test_out_is_x_along_other_axis(fn, backend, dtype, rng):
    x = rng.standard_normal((16, 3, 5)).astype(dtype)
    before = x.copy()
    assert getattr(circfft, fn)(x, axis=0, out=x, backend=backend) is x
    ref, tol = reference(fn, before, axis=0)
    assert_close(x, ref, tol)


@pytest.mark.parametrize("fn", FUNCS)
def test_overwrite_x(fn, backend, dtype, rng):
    x = rng.standard_normal((3, 16)).astype(dtype)
    clone = x.copy()
    result = getattr(circfft, fn)(x, overwrite_x=True, backend=backend)
    ref, tol = reference(fn, clone)
    assert_close(result, ref, tol)
    assert result.dtype == dtype
    # a writeable float x is used as the output buffer
    assert result is x
    # read-only x: overwrite_x is only a permission, a new array is returned
    y = clone.copy()
    y.flags.writeable = False
    result = getattr(circfft, fn)(y, overwrite_x=True, backend=backend)
    assert result is not y
    np.testing.assert_array_equal(y, clone)
    assert_close(result, ref, tol)
    # integers cannot hold the result: new float64 array, x untouched
    xi = np.arange(16, dtype=np.int32).reshape(2, 8)
    ci = xi.copy()
    result = getattr(circfft, fn)(xi, overwrite_x=True, backend=backend)
    assert result.dtype == np.float64
    np.testing.assert_array_equal(xi, ci)


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize("layout", ["F", "strided", "negative", "axis0"])
def test_overwrite_x_on_views(fn, layout, backend, dtype, rng):
    """overwrite_x=True on non-contiguous x: the values are right whichever buffer holds them;
    if x's buffer is used, only x's own elements change (the NaN padding of its parent stays),
    and otherwise x is left alone."""
    axis = 0 if layout == "axis0" else -1
    parent = np.full((10, 70), np.nan, dtype=dtype)
    index = {"F": (slice(0, 5), slice(0, 32)), "strided": (slice(1, 9, 2), slice(2, 66, 2)),
             "negative": (slice(8, 0, -2), slice(65, 1, -2)),
             "axis0": (slice(1, 9), slice(3, 8))}[layout]
    parent[index] = rng.standard_normal(parent[index].shape)
    if layout == "F":
        parent = np.asfortranarray(parent)
    x = parent[index]
    clone = x.copy()
    padding = np.isnan(parent)
    result = getattr(circfft, fn)(x, axis=axis, overwrite_x=True, backend=backend)
    ref, tol = reference(fn, clone, axis=axis)
    assert result.dtype == dtype and result.shape == clone.shape
    assert_close(result, ref, tol)
    assert np.isnan(parent[padding]).all(), "written outside x"
    if np.shares_memory(result, parent):
        np.testing.assert_array_equal(x, result)      # x's own elements hold the result
    else:
        np.testing.assert_array_equal(x, clone)       # x untouched


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize("in_dtype,out_dtype", [
    (np.int8, np.float64), (np.int16, np.float64), (np.int32, np.float64),
    (np.int64, np.float64), (np.uint8, np.float64), (np.uint32, np.float64),
    (np.float16, np.float32), (np.float32, np.float32), (np.float64, np.float64)])
def test_dtype_promotion(fn, in_dtype, out_dtype, backend, rng):
    x = rng.integers(0, 50, size=(3, 16)).astype(in_dtype)
    clone = x.copy()
    result = getattr(circfft, fn)(x, backend=backend)
    assert result.dtype == out_dtype
    np.testing.assert_array_equal(x, clone)
    ref, tol = reference(fn, x)
    assert_close(result, ref, tol)
    # a separate out must have the promoted dtype
    out = np.empty(x.shape, dtype=out_dtype)
    assert getattr(circfft, fn)(x, out=out, backend=backend) is out
    assert_close(out, ref, tol)


@pytest.mark.parametrize("fn", FUNCS)
def test_array_like_input(fn, backend):
    result = getattr(circfft, fn)([1.0, 2.0, 0.0, -1.0], backend=backend)
    assert isinstance(result, np.ndarray) and result.dtype == np.float64
    if fn == "rdfft":
        np.testing.assert_array_equal(result, [2.0, 1.0, 0.0, -3.0])   # docstring example
    result = getattr(circfft, fn)([[1, 2, 3, 4]], backend=backend)
    assert result.dtype == np.float64 and result.shape == (1, 4)


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize("shape,axis", [((0,), -1), ((3, 0), -1), ((0, 8), -1), ((0, 8), 0),
                                        ((2, 0, 4), 1), ((2, 0, 4), -1)])
@pytest.mark.parametrize("norm", [None, "ortho", "forward"])
def test_empty_arrays(fn, shape, axis, norm, backend, dtype):
    x = np.empty(shape, dtype=dtype)
    result = getattr(circfft, fn)(x, axis=axis, norm=norm, backend=backend)
    assert result.shape == shape and result.dtype == dtype and result.size == 0
    assert getattr(circfft, fn)(x, axis=axis, norm=norm, out=x, backend=backend) is x
    out = np.empty(shape, dtype=dtype)
    assert getattr(circfft, fn)(x, axis=axis, norm=norm, out=out, backend=backend) is out
    xi = np.empty(shape, dtype=np.int64)
    assert getattr(circfft, fn)(xi, axis=axis, backend=backend).dtype == np.float64


def test_returned_results_are_independent(backend):
    """Two calls with out=None never share a buffer (no cached output arrays)."""
    x = np.arange(8.0)
    a = circfft.rdfft(x, backend=backend)
    b = circfft.rdfft(x, backend=backend)
    assert not np.shares_memory(a, b)
    a[:] = 0
    np.testing.assert_array_equal(b, circfft.rdfft(x, backend=backend))


@pytest.mark.parametrize("fn", FUNCS)
def test_out_is_another_view_of_exactly_x(fn, backend, rng):
    """out=x[...] (a different object viewing exactly x's elements) is in place; returns out."""
    x = rng.standard_normal((3, 16))
    before = x.copy()
    out = x[...]
    assert out is not x
    result = getattr(circfft, fn)(x, out=out, backend=backend)
    assert result is out
    ref, tol = reference(fn, before)
    assert_close(x, ref, tol)
    # the same view, but read-only through out: refused, nothing written
    y = before.copy()
    ro = y[...]
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"\bout\b"):
        getattr(circfft, fn)(y, out=ro, backend=backend)
    np.testing.assert_array_equal(y, before)


@pytest.mark.parametrize("fn", FUNCS)
def test_out_interleaved_with_x_but_disjoint(fn, backend):
    """x = a[::2], out = a[1::2] share a buffer but no element: allowed."""
    a = np.arange(32.0)
    x, out = a[::2], a[1::2]
    x0 = x.copy()
    assert getattr(circfft, fn)(x, out=out, backend=backend) is out
    np.testing.assert_array_equal(x, x0)
    ref, tol = reference(fn, x0)
    assert_close(out, ref, tol)


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize("inplace", [False, True])
def test_non_native_byte_order(fn, inplace, backend):
    """Big-endian floats: a new native array with the right answer (as scipy.fft does); in
    place a TypeError naming x, with x untouched."""
    x = np.arange(16.0).astype(">f8")
    x0 = x.copy()
    if inplace:
        with pytest.raises(TypeError, match="x must be in native byte order"):
            getattr(circfft, fn)(x, out=x, backend=backend)
        np.testing.assert_array_equal(x, x0)
        return
    result = getattr(circfft, fn)(x, backend=backend)
    assert result.dtype == np.float64 and result.dtype.isnative
    np.testing.assert_array_equal(x, x0)
    ref, tol = reference(fn, x0.astype(np.float64))
    assert_close(result, ref, tol)
