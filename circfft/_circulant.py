"""The circulant algebra's public operators: products, dense matrices and packed spectral products.

Conventions (``docs/operators.rst``): ``circ(c)`` is the circulant matrix with first column
``c``, ``circ(c)[r, s] = c[(r - s) mod n]``.  A block-circulant kernel ``w`` of shape
``(d_out/b, d_in/b, b)`` stands for the ``d_out x d_in`` matrix whose block ``(i, j)`` is
``circ(w[i, j])``.  Every operator acts on the last axis of ``x`` (any leading axes).

This module checks the arguments (for numpy arrays, torch tensors and cupy arrays alike) and
hands the product to the backend of the arrays' family
(:meth:`circfft.backends.Backend.block_circulant`); the algorithm itself is
:mod:`circfft._blockcirculant`.  This module never imports torch or cupy.
"""
from __future__ import annotations


from ._validation import check_axis, check_out, dtype_list
from .backends import resolve
from .backends._array_ops import array_family, ops_for_family

__all__ = ["circulant_matmul", "block_circulant_matmul", "circulant_diagonal_matmul",
           "circulant_dense", "block_circulant_dense", "spectral_mul", "apply_block_circulant"]


# ---------------------------------------------------------------------------------------------
# Argument checking
# ---------------------------------------------------------------------------------------------
def _shape(a) -> tuple:
    return tuple(int(s) for s in a.shape)


def _prepare(named, backend):
    """Check that the named arrays share family, a real floating dtype and device.

    ``named`` is a list of ``(name, array)``; ``None`` entries are skipped.  numpy inputs are
    converted with ``numpy.asarray``.  Returns ``(arrays by name, backend)``; every error is
    raised before anything is computed.
    """
    present = [(k, v) for k, v in named if v is not None]
    families = {array_family(v) for _, v in present}
    if len(families) > 1:
        desc = ", ".join(f"{k} is a {type(v).__module__.partition('.')[0]}."
                         f"{type(v).__name__}" for k, v in present)
        raise TypeError(f"all arguments must be arrays of the same library: {desc}")
    ops = ops_for_family(families.pop())
    arrays = {k: ops.asarray(v) for k, v in present}
    ref_name = present[-1][0]
    ref = arrays[ref_name]
    allowed = dtype_list(ops.kept_dtypes)
    for k, a in arrays.items():
        name = ops.dtype_name(a.dtype)
        if ops.dtype_kind(a.dtype) != "f" or name not in ops.kept_dtypes:
            raise TypeError(f"{k} must be a {allowed} array, got dtype {a.dtype} "
                            f"(shape {_shape(a)})")
        if a.dtype != ref.dtype:
            raise TypeError(f"{k} has dtype {a.dtype} (shape {_shape(a)}) but {ref_name} has "
                            f"dtype {ref.dtype} (shape {_shape(ref)}); cast one of them")
        if ops.device(a) != ops.device(ref):
            raise ValueError(f"{k} (shape {_shape(a)}) is on device {ops.device(a)} but "
                             f"{ref_name} (shape {_shape(ref)}) is on device "
                             f"{ops.device(ref)}; move one of them")
    return arrays, resolve(ref, backend)


def _check_kernel(w, name="w"):
    if w.ndim != 3:
        raise ValueError(f"{name} must have shape (d_out/b, d_in/b, b), got shape {_shape(w)}")
    m, n, b = _shape(w)
    if b < 1 or m < 1 or n < 1:
        raise ValueError(f"{name} must have a non-empty shape (d_out/b, d_in/b, b), "
                         f"got {_shape(w)}")
    return m, n, b


def _check_input(x, nblocks, b, what, wname, wshape):
    """``x`` must have ``nblocks * b`` entries on its last axis."""
    if x.ndim < 1:
        raise ValueError(f"x must have at least one dimension, got shape {_shape(x)}")
    d = int(x.shape[-1])
    if d % b:
        raise ValueError(f"block size b={b} (from {wname} of shape {wshape}) does not divide "
                         f"x.shape[-1]={d} (x has shape {_shape(x)})")
    if d != nblocks * b:
        raise ValueError(f"x has shape {_shape(x)}: its last axis holds {d // b} block(s) of "
                         f"size {b}, but {wname} of shape {wshape} expects {nblocks} {what} "
                         f"block(s), i.e. x.shape[-1] == {nblocks * b}")


