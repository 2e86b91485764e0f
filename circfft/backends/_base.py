"""What every backend provides, and helpers for walking rows of strided views without copies.

A backend transforms *in place* along the last axis of a real floating-point array view whose
other axes may have any strides.  Everything else (argument checking, ``norm``, ``out``
semantics, moving ``axis`` last) is done once, above the backends, in :mod:`circfft._transforms`.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["Backend", "BackendUnavailable", "as_rows", "iter_row_blocks"]


class BackendUnavailable(ImportError):
    """Raised by :meth:`Backend.load` when the backend's library cannot be used here."""


class Backend:
    """Base class for circfft backends.

    Subclasses set ``name`` (registry key) and ``family`` (the array type they serve:
    ``"numpy"``, ``"torch"``, ``"cupy"``), import their library in :meth:`load` (never at
    module import), and implement :meth:`execute`.
    """

    name: str = ""
    family: str = "numpy"

    def load(self) -> "Backend":
        """Import what the backend needs; raise :class:`BackendUnavailable` with the reason."""
        return self

    def execute(self, x, *, forward: bool, scale: float, workers: int) -> None:
        """Transform ``x`` in place along its last axis and multiply by ``scale``.

        ``forward=True`` computes the unnormalised real DFT in halfcomplex layout;
        ``forward=False`` the unnormalised inverse (``n`` times the exact inverse).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<circfft backend {self.name!r} for {self.family} arrays>"


def as_rows(x: np.ndarray) -> Iterator[np.ndarray]:
    """Yield 2-D views ``(rows, n)`` covering ``x`` (transform axis last) without copying.

    Leading axes are merged when their strides allow it; otherwise the first axis is looped.
    """
    n = x.shape[-1]
    if x.ndim == 1:
        yield x[np.newaxis, :]
        return
    try:
        yield x.reshape((-1, n), copy=False)
    except ValueError:
        for sub in x:
            yield from as_rows(sub)


def iter_row_blocks(x: np.ndarray, max_elements: int) -> Iterator[np.ndarray]:
    """Yield ``(rows, n)`` views of at most ``max(n, max_elements)`` elements covering ``x``."""
    n = x.shape[-1]
    step = max(1, max_elements // max(n, 1))
    for rows in as_rows(x):
        for start in range(0, rows.shape[0], step):
            yield rows[start: start + step]
