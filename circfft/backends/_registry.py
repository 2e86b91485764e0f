"""Backend registry and selection.

Selection order for an array: the ``backend=`` keyword, else the innermost
:func:`set_backend` context whose backend serves the array's family, else the first available
backend of that family in ``DEFAULTS``.  The array's family is found the way array-api-compat
does it: a library that is not in ``sys.modules`` cannot have produced the array, so checking
never imports torch or cupy.  Backends are imported on first use; third-party backends register
through the ``circfft.backends`` entry-point group (value: a :class:`~circfft.backends.Backend`
subclass or instance).
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from contextvars import ContextVar
from typing import NamedTuple

from ._array_ops import array_family
from ._base import Backend, BackendUnavailable

__all__ = ["BackendStatus", "available", "get_backend", "resolve", "set_backend",
           "array_family", "register_backend"]

#: Built-in backends: name -> "module:class" (imported lazily).
BUILTIN = {
    "numpy": "circfft.backends.numpy_backend:NumpyBackend",
    "numba": "circfft.backends.numba_backend:NumbaBackend",
    "torch": "circfft.backends.torch_backend:TorchBackend",
    "cupy": "circfft.backends.cupy_backend:CupyBackend",
}
#: Default preference per array family.
DEFAULTS = {"numpy": ("numba", "numpy"), "torch": ("torch",), "cupy": ("cupy",)}
ENTRY_POINT_GROUP = "circfft.backends"

_specs: dict[str, object] = dict(BUILTIN)
_loaded: dict[str, Backend] = {}
_failed: dict[str, str] = {}
_lock = threading.Lock()
_entry_points_read = False
_current: ContextVar[tuple[str, ...]] = ContextVar("circfft_backend", default=())


class BackendStatus(NamedTuple):
    """One row of :func:`available`."""

    name: str
    family: str | None
    available: bool
    reason: str


def register_backend(name: str, spec) -> None:
    """Register a backend under ``name``: a Backend subclass/instance or ``"module:Class"``."""
    with _lock:
        _specs[name] = spec
        _loaded.pop(name, None)
        _failed.pop(name, None)


def _read_entry_points() -> None:
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _specs.setdefault(ep.name, ep)


def _instantiate(spec) -> Backend:
    if isinstance(spec, str):
        module, _, attr = spec.partition(":")
        spec = getattr(importlib.import_module(module), attr)
    elif hasattr(spec, "load") and hasattr(spec, "group"):      # an EntryPoint
        spec = spec.load()
    backend = spec() if isinstance(spec, type) else spec
    if not isinstance(backend, Backend):
        raise TypeError(f"{spec!r} is not a circfft.backends.Backend")
    return backend.load()


def get_backend(name: str) -> Backend:
    """Return the loaded backend ``name``; ``ValueError`` if unknown or unavailable."""
    backend = _loaded.get(name)
    if backend is not None:
        return backend
    if name not in _specs:
        _read_entry_points()
    if name not in _specs:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(sorted(_specs))}")
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _failed:
            raise ValueError(f"backend {name!r} is unavailable: {_failed[name]}")
        try:
            backend = _instantiate(_specs[name])
        except (BackendUnavailable, ImportError) as exc:
            _failed[name] = str(exc) or type(exc).__name__
            raise ValueError(f"backend {name!r} is unavailable: {_failed[name]}") from exc
        _loaded[name] = backend
        return backend


def available() -> dict[str, BackendStatus]:
    """Every known backend (built-in and entry points), whether it loads, and why not."""
    _read_entry_points()
    result = {}
    for name in list(_specs):
        try:
            backend = get_backend(name)
        except (ValueError, TypeError) as exc:
            result[name] = BackendStatus(name, None, False, str(exc))
        else:
            result[name] = BackendStatus(name, backend.family, True, "")
    return result


def _torch_is_compiling() -> bool:
    torch = sys.modules.get("torch")
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def resolve(x, backend=None) -> Backend:
    """The backend that will transform ``x``."""
    family = array_family(x)
    if backend is not None:
        be = backend if isinstance(backend, Backend) else get_backend(backend)
        if be.family != family:
            raise TypeError(f"backend {be.name!r} works on {be.family} arrays, "
                            f"got a {family} array ({type(x).__name__})")
        return be
    if not (family == "torch" and _torch_is_compiling()):
        # torch.compile cannot trace a ContextVar read: while compiling, tensors get the
        # default torch backend (set_backend still applies in eager code).
        for name in reversed(_current.get()):
            be = get_backend(name)
            if be.family == family:
                return be
    reasons = []
    for name in DEFAULTS.get(family, ()):
        try:
            return get_backend(name)
        except ValueError as exc:
            reasons.append(str(exc))
    raise TypeError(f"no backend available for {family} arrays ({type(x).__name__}): "
                    + "; ".join(reasons))


@contextlib.contextmanager
def set_backend(name: str):
    """Context manager selecting backend ``name`` for arrays of its family.

    The choice is held in a ``ContextVar``, so it is local to the current thread or asyncio
    task, and contexts nest.

    Examples
    --------
    >>> import numpy as np, circfft
    >>> with circfft.set_backend("numpy"):
    ...     X = circfft.rdfft(np.arange(4.0))
    >>> X
    array([ 6., -2., -2.,  2.])
    """
    get_backend(name)          # fail early, with the reason
    token = _current.set(_current.get() + (name,))
    try:
        yield
    finally:
        _current.reset(token)
