"""A tiny third-party backend for the dispatch tests: counts its calls, delegates to numpy.

Importable as ``_spy_backend`` (tests/ is on sys.path), so it can be named by an entry point
``_spy_backend:SpyBackend``.
"""
import threading

from circfft.backends import Backend, BackendUnavailable


class SpyBackend(Backend):
    name = "spy"
    family = "numpy"
    calls = 0
    _lock = threading.Lock()

    def load(self):
        from circfft.backends.numpy_backend import NumpyBackend

        self._inner = NumpyBackend().load()
        return self

    def execute(self, x, *, forward, scale, workers):
        with SpyBackend._lock:
            SpyBackend.calls += 1
        self._inner.execute(x, forward=forward, scale=scale, workers=workers)


class BrokenBackend(Backend):
    """Always unavailable, with a reason."""

    name = "broken"
    family = "numpy"

    def load(self):
        raise BackendUnavailable("needs the imaginary library libfoo >= 9")


class OtherFamilyBackend(Backend):
    name = "otherfam"
    family = "someotherarrays"

    def execute(self, x, *, forward, scale, workers):  # pragma: no cover - never reached
        raise AssertionError("must not be called for numpy arrays")
