"""Backends: the registry that picks one per array, the protocol they follow, and the built-ins.

``available()`` lists every backend with its state; :class:`Backend` is the protocol a
third-party backend implements (entry-point group ``circfft.backends``; see the docs' backends
page).  Built-in backends are imported on first use, so importing this package imports neither
numba, torch nor cupy.
"""
from ._base import Backend, BackendUnavailable
from ._registry import (BackendStatus, array_family, available, get_backend, register_backend,
                        resolve, set_backend)

__all__ = ["Backend", "BackendUnavailable", "BackendStatus", "available", "get_backend",
           "register_backend", "resolve", "set_backend", "array_family"]
