"""Circulant and block-circulant operators on numpy arrays and torch tensors.

Conventions (DESIGN §4): ``circ(c)`` is the circulant matrix with first column ``c``,
``circ(c)[r, s] = c[(r - s) mod n]``.  A block-circulant kernel ``w`` of shape
``(d_out/b, d_in/b, b)`` stands for the ``d_out x d_in`` matrix whose block ``(i, j)`` is
``circ(w[i, j])``.  Every operator acts on the last axis of ``x`` (any leading axes).

numpy arrays are computed here with :func:`circfft.rdfft`/:func:`circfft.irdfft`; other array
families are handed to their backend (for torch: custom autograd operators that save only the
packed spectrum of the input).  This module never imports torch.
"""
from __future__ import annotations

import numpy as np

from ._dispatch import array_family, resolve
from ._layout import from_rfft, spectral_mul, to_rfft
from ._transforms import irdfft, rdfft

__all__ = ["circulant_matmul", "block_circulant_matmul", "circulant_diagonal_matmul",
           "circulant_dense", "block_circulant_dense"]

_NUMPY_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------------------------------
# Argument checking
# ---------------------------------------------------------------------------------------------
def _shape(a) -> tuple:
    return tuple(int(s) for s in a.shape)


def _prepare(named, backend):
    """Check that the named arrays share family, dtype and device; return (arrays, backend).

    ``named`` is a list of ``(name, array)``; ``None`` entries are skipped.  numpy inputs are
    converted with ``numpy.asarray``.  The backend is None for numpy arrays.
    """
    present = [(k, v) for k, v in named if v is not None]
    families = {k: array_family(v) for k, v in present}
    fams = set(families.values())
    if len(fams) > 1:
        desc = ", ".join(f"{k} is a {type(v).__module__.partition('.')[0]}."
                         f"{type(v).__name__}" for k, v in present)
        raise TypeError(f"all arguments must be arrays of the same library: {desc}")
    family = fams.pop()
    out = {}
    if family == "numpy":
        for k, v in present:
            out[k] = np.asarray(v)
        ref_name, ref = present[-1][0], out[present[-1][0]]
        for k, v in present:
            a = out[k]
            if a.dtype not in _NUMPY_DTYPES:
                raise TypeError(f"{k} must be a float32 or float64 array, got dtype {a.dtype} "
                                f"(shape {_shape(a)})")
            if a.dtype != ref.dtype:
                raise TypeError(f"{k} has dtype {a.dtype} (shape {_shape(a)}) but {ref_name} "
                                f"has dtype {ref.dtype} (shape {_shape(ref)}); cast one of them")
        be = resolve(ref, backend) if backend is not None else None
        return out, be
    ref_name, ref = present[-1]
    for k, v in present:
        if v.dtype != ref.dtype:
            raise TypeError(f"{k} has dtype {v.dtype} (shape {_shape(v)}) but {ref_name} has "
                            f"dtype {ref.dtype} (shape {_shape(ref)}); cast one of them")
        dev, rdev = getattr(v, "device", None), getattr(ref, "device", None)
        if dev != rdev:
            raise ValueError(f"{k} (shape {_shape(v)}) is on device {dev} but {ref_name} "
                             f"(shape {_shape(ref)}) is on device {rdev}; move one of them")
    return dict(present), resolve(ref, backend)


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


# ---------------------------------------------------------------------------------------------
# numpy implementations
# ---------------------------------------------------------------------------------------------
def _bc_numpy(w, x, pre, post, transpose, backend):
    """``post * C(w) (pre * x)`` (``C^T`` with ``transpose``) for numpy arrays."""
    m, n, b = w.shape
    nx, ny = (m, n) if transpose else (n, m)
    lead = x.shape[:-1]
    u = x * pre if pre is not None else x
    X = to_rfft(rdfft(u.reshape(lead + (nx, b)), backend=backend))     # (..., nx, F)
    Wc = to_rfft(rdfft(w, backend=backend))                             # (m, n, F)
    F = X.shape[-1]
    Xk = np.ascontiguousarray(np.moveaxis(X.reshape(-1, nx, F), -1, 0))  # (F, T, nx)
    if transpose:
        Mk = np.ascontiguousarray(np.conj(Wc).transpose(2, 0, 1))      # (F, m, n)
    else:
        Mk = np.ascontiguousarray(Wc.transpose(2, 1, 0))                # (F, n, m)
    Yk = np.matmul(Xk, Mk)                                              # (F, T, ny)
    Y = from_rfft(np.moveaxis(Yk, 0, -1), b)                            # (T, ny, b)
    y = irdfft(Y, out=Y, backend=backend).reshape(lead + (ny * b,))
    if post is not None:
        y *= post
    return y


