"""The backend protocol: what a backend must provide, and the generic defaults of the rest.

A backend serves one array *family* (``"numpy"``, ``"torch"`` or ``"cupy"``).  It must provide
:meth:`Backend.load` and :meth:`Backend.execute` (an unnormalised in-place transform along the
last axis); every other method has a generic default written once over the family's array
operations (:mod:`._array_ops`), which a backend overrides only to be faster or to add
autograd.  Argument checking, ``norm``, ``out`` semantics and moving ``axis`` last are done once,
above the backends (:mod:`circfft._transforms`, :mod:`circfft._circulant`).  See the docs'
``docs/backends.rst``, "The backend protocol", for the contract.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .._chunking import rows_per_chunk
from .._layout import pack_half_spectrum, packed_product, unpack_half_spectrum
from ._array_ops import ops_for_family

__all__ = ["Backend", "BackendUnavailable", "as_rows", "iter_row_blocks", "merged_rows",
           "transform_any_length"]


class BackendUnavailable(ImportError):
    """Raised by :meth:`Backend.load` when the backend's library cannot be used here."""


class Backend:
    """Base class of circfft backends: two required methods, generic defaults for the rest.

    Subclasses set ``name`` (registry key) and ``family`` (the array type they serve), import
    their library in :meth:`load` (never at module import) and implement :meth:`execute`.

    Required
        :meth:`load`, :meth:`execute`.
    Generic defaults (override to be faster, or for autograd)
        :meth:`transform_inplace`, :meth:`transform_copy` (the public ``rdfft``/``irdfft``
        after validation), :meth:`pair_mul` (packed products), :meth:`block_circulant` (the
        block-circulant operators, via :mod:`circfft._blockcirculant` and
        :meth:`bc_primitives`).
    """

    name: str = ""
    family: str = "numpy"

    # -- required ---------------------------------------------------------------------------
    def load(self) -> "Backend":
        """Import what the backend needs; raise :class:`BackendUnavailable` with the reason."""
        return self

    def execute(self, x, *, forward: bool, scale: float, workers: int) -> None:
        """Transform ``x`` in place along its last axis and multiply by ``scale``.

        ``x`` is a real array of the backend's family (float32/float64, and the half
        precisions the family keeps), any strides on the other axes, no autograd.
        ``forward=True`` computes the unnormalised real DFT in the packed layout;
        ``forward=False`` the unnormalised inverse (``n`` times the exact inverse).
        """
        raise NotImplementedError

    # -- generic defaults --------------------------------------------------------------------
    @property
    def ops(self):
        """The array operations of this backend's family."""
        return ops_for_family(self.family)

    def transform_inplace(self, x, *, axis: int, forward: bool, scale: float, workers: int):
        """Validated ``rdfft``/``irdfft`` of ``x`` in place along ``axis``; returns ``x``."""
        if self.ops.size(x):
            self.execute(self.ops.moveaxis(x, axis, -1), forward=forward, scale=scale,
                         workers=workers)
        return x

    def transform_copy(self, x, *, dtype, axis: int, forward: bool, scale: float,
                       workers: int):
        """Validated ``rdfft``/``irdfft`` of ``x`` into a new array of ``dtype``."""
        return self.transform_inplace(self.ops.copy(x, dtype), axis=axis, forward=forward,
                                      scale=scale, workers=workers)

    def pair_mul(self, A, B, Z, *, conj: bool) -> None:
        """``Z = A * B`` (``conj(A) * B``) pair by pair on packed rows (last axis).

        ``A``, ``B`` and ``Z`` have the same shape (broadcast views allowed for ``A``, ``B``);
        ``Z`` may be ``A`` or ``B`` itself.
        """
        packed_product(A, B, Z, conj, self.ops)

    def bc_primitives(self, geometry, dtype, like):
        """Primitives of the block-circulant algorithm for arrays of this family.

        The default computes spectra with :meth:`execute` and products with the family's
        complex matmul (:class:`circfft._blockcirculant.ReferencePrimitives`).
        """
        from .._blockcirculant import ReferencePrimitives

        return ReferencePrimitives(self, geometry, dtype, like)

    def block_circulant(self, w, x, *, pre=None, post=None, transpose=False,
                        save_input=False):
        """``post * C(w) (pre * x)`` (``C(w)^T`` with ``transpose``) on rows ``x`` (T, d).

        Arguments are validated by :mod:`circfft._circulant`; ``x`` is 2-d.  The default runs
        :func:`circfft._blockcirculant.forward` over all rows at once, without autograd.
        """
        from .. import _blockcirculant as bc

        return bc.forward(self, w, x, pre, post, transpose)

    def __repr__(self) -> str:
        return f"<circfft backend {self.name!r} for {self.family} arrays>"


# ---------------------------------------------------------------------------------------------
# Generic pieces used by several backends
# ---------------------------------------------------------------------------------------------
def transform_any_length(x, forward: bool, scale: float, workers: int = 1) -> None:
    """Any length, in place on rows ``x`` (last axis), through the family's FFT (for numpy
    arrays ``scipy.fft`` when installed, with ``workers`` threads, else ``numpy.fft``) and one
    temporary of the rows' size: the fallback for lengths the kernels do not handle."""
    from ._array_ops import ops_for

    ops = ops_for(x)
    n = x.shape[-1]
    if forward:
        pack_half_spectrum(ops.rfft_last(x, workers), n, x, scale, ops)
    else:
        ops.mul_into(x, ops.irfft_last(unpack_half_spectrum(x, ops), n, workers), scale)


def as_rows(x: np.ndarray) -> Iterator[np.ndarray]:
    """Yield 2-D views ``(rows, n)`` covering ``x`` (transform axis last) without copying.

    Leading axes are merged when their strides allow it; otherwise the first axis is looped.
    """
    if x.ndim == 1:
        yield x[np.newaxis, :]
        return
    merged = merged_rows(x)
    if merged is not None:
        yield merged
        return
    for sub in x:
        yield from as_rows(sub)


def merged_rows(x: np.ndarray):
    """``x`` as one ``(rows, n)`` view when its leading axes collapse to one stride, else None.

    (``reshape(..., copy=False)`` says the same but needs numpy >= 2.1.)
    """
    lead = [(s, st) for s, st in zip(x.shape[:-1], x.strides[:-1]) if s != 1]
    if any(lead[i][1] != lead[i + 1][1] * lead[i + 1][0] for i in range(len(lead) - 1)):
        return None
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    stride = lead[-1][1] if lead else x.itemsize * x.shape[-1]
    return np.lib.stride_tricks.as_strided(x, (rows, x.shape[-1]), (stride, x.strides[-1]))


def iter_row_blocks(x: np.ndarray) -> Iterator[np.ndarray]:
    """Yield ``(rows, n)`` views covering ``x``, chunked by :mod:`circfft._chunking`."""
    for rows in as_rows(x):
        step = rows_per_chunk(rows.shape[0], x.shape[-1])
        for start in range(0, rows.shape[0], step):
            yield rows[start: start + step]
