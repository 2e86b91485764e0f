"""Backends: one module each, imported on first use.

``available()`` lists every backend with its state; ``Backend`` is the base class for
third-party backends (entry-point group ``circfft.backends``).
"""
from ._base import Backend, BackendUnavailable

__all__ = ["Backend", "BackendUnavailable", "BackendStatus", "available", "get_backend",
           "register_backend"]

_FROM_DISPATCH = {"BackendStatus", "available", "get_backend", "register_backend"}


def __getattr__(name):
    # The registry lives in circfft._dispatch, which imports this package: resolve lazily.
    if name in _FROM_DISPATCH:
        from .. import _dispatch

        return getattr(_dispatch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