def _bc_generic(be, w, x, pre, post, transpose):
    """Fallback for array families whose backend has transforms and ``spectral_mul`` only."""
    m, n, b = _shape(w)
    nx, ny = (m, n) if transpose else (n, m)
    lead = _shape(x)[:-1]
    u = x * pre if pre is not None else x
    X = rdfft(u.reshape(lead + (nx, b)), backend=be)
    W = rdfft(w, backend=be)
    outs = []
    for o in range(ny):
        acc = None
        for i in range(nx):
            Wij = W[i, o] if transpose else W[o, i]
            term = be.spectral_mul(Wij, X[..., i, :], conj=transpose)
            acc = term if acc is None else acc + term
        outs.append(irdfft(acc, backend=be))
    y = outs[0] if ny == 1 else _concat(outs)
    return y * post if post is not None else y


def _concat(parts):
    mod = type(parts[0]).__module__.partition(".")[0]
    import sys

    lib = sys.modules[mod]
    cat = getattr(lib, "cat", None) or getattr(lib, "concatenate")
    return cat(parts, -1)


def _dense_index(b):
    r = np.arange(b)
    return (r[:, None] - r[None, :]) % b


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
    arrs, be = _prepare([("x", x), ("w", w)], backend)
    w, x = arrs["w"], arrs["x"]
    m, n, b = _check_kernel(w)
    _check_input(x, m if transpose else n, b, "output" if transpose else "input", "w",
                 _shape(w))
    return _dispatch_bc(be, w, x, None, None, bool(transpose), backend)


def _dispatch_bc(be, w, x, pre, post, transpose, backend):
    if be is None or be.family == "numpy":
        return _bc_numpy(w, x, pre, post, transpose, backend)
    if hasattr(be, "block_circulant_matmul"):
        return be.block_circulant_matmul(w, x, transpose=transpose, pre=pre, post=post)
    return _bc_generic(be, w, x, pre, post, transpose)


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
    arrs, be = _prepare([("x", x), ("c", c)], backend)
    c, x = arrs["c"], arrs["x"]
    if c.ndim != 1 or int(c.shape[0]) < 1:
        raise ValueError(f"c must have shape (n,), got shape {_shape(c)}")
    n = int(c.shape[0])
    if x.ndim < 1 or int(x.shape[-1]) != n:
        raise ValueError(f"x has shape {_shape(x)} but c of shape {_shape(c)} needs "
                         f"x.shape[-1] == {n}")
    if be is None or be.family == "numpy":
        C = rdfft(c, backend=backend)
        X = rdfft(x, backend=backend)
        Y = spectral_mul(C, X, conj=bool(transpose), out=X)
        return irdfft(Y, out=Y, backend=backend)
    return _dispatch_bc(be, c.reshape(1, 1, n), x, None, None, bool(transpose), backend)


def circulant_diagonal_matmul(a, w, g, x, *, transpose=False, backend=None):
    """Multiply by ``diag(a) C(w) diag(g)`` (the circulant-diagonal form, DESIGN §4).

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
    arrs, be = _prepare([("a", a), ("g", g), ("w", w), ("x", x)], backend)
    a, g, w, x = arrs["a"], arrs["g"], arrs["w"], arrs["x"]
    m, n, b = _check_kernel(w)
    _check_vector(a, m * b, "a", f"d_out = {m}*{b} for w of shape {_shape(w)}")
    _check_vector(g, n * b, "g", f"d_in = {n}*{b} for w of shape {_shape(w)}")
    _check_input(x, m if transpose else n, b, "output" if transpose else "input", "w",
                 _shape(w))
    pre, post = (a, g) if transpose else (g, a)
    return _dispatch_bc(be, w, x, pre, post, bool(transpose), backend)


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
    if be is not None and be.family != "numpy" and hasattr(be, "block_circulant_dense"):
        return be.block_circulant_dense(w)
    idx = _dense_index(b)
    i = np.arange(m)[:, None, None, None]
    j = np.arange(n)[None, None, :, None]
    return w[i, j, idx[None, :, None, :]].reshape(m * b, n * b)
