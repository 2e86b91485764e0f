"""User settings: one documented configuration object, scoped with a context manager.

``circfft.config(...)`` changes settings for the code inside its ``with`` block, in the current
thread or asyncio task only (a ``ContextVar``, like :func:`circfft.set_backend`); calling
``circfft.get_config()`` returns the settings in effect.  The settings only change how work is
split or which route computes a result, never the result beyond rounding.
"""
from __future__ import annotations

import contextlib
import dataclasses
from contextvars import ContextVar

__all__ = ["Config", "config", "get_config"]

_ROUTES = ("auto", "merged", "separate")
_GRADS = ("auto", "gather", "dense")


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings in effect (see :func:`config`).

    Attributes
    ----------
    chunk_elements : int
        CPU work on rows (the block-circulant products, FourierFT, the merged adapters'
        kernel gradients, the numpy backend) is split into chunks of about this many elements
        per row side, so temporaries stay cache-sized and never grow with the number of rows.
        Default ``2**18``.  GPUs take all rows at once.
    adapter_route : {"auto", "merged", "separate"}
        How an adapter layer with one pending adapter computes ``base(x) + dW x``: "merged"
        uses one matmul with ``W + dW`` where possible; "separate" runs the base layer plus
        the structured (Fourier-domain) update; "auto" picks by the rule in the fine-tuning
        guide.  Default "auto".
    fourierft_grad : {"auto", "gather", "dense"}
        How the merged FourierFT route gets the gradient of its ``n`` coefficients: by
        gathering ``n`` products of the spectra of ``x`` and ``grad y`` per token ("gather"),
        or from the dense ``grad_y^T x`` ("dense"); "auto" gathers when ``256 n < d_out d_in``.
    save_merged_weight : bool
        Keep the merged FourierFT weight for backward (one 2-d transform less per step, one
        ``d_out x d_in`` weight more per layer in memory).  Default False.
    torch_fft : bool
        Compute the transforms of torch tensors with ``torch.fft`` and the block-circulant
        products with the reference primitives instead of circfft's kernels: the route CUDA
        tensors take when CuPy is missing.  Default False.
    """

    chunk_elements: int = 1 << 18
    adapter_route: str = "auto"
    fourierft_grad: str = "auto"
    save_merged_weight: bool = False
    torch_fft: bool = False

    def __post_init__(self):
        ce = self.chunk_elements
        if isinstance(ce, bool) or not isinstance(ce, int) or ce < 1:
            raise ValueError(f"chunk_elements must be a positive int, got {ce!r}")
        if self.adapter_route not in _ROUTES:
            raise ValueError(f"adapter_route must be one of {_ROUTES}, got "
                             f"{self.adapter_route!r}")
        if self.fourierft_grad not in _GRADS:
            raise ValueError(f"fourierft_grad must be one of {_GRADS}, got "
                             f"{self.fourierft_grad!r}")
        for name in ("save_merged_weight", "torch_fft"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")


_current: ContextVar[Config] = ContextVar("circfft_config", default=Config())


def get_config() -> Config:
    """The settings in effect in this thread / task."""
    return _current.get()


@contextlib.contextmanager
def config(**settings):
    """Change circfft's settings inside a ``with`` block (this thread or task only).

    Parameters
    ----------
    **settings
        Any attribute of :class:`Config` (``chunk_elements``, ``adapter_route``,
        ``fourierft_grad``, ``save_merged_weight``, ``torch_fft``); the others keep their
        values.  Blocks nest.

    Raises
    ------
    TypeError
        An unknown setting, or a bool setting given something else than True/False.
    ValueError
        A value out of range or of the wrong kind (``chunk_elements`` not a positive int,
        an unknown route).

    Examples
    --------
    >>> import circfft
    >>> with circfft.config(chunk_elements=4096):
    ...     circfft.get_config().chunk_elements
    4096
    >>> circfft.get_config().chunk_elements
    262144
    """
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown circfft setting(s) {unknown}; known: {sorted(known)}")
    token = _current.set(dataclasses.replace(_current.get(), **settings))
    try:
        yield get_config()
    finally:
        _current.reset(token)
