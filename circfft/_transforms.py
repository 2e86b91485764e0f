"""The public transforms ``rdfft`` and ``irdfft``: argument handling, ``out`` semantics, dispatch."""
from __future__ import annotations

from .backends import resolve
from ._validation import (check_axis, check_norm, check_out, check_real_dtype, check_workers,
                          scale_for)

__all__ = ["rdfft", "irdfft"]


def _transform(x, axis, norm, out, overwrite_x, workers, backend, forward):
    """The one front end of ``rdfft``/``irdfft`` for every array family: checks everything,
    then hands a validated buffer to the backend, in place (``out=x``, a separate ``out``,
    ``overwrite_x``) or as a new array."""
    be = resolve(x, backend)
    ops = be.ops
    if ops.family != "numpy" and not isinstance(x, ops.array_type):
        raise TypeError(f"x must be a {ops.type_name}, got {type(x).__name__}")
    inplace = out is not None and ops.same_view(out, x)
    if inplace and not isinstance(x, ops.array_type):
        raise TypeError(f"out=x needs x to be a {ops.type_name}, got {type(x).__name__}")
    arr = ops.asarray(x)
    dtype = check_real_dtype(arr.dtype, "x", inplace, ops)
    if arr.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    axis = check_axis(axis, arr.ndim)
    norm = check_norm(norm)
    workers = check_workers(workers)
    scale = scale_for(norm, int(arr.shape[axis]), forward)
    args = dict(axis=axis, forward=forward, scale=scale, workers=workers)
    if inplace:
        if not ops.writeable(arr):
            raise ValueError("x is read-only, so out=x cannot transform it in place")
        if not ops.writeable(out):
            raise ValueError("out is read-only")
        if ops.self_overlap(arr):
            raise ValueError("x has elements sharing memory (a broadcast, expanded or "
                             "overlapping strided view), so out=x cannot transform it in place")
        return be.transform_inplace(out, **args)     # x itself, or another view of exactly x
    if out is not None:
        check_out(out, ops, shape=arr.shape, dtype=dtype, operands=[("x", arr)])
        ops.assign(out, arr)
        return be.transform_inplace(out, **args)
    if (overwrite_x and arr is x and arr.dtype == dtype and ops.can_overwrite(arr)
            and not ops.self_overlap(arr)):
        return be.transform_inplace(arr, **args)
    return be.transform_copy(arr, dtype=dtype, **args)


_PARAMS = """
    Parameters
    ----------
    x : array_like
        Real input: float32 or float64 (kept), or integers/float16 (promoted to float64/float32
        when a new array is returned).
    axis : int, optional
        Axis over which to compute the transform. Default is the last axis.
    norm : {None, "backward", "ortho", "forward"}, optional
        Normalisation mode, as in `numpy.fft`: "backward" (default, same as None) leaves the
        forward transform unscaled and scales the inverse by ``1/n``; "ortho" scales both by
        ``1/sqrt(n)``; "forward" scales the forward transform by ``1/n``.
    out : ndarray, optional
        ``out=x`` transforms ``x`` in place and returns it (float32/float64, writeable).  Any
        other array receives the result; it must have ``x``'s shape and the result dtype and
        must not overlap ``x``.
    overwrite_x : bool, optional
        If True and ``out`` is None, the contents of ``x`` may be destroyed: a writeable float32
        or float64 ``x`` is used as the output buffer and returned.
    workers : int, optional
        Maximum number of threads, following `scipy.fft`: None means 1, negative values wrap
        around ``os.cpu_count()`` (-1 uses all CPUs).
    backend : str or Backend, optional
        Backend to use; by default the one chosen by `set_backend` or by the array's type.
"""