def _check_vector(v, length, name, role):
    if v.ndim != 1 or int(v.shape[0]) != length:
        raise ValueError(f"{name} must have shape ({length},) ({role}), got shape {_shape(v)}")


def apply_block_circulant(w, x, *, a=None, g=None, transpose=False, backend=None,
                          save_input=False):
    """Check and run ``diag(a) C(w) diag(g) x`` (``diag(g) C(w)^T diag(a) x`` with
    ``transpose``; ``a``/``g`` None for none) on the last axis of ``x``.

    The one entry point of every block-circulant product (the public functions here and
    :mod:`circfft.nn.functional`); ``save_input`` is passed to the backend (torch: save ``x``
    instead of its spectrum for backward).
    """
    named = ([("x", x), ("w", w)] if a is None and g is None
             else [("a", a), ("g", g), ("w", w), ("x", x)])
    arrs, be = _prepare(named, backend)
    w, x = arrs["w"], arrs["x"]
    m, n, b = _check_kernel(w)
    shape = _shape(w)
    if a is not None:
        _check_vector(arrs["a"], m * b, "a", f"d_out = {m}*{b} for w of shape {shape}")
    if g is not None:
        _check_vector(arrs["g"], n * b, "g", f"d_in = {n}*{b} for w of shape {shape}")
    _check_input(x, m if transpose else n, b, "output" if transpose else "input", "w", shape)
    if not isinstance(save_input, bool):
        raise TypeError(f"save_input must be True or False, got {save_input!r}")
    pre, post = (arrs.get("a"), arrs.get("g")) if transpose else (arrs.get("g"), arrs.get("a"))
    lead = tuple(x.shape[:-1])
    x2 = x.reshape(-1, int(x.shape[-1]))
    y = be.block_circulant(w, x2, pre=pre, post=post, transpose=bool(transpose),
                           save_input=save_input)
    return y.reshape(lead + (int(y.shape[-1]),))


# ---------------------------------------------------------------------------------------------
# Public operators
# ---------------------------------------------------------------------------------------------
def block_circulant_matmul(w, x, *, transpose=False, backend=None):
    """Multiply by a block-circulant matrix: ``y = C(w) x`` on the last axis of ``x``.

    Parameters
    ----------
    w : ndarray or Tensor, shape (d_out/b, d_in/b, b)
        First columns of the circulant blocks: block ``(i, j)`` of the ``d_out x d_in`` matrix
        is ``circ(w[i, j])``, i.e. ``C[i*b + r, j*b + s] = w[i, j, (r - s) % b]``.
    x : ndarray or Tensor, shape (..., d_in)
        Input rows (``(..., d_out)`` with ``transpose=True``).  Same library, dtype and device
        as ``w``.
    transpose : bool, optional
        Multiply by ``C(w)^T`` instead, mapping ``(..., d_out)`` to ``(..., d_in)``.
    backend : str or Backend, optional
        Backend for the transforms; by default the one chosen for ``x``'s array type.

    Returns
    -------
    y : ndarray or Tensor, shape (..., d_out)
        ``(..., d_in)`` with ``transpose=True``.  Same type, dtype and device as ``x``.

    Raises
    ------
    TypeError
        ``w`` and ``x`` from different libraries or of different dtypes, or a dtype that is not
        real floating point.
    ValueError
        ``w`` not 3-d, the block size ``b`` not dividing ``x.shape[-1]``, a number of blocks
        that does not match ``w``, or ``w`` and ``x`` on different devices.

    See Also
    --------
    block_circulant_dense : The matrix ``C(w)`` itself.
    circulant_diagonal_matmul : ``diag(a) C(w) diag(g)``.

    Notes
    -----
    Every input block is transformed once, the packed spectra are combined frequency by
    frequency (a complex ``(d_out/b) x (d_in/b)`` matrix per frequency, applied as a real
    ``2x2``-block product in the packed layout), and every output block is inverse-transformed
    once: per row ``(d_in + d_out)/b`` transforms of length ``b`` and ``d_in d_out / b``
    multiply-adds.  For torch tensors the operator is differentiable in ``x`` and ``w``, saves
    only the packed spectrum of ``x`` (the size of ``x``) for backward, and works under
    ``torch.compile``.

    Examples
    --------
    >>> import numpy as np, circfft
    >>> w = np.arange(8.0).reshape(1, 2, 4)
    >>> x = np.ones(8)
    >>> np.allclose(circfft.block_circulant_matmul(w, x), circfft.block_circulant_dense(w) @ x)
    True
    """
    return apply_block_circulant(w, x, transpose=transpose, backend=backend)


