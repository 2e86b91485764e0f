"""Random shapes, axes and strides (hypothesis): non-contiguous views, negative strides,
transposes, and in-place transforms of such views (out=x) that must touch exactly the view's
memory and nothing else of the base array.

Every size class of the kernels is covered: short rows (odd and even log2 of the half length:
the numba kernels then end on a radix-2 stage or not), rows up to ``2**16`` that numba
transforms many at a time in SIMD lanes (16 float32 / 8 float64 rows; row counts that are not
multiples of that), rows beyond ``2**16`` (one lane, scratch of two rows) and non-powers of two
(numpy.fft inside circfft).  Hypothesis draws the short and medium lengths; the long ones are a
few explicit examples (``@example``) so the run time stays modest.
"""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import circfft
from oracles import (assert_close, full_spectrum_norm, packed_irfft_oracle, packed_rfft_oracle,
                     row_norms, tolerance)

#: Lengths hypothesis draws: powers of two with both parities of log2(n/2), up to 4096 (many
#: numba lanes), and non-powers of two (numpy.fft), prime ones included.
LENGTHS = [1, 2, 3, 4, 5, 6, 8, 12, 15, 16, 32, 64, 100, 128, 243, 256, 512, 1000, 1009, 1024,
           2048, 4096]


def build_case(dtype, axis, shape, steps, starts, pads, seed, fortran, perm):
    """``(base, make_view, view_axis)``: a random base array and a function giving the view of
    shape ``shape`` (before the transposition ``perm``) with the given starts, steps (+-) and
    extra base padding; ``view_axis`` is the transformed axis of the transposed view."""
    ndim = len(shape)
    base_shape = [start + abs(step) * (length - 1) + 1 + pad
                  for start, step, length, pad in zip(starts, steps, shape, pads)]
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(base_shape).astype(dtype)
    if fortran:
        base = np.asfortranarray(base)
    index = tuple(slice(start, start + abs(step) * (length - 1) + 1, abs(step))
                  for start, step, length in zip(starts, steps, shape))
    flips = tuple(slice(None, None, -1) if s < 0 else slice(None) for s in steps)

    def transposed(a):
        return np.transpose(a[index][flips], perm)

    view_axis = list(perm).index(axis % ndim)
    return base, transposed, view_axis


@st.composite
def strided_views(draw):
    """The arguments of `build_case` for a base array and a view of it with random offsets,
    steps (+-), and axis order (the arrays are built in the test, fresh for every run)."""
    ndim = draw(st.integers(1, 3))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    axis = draw(st.integers(-ndim, ndim - 1))
    shape = [draw(st.integers(1, 5)) for _ in range(ndim)]
    shape[axis] = draw(st.sampled_from(LENGTHS))
    steps = [draw(st.sampled_from([1, 1, 2, 3, -1, -2])) for _ in range(ndim)]
    starts = [draw(st.integers(0, 2)) for _ in range(ndim)]
    pads = [draw(st.integers(0, 2)) for _ in range(ndim)]
    seed = draw(st.integers(0, 2**32 - 1))
    fortran = draw(st.booleans())                # Fortran-ordered base
    perm = draw(st.permutations(range(ndim)))
    return (dtype, axis, shape, steps, starts, pads, seed, fortran, tuple(perm))


#: Long rows as explicit examples: many lanes with a partial lane group (19 rows, 2**16 and
#: 2**15 with both parities of log2(n/2)), one lane beyond 2**16 (2**17, 2**18), long
#: non-powers of two (3 * 2**14, a prime), and a few medium lengths in both dtypes, with
#: negative steps, transposes and Fortran bases.
LONG_CASES = [
    (np.float32, 1, [19, 2**16], [1, -1], [1, 0], [0, 1], 1, False, (0, 1)),
    (np.float64, 1, [3, 2**15, 3], [2, 2, -1], [0, 1, 1], [1, 0, 0], 2, False, (2, 0, 1)),
    (np.float64, 1, [9, 2**15], [-1, 1], [0, 0], [0, 0], 3, True, (1, 0)),
    (np.float64, 1, [2, 2**17], [1, -1], [1, 1], [0, 2], 4, False, (0, 1)),
    (np.float32, 0, [2**18, 2], [-2, 1], [1, 0], [0, 1], 5, False, (0, 1)),
    (np.float32, 1, [3, 3 * 2**14], [1, 2], [0, 1], [1, 0], 6, True, (1, 0)),
    (np.float64, 0, [65537, 2], [1, -1], [0, 0], [1, 0], 7, False, (1, 0)),
    # medium lengths in both dtypes every run (hypothesis draws them only sometimes)
    (np.float64, 1, [5, 2048], [2, -1], [1, 1], [0, 1], 8, False, (0, 1)),
    (np.float32, 0, [4096, 3], [1, 2], [0, 0], [2, 0], 9, True, (1, 0)),
    (np.float64, 0, [256, 17], [-1, 1], [1, 0], [0, 0], 10, False, (0, 1)),
]


def _with_long_examples(test):
    for case in LONG_CASES:
        test = example(case=case)(test)
    return test


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
@_with_long_examples
def test_strided_views_out_of_place(backend, direction, case):
    base, make_view, axis = build_case(*case)
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
@_with_long_examples
def test_strided_views_in_place(backend, direction, case):
    base, make_view, axis = build_case(*case)
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
