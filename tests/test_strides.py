"""Random shapes, axes and strides (hypothesis): non-contiguous views, negative strides,
transposes, and in-place transforms of such views (out=x) that must touch exactly the view's
memory and nothing else of the base array."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import circfft
from oracles import (assert_close, full_spectrum_norm, packed_irfft_oracle, packed_rfft_oracle,
                     row_norms, tolerance)

# Short lengths keep numba on one lane count per dtype (one compile per memory layout).
LENGTHS = [1, 2, 3, 4, 5, 6, 8, 12, 15, 16, 32, 64, 100, 128]


@st.composite
def strided_views(draw):
    """A base array and a view of it with random offsets, steps (+-), and axis order."""
    ndim = draw(st.integers(1, 3))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    axis = draw(st.integers(-ndim, ndim - 1))
    shape = [draw(st.integers(1, 5)) for _ in range(ndim)]
    shape[axis] = draw(st.sampled_from(LENGTHS))
    steps = [draw(st.sampled_from([1, 1, 2, 3, -1, -2])) for _ in range(ndim)]
    starts = [draw(st.integers(0, 2)) for _ in range(ndim)]
    base_shape = [start + abs(step) * (length - 1) + 1 + draw(st.integers(0, 2))
                  for start, step, length in zip(starts, steps, shape)]
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(base_shape).astype(dtype)
    if draw(st.booleans()):                      # Fortran-ordered base
        base = np.asfortranarray(base)
    index = []
    for start, step, length in zip(starts, steps, shape):
        sl = slice(start, start + abs(step) * (length - 1) + 1, abs(step))
        index.append(sl)
    index = tuple(index)

    def view_of(a):
        v = a[index]
        flips = tuple(slice(None, None, -1) if s < 0 else slice(None) for s in steps)
        return v[flips]

    perm = draw(st.permutations(range(ndim)))
    # axis refers to the view after transposition
    view_axis = list(perm).index(axis % ndim)

    def transposed(a):
        return np.transpose(view_of(a), perm)

    return base, transposed, view_axis


def covered_mask(base, make_view):
    """Boolean mask of the base elements that the view addresses."""
    idx = np.arange(base.size).reshape(base.shape)     # logical (C-order) positions
    mask = np.zeros(base.shape, dtype=bool)
    mask[np.unravel_index(make_view(idx).ravel(), base.shape)] = True
    return mask


def forward_tol(x, axis):
    n = x.shape[axis]
    t = np.array([tolerance(n, x.dtype, r) for r in row_norms(x, axis=axis).ravel()])
    return np.expand_dims(t.reshape(row_norms(x, axis=axis).shape), axis)


def inverse_tol(X, axis):
    n = X.shape[axis]
    norms = full_spectrum_norm(X, axis=axis)
    t = np.array([tolerance(n, X.dtype, r) / n for r in norms.ravel()]).reshape(norms.shape)
    return np.expand_dims(t, axis)


@pytest.mark.parametrize("direction", ["rdfft", "irdfft"])
@given(case=strided_views())
def test_strided_views_out_of_place(backend, direction, case):
    base, make_view, axis = case
    view = make_view(base)
    base0 = base.copy(order="A")
    fn = getattr(circfft, direction)
    result = fn(view, axis=axis, backend=backend)
    np.testing.assert_array_equal(base, base0)          # nothing written
    assert result.shape == view.shape and result.dtype == view.dtype
    if direction == "rdfft":
        assert_close(result, packed_rfft_oracle(view, axis=axis), forward_tol(view, axis))
    else:
        assert_close(result, packed_irfft_oracle(view, axis=axis), inverse_tol(view, axis))


@pytest.mark.parametrize("direction", ["rdfft", "irdfft"])
@given(case=strided_views())
def test_strided_views_in_place(backend, direction, case):
    base, make_view, axis = case
    view = make_view(base)
    before = view.copy()
    base0 = base.copy(order="A")
    fn = getattr(circfft, direction)
    result = fn(view, axis=axis, out=view, backend=backend)
    assert result is view
    # the view's memory holds the transform ...
    if direction == "rdfft":
        assert_close(view, packed_rfft_oracle(before, axis=axis), forward_tol(before, axis))
    else:
        assert_close(view, packed_irfft_oracle(before, axis=axis), inverse_tol(before, axis))
    # ... and the rest of the base array is untouched, bit for bit
    mask = covered_mask(base, make_view)
    np.testing.assert_array_equal(base[~mask], base0[~mask])


@pytest.mark.parametrize("n", [2**10, 2**15, 2**17])
def test_negative_stride_in_place_long_rows(n, backend, dtype, rng):
    """Longer rows use other lane counts in numba: reversed and transposed views in place."""
    base = rng.standard_normal((3, n + 2)).astype(dtype)
    base0 = base.copy()
    view = base[:, 1: n + 1][:, ::-1]                      # negative stride along the axis
    before = view.copy()
    assert circfft.rdfft(view, out=view, backend=backend) is view
    assert_close(view, packed_rfft_oracle(before), forward_tol(before, -1))
    np.testing.assert_array_equal(base[:, 0], base0[:, 0])
    np.testing.assert_array_equal(base[:, -1], base0[:, -1])
    # transposed: transform along axis 0 of a (n, 3) view with non-unit stride
    t = base[:, 1: n + 1].T[::-1]
    before = t.copy()
    assert circfft.irdfft(t, axis=0, out=t, backend=backend) is t
    assert_close(t, packed_irfft_oracle(before, axis=0), inverse_tol(before, 0))
    np.testing.assert_array_equal(base[:, 0], base0[:, 0])


def test_covered_mask_helper():
    base = np.zeros((4, 6))
    mask = covered_mask(base, lambda a: a[1:3, ::-2])
    assert mask.sum() == 6 and mask[1:3, 1::2].all()


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["rdfft", "irdfft"])
@settings(max_examples=400)
@given(case=strided_views())
def test_strided_views_in_place_thorough(backend, direction, case):
    test_strided_views_in_place.hypothesis.inner_test(backend, direction, case)