def circulant_matmul(c, x, *, transpose=False, backend=None):
    """Multiply by the circulant matrix with first column ``c``: ``y = circ(c) x``.

    Parameters
    ----------
    c : ndarray or Tensor, shape (n,)
        First column: ``circ(c)[r, s] = c[(r - s) % n]``.
    x : ndarray or Tensor, shape (..., n)
        Input rows; same library, dtype and device as ``c``.
    transpose : bool, optional
        Multiply by ``circ(c)^T`` (a circular cross-correlation with ``c``).
    backend : str or Backend, optional
        Backend for the transforms; by default the one chosen for ``x``'s array type.

    Returns
    -------
    y : ndarray or Tensor, shape (..., n)
        ``irdfft(spectral_mul(rdfft(c), rdfft(x)))`` (``conj=True`` with ``transpose``).

    Raises
    ------
    TypeError
        ``c`` and ``x`` from different libraries or of different dtypes.
    ValueError
        ``c`` not 1-d, ``x.shape[-1] != len(c)``, or different devices.

    See Also
    --------
    circulant_dense : The matrix ``circ(c)``.
    block_circulant_matmul : Non-square block-circulant matrices.

    Examples
    --------
    >>> import numpy as np, circfft
    >>> c = np.array([1.0, 2.0, 3.0, 4.0])
    >>> circfft.circulant_matmul(c, np.array([0.0, 1.0, 0.0, 0.0]))
    array([4., 1., 2., 3.])
    """
    c, x = _circulant_args(c, x, backend)
    return apply_block_circulant(c.reshape(1, 1, int(c.shape[0])), x, transpose=transpose,
                                 backend=backend)


def _circulant_args(c, x, backend):
    arrs, _ = _prepare([("x", x), ("c", c)], backend)
    c, x = arrs["c"], arrs["x"]
    if c.ndim != 1 or int(c.shape[0]) < 1:
        raise ValueError(f"c must have shape (n,), got shape {_shape(c)}")
    n = int(c.shape[0])
    if x.ndim < 1 or int(x.shape[-1]) != n:
        raise ValueError(f"x has shape {_shape(x)} but c of shape {_shape(c)} needs "
                         f"x.shape[-1] == {n}")
    return c, x