_NOTES = """
    Power-of-two lengths are transformed in place.  Besides the output, a call allocates
    nothing proportional to the number of rows: the plan tables of ``n`` (``1.5 n`` values of
    the dtype and ``n/2`` int32 indices, cached) and, for the compiled CPU backend, a scratch
    of ``128 n`` bytes per worker thread for ``n <= 2**14`` and of two rows per worker beyond
    (so a single very long row needs about ``3.5`` times its own size while it is transformed).
    ``circfft.backends.numba_backend.release_scratch()`` frees what is kept between calls.
    Other lengths (odd ones included) give the exact result in the same layout through the
    array library's FFT, a chunk of rows at a time.  NaN and Inf propagate as in `numpy.fft`
    (see the layout page of the documentation).  Empty arrays give empty results.  The
    algorithm and the exact memory budget are described in the documentation's "How the
    transform is computed" page.
"""


def rdfft(x, /, axis=-1, norm=None, *, out=None, overwrite_x=False, workers=None, backend=None):
    return _transform(x, axis, norm, out, overwrite_x, workers, backend, True)


def irdfft(x, /, axis=-1, norm=None, *, out=None, overwrite_x=False, workers=None, backend=None):
    return _transform(x, axis, norm, out, overwrite_x, workers, backend, False)


rdfft.__doc__ = """Real-domain discrete Fourier transform in the packed (halfcomplex) layout.

    The output has the same shape and dtype as the input and can overwrite it
    (``rdfft(x, out=x)``).
""" + _PARAMS + """
    Returns
    -------
    X : ndarray
        Packed spectrum, same shape as ``x``.  With ``Y = numpy.fft.rfft(x, axis=axis)`` and
        ``n = x.shape[axis]``, along ``axis``:

        - ``X[k] = Re Y[k]`` for ``0 <= k <= n//2``;
        - ``X[n-k] = Im Y[k]`` for ``0 < k < (n+1)//2``.

        For ``n = 8``: ``[Re Y0, Re Y1, Re Y2, Re Y3, Re Y4, Im Y3, Im Y2, Im Y1]``.  This is
        FFTW's R2HC layout.  The object returned is ``out`` when given.

    Raises
    ------
    TypeError
        Complex, bool, object or string input; ``out`` of the wrong type or dtype; integer or
        float16 ``x`` with ``out=x``.
    ValueError
        0-d input, ``axis`` out of range, unknown ``norm``, ``out`` of the wrong shape or
        partially overlapping ``x``, read-only ``x`` with ``out=x``.

    See Also
    --------
    irdfft : The inverse.
    to_rfft : Packed spectrum to numpy's complex form.
    scipy.fft.rfft : The same transform with complex output.

    Notes
    -----""" + _NOTES + """
    Examples
    --------
    >>> import numpy as np, circfft
    >>> x = np.array([1.0, 2.0, 0.0, -1.0])
    >>> circfft.rdfft(x)
    array([ 2.,  1.,  0., -3.])
    >>> np.fft.rfft(x)
    array([2.+0.j, 1.-3.j, 0.+0.j])
    >>> y = np.arange(8.0)
    >>> circfft.rdfft(y, out=y) is y
    True
"""

irdfft.__doc__ = """Inverse of `rdfft`: packed (halfcomplex) spectrum back to the real signal.
""" + _PARAMS.replace("Real input", "Packed spectrum") + """
    Returns
    -------
    x : ndarray
        Real signal, same shape as the input, with
        ``x = numpy.fft.irfft(to_rfft(X, axis), n, axis=axis, norm=norm)``.  The input is
        read as ``Re Y[k] = X[k]`` (``0 <= k <= n//2``) and ``Im Y[k] = X[n-k]``
        (``0 < k < (n+1)//2``).  The object returned is ``out`` when given.

    Raises
    ------
    TypeError, ValueError
        As for `rdfft`.

    See Also
    --------
    rdfft : The forward transform.
    scipy.fft.irfft : The same transform from a complex half spectrum.

    Notes
    -----""" + _NOTES + """
    Examples
    --------
    >>> import numpy as np, circfft
    >>> circfft.irdfft(np.array([2.0, 1.0, 0.0, -3.0]))
    array([ 1.,  2.,  0., -1.])
"""