def circulant_diagonal_matmul(a, w, g, x, *, transpose=False, backend=None):
    """Multiply by ``diag(a) C(w) diag(g)`` (the circulant-diagonal form, docs/operators.rst).

    Parameters
    ----------
    a : ndarray or Tensor, shape (d_out,)
        Left (output-side) diagonal.
    w : ndarray or Tensor, shape (d_out/b, d_in/b, b)
        Block-circulant kernel, as in `block_circulant_matmul`.
    g : ndarray or Tensor, shape (d_in,)
        Right (input-side) diagonal.
    x : ndarray or Tensor, shape (..., d_in)
        Input rows (``(..., d_out)`` with ``transpose=True``).
    transpose : bool, optional
        Multiply by the transpose ``diag(g) C(w)^T diag(a)`` instead.
    backend : str or Backend, optional
        Backend for the transforms; by default the one chosen for ``x``'s array type.

    Returns
    -------
    y : ndarray or Tensor, shape (..., d_out)
        ``a * (C(w) (g * x))``; ``g * (C(w)^T (a * x))`` with ``transpose=True``.

    Raises
    ------
    TypeError
        Arguments from different libraries or of different dtypes.
    ValueError
        Shapes that do not fit ``w`` (named in the message), or different devices.

    See Also
    --------
    block_circulant_matmul : The product without the diagonals.

    Notes
    -----
    With one circulant factor (``b = d``) the operator has ``d_out + d_in + d_in d_out / b``
    parameters, ``3d`` for a square weight.  Starting from ``a = 0`` gives a zero product with a
    non-zero gradient for ``a``.  For torch tensors all four inputs get gradients; only the
    packed spectrum of ``g * x`` is saved (plus ``x`` itself when ``g`` needs a gradient), and
    the gradient of ``a`` recomputes ``C(w) (g * x)`` chunk by chunk from that spectrum.

    Examples
    --------
    >>> import numpy as np, circfft
    >>> a, g = np.array([1.0, 2.0]), np.array([3.0, 1.0])
    >>> w = np.array([[[1.0, 1.0]]])
    >>> circfft.circulant_diagonal_matmul(a, w, g, np.array([1.0, 0.0]))
    array([3., 6.])
    """
    if a is None or g is None:
        raise TypeError("a and g must be arrays (use block_circulant_matmul without diagonals)")
    return apply_block_circulant(w, x, a=a, g=g, transpose=transpose, backend=backend)


def circulant_dense(c, *, backend=None):
    """The dense circulant matrix ``circ(c)`` (first column ``c``), by index gather.

    Parameters
    ----------
    c : ndarray or Tensor, shape (n,)
        First column.
    backend : str or Backend, optional
        Unused for numpy arrays; selects the backend for other array types.

    Returns
    -------
    C : ndarray or Tensor, shape (n, n)
        ``C[r, s] = c[(r - s) % n]``; differentiable for torch tensors.

    Raises
    ------
    ValueError
        ``c`` is not 1-d.

    Examples
    --------
    >>> import numpy as np, circfft
    >>> circfft.circulant_dense(np.array([1.0, 2.0, 3.0]))
    array([[1., 3., 2.],
           [2., 1., 3.],
           [3., 2., 1.]])
    """
    arrs, be = _prepare([("c", c)], backend)
    c = arrs["c"]
    if c.ndim != 1 or int(c.shape[0]) < 1:
        raise ValueError(f"c must have shape (n,), got shape {_shape(c)}")
    n = int(c.shape[0])
    return block_circulant_dense(c.reshape(1, 1, n), backend=backend)


def block_circulant_dense(w, *, backend=None):
    """The dense ``d_out x d_in`` block-circulant matrix of the kernel ``w``, by index gather.

    Parameters
    ----------
    w : ndarray or Tensor, shape (d_out/b, d_in/b, b)
        Block-circulant kernel.
    backend : str or Backend, optional
        Unused for numpy arrays; selects the backend for other array types.

    Returns
    -------
    W : ndarray or Tensor, shape (d_out, d_in)
        ``W[i*b + r, j*b + s] = w[i, j, (r - s) % b]``: no transform, no identity matrix.
        Differentiable for torch tensors (the gradient is a scatter-add back into ``w``).

    Raises
    ------
    ValueError
        ``w`` is not 3-d.

    Examples
    --------
    >>> import numpy as np, circfft
    >>> circfft.block_circulant_dense(np.array([[[1.0, 2.0], [3.0, 4.0]]]))
    array([[1., 2., 3., 4.],
           [2., 1., 4., 3.]])
    """
    arrs, be = _prepare([("w", w)], backend)
    w = arrs["w"]
    m, n, b = _check_kernel(w)
    # W[i*b + r, j*b + s] = w[i, j, (r - s) % b]: one gather with broadcast index arrays
    ops = be.ops
    r = ops.arange(b, w)
    idx = (r[:, None] - r[None, :]) % b
    i = ops.arange(m, w)[:, None, None, None]
    j = ops.arange(n, w)[None, None, :, None]
    return w[i, j, idx[None, :, None, :]].reshape(m * b, n * b)


def spectral_mul(A, B, *, conj=False, out=None, axis=-1, backend=None):
    """Pair-wise product of two packed spectra: the spectrum of a circular convolution.

    Parameters
    ----------
    A, B : array_like of float32 or float64 (or a tensor / cupy array)
        Packed spectra of equal length along ``axis``; other axes broadcast.  torch and cupy
        half-precision spectra are multiplied in float32 and stored in their dtype.
    conj : bool, optional
        If True compute ``conj(A) * B`` (the spectrum of a circular cross-correlation, used by
        every transpose and backward pass); otherwise ``A * B``.
    out : array, optional
        Where to write the product: an array of the broadcast shape and the operands' dtype;
        may be ``A`` or ``B`` itself (the product is computed pair by pair, so it runs in
        place on either operand), but must not overlap them otherwise.
    axis : int, optional
        Axis holding the packed rows. Default is the last.
    backend : str or Backend, optional
        Backend to use; by default the one chosen for the arrays' type.

    Returns
    -------
    Z : array
        Packed spectrum of the product: ``Z[k] + 1j*Z[n-k] = A_k * B_k`` (or
        ``conj(A_k) * B_k``) for ``0 < k < (n+1)//2``, ``Z[0] = A[0]*B[0]`` and, for even
        ``n``, ``Z[n/2] = A[n/2]*B[n/2]``.  ``out`` when given.  Differentiable for tensors.

    Raises
    ------
    TypeError
        Operands of different libraries or dtypes, a dtype that is not real floating point,
        an ``out`` of the wrong type or dtype.
    ValueError
        Different lengths along ``axis``, shapes that do not broadcast, an ``out`` of the
        wrong shape or partially overlapping an operand, different devices.

    Examples
    --------
    >>> import numpy as np, circfft
    >>> a, b = np.array([1., 2, 0, 0]), np.array([0., 1, 0, 0])
    >>> c = circfft.irdfft(circfft.spectral_mul(circfft.rdfft(a), circfft.rdfft(b)))
    >>> np.allclose(c, [0, 1, 2, 0])          # a shifted by one place, up to rounding
    True
    """
    arrs, be = _prepare([("A", A), ("B", B)], backend)
    A, B = arrs["A"], arrs["B"]
    ops = be.ops
    for name, t in (("A", A), ("B", B)):
        if t.ndim == 0:
            raise ValueError(f"{name} must have at least one dimension")
    ndim = max(A.ndim, B.ndim)
    axis = check_axis(axis, ndim)
    Am = ops.moveaxis(A.reshape((1,) * (ndim - A.ndim) + tuple(A.shape)), axis, -1)
    Bm = ops.moveaxis(B.reshape((1,) * (ndim - B.ndim) + tuple(B.shape)), axis, -1)
    if Am.shape[-1] != Bm.shape[-1]:
        raise ValueError(f"A and B must have the same length along axis {axis}, "
                         f"got {Am.shape[-1]} and {Bm.shape[-1]}")
    try:
        shape = tuple(ops.broadcast_shapes(tuple(Am.shape), tuple(Bm.shape)))
    except ValueError:
        raise ValueError(f"A and B do not broadcast: shapes {_shape(A)} and {_shape(B)} "
                         "(packed axis moved last)") from None
    moved = shape[:axis] + shape[-1:] + shape[axis:-1]          # the broadcast shape, axis back
    if out is None:
        Z = ops.empty(shape, A.dtype, A)
    else:
        check_out(out, ops, shape=moved, dtype=A.dtype, operands=[("A", A), ("B", B)],
                  shape_name="the broadcast shape", result="an in-place product")
        Z = ops.moveaxis(out, axis, -1)
    be.pair_mul(Am, Bm, Z, conj=bool(conj))
    return ops.moveaxis(Z, -1, axis) if out is None else out
