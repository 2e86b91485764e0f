"""Backend registry and selection: available(), set_backend (ContextVar), backend=, third-party
backends (register_backend and entry points), lazy imports, workers rules."""
import json
import os
import subprocess
import sys
import threading
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

import circfft
from circfft.backends import _registry as _dispatch
from circfft.backends import Backend

from _spy_backend import BrokenBackend, OtherFamilyBackend, SpyBackend

ROOT = Path(__file__).resolve().parents[1]


def _has_numba():
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def registry(monkeypatch):
    """Isolate the registry: registrations made by a test are undone afterwards."""
    monkeypatch.setattr(_dispatch, "_specs", dict(_dispatch._specs))
    monkeypatch.setattr(_dispatch, "_loaded", dict(_dispatch._loaded))
    monkeypatch.setattr(_dispatch, "_failed", dict(_dispatch._failed))
    SpyBackend.calls = 0
    return _dispatch


# --------------------------------------------------------------------------------------------
def test_available_lists_numpy_and_numba_with_reasons(registry):
    status = circfft.backends.available()
    assert {"numpy", "numba"} <= set(status)
    np_status = status["numpy"]
    assert np_status.name == "numpy" and np_status.available and np_status.family == "numpy"
    assert np_status.reason == ""
    nb = status["numba"]
    assert nb.available == _has_numba()
    if not nb.available:
        assert "numba" in nb.reason
    for name, st in status.items():
        assert st.name == name
        assert isinstance(st.reason, str)
        if not st.available:
            assert st.reason, f"unavailable backend {name} gives no reason"


def test_available_reports_unavailable_backend_and_reason(registry):
    circfft.backends.register_backend("broken", BrokenBackend)
    status = circfft.backends.available()
    assert status["broken"].available is False
    assert "libfoo" in status["broken"].reason
    with pytest.raises(ValueError, match="broken.*libfoo"):
        circfft.rdfft(np.ones(4), backend="broken")
    with pytest.raises(ValueError, match="libfoo"):
        with circfft.set_backend("broken"):
            pass


def test_default_backend_for_numpy_arrays():
    expected = "numba" if _has_numba() else "numpy"
    assert _dispatch.resolve(np.ones(8)).name == expected
    assert _dispatch.resolve([1.0, 2.0]).name == expected     # array-likes are numpy's


# --------------------------------------------------------------------------------------------
def test_backend_keyword_by_name_and_instance(registry):
    circfft.backends.register_backend("spy", SpyBackend)
    x = np.arange(8.0)
    expected = circfft.rdfft(x, backend="numpy")
    np.testing.assert_array_equal(circfft.rdfft(x, backend="spy"), expected)
    assert SpyBackend.calls == 1
    inst = SpyBackend().load()
    np.testing.assert_array_equal(circfft.irdfft(expected, backend=inst),
                                  circfft.irdfft(expected, backend="numpy"))
    assert SpyBackend.calls == 2


def test_unknown_backend_names_raise_value_error(registry):
    with pytest.raises(ValueError, match="nonexistent_be"):
        with circfft.set_backend("nonexistent_be"):
            pass
    with pytest.raises(ValueError, match="nonexistent_be"):
        circfft.rdfft(np.ones(4), backend="nonexistent_be")
    with pytest.raises(ValueError, match="nonexistent_be"):
        circfft.backends.get_backend("nonexistent_be")


def test_backend_of_another_array_family_is_a_type_error(registry):
    circfft.backends.register_backend("otherfam", OtherFamilyBackend)
    x = np.ones(8)
    x0 = x.copy()
    with pytest.raises(TypeError, match="otherfam"):
        circfft.rdfft(x, backend="otherfam", out=x)
    np.testing.assert_array_equal(x, x0)


def test_register_backend_forms(registry):
    """A Backend subclass, an instance, or a "module:Class" string."""
    x = np.random.default_rng(0).standard_normal((3, 16))
    expected = circfft.rdfft(x, backend="numpy")
    for i, spec in enumerate([SpyBackend, SpyBackend(), "_spy_backend:SpyBackend"]):
        name = f"spy{i}"
        circfft.backends.register_backend(name, spec)
        before = SpyBackend.calls
        np.testing.assert_array_equal(circfft.rdfft(x, backend=name), expected)
        assert SpyBackend.calls == before + 1
        assert circfft.backends.available()[name].available


def test_register_rejects_non_backend(registry):
    circfft.backends.register_backend("bogus", object)
    with pytest.raises((TypeError, ValueError), match="Backend"):
        circfft.rdfft(np.ones(4), backend="bogus")
    assert circfft.backends.available()["bogus"].available is False


def test_entry_point_backend(registry, monkeypatch):
    ep = EntryPoint(name="spy_ep", value="_spy_backend:SpyBackend", group="circfft.backends")
    import importlib.metadata as md

    real = md.entry_points

    def fake_entry_points(**kw):
        if kw.get("group") == "circfft.backends":
            return [ep]
        return real(**kw)

    monkeypatch.setattr(md, "entry_points", fake_entry_points)
    monkeypatch.setattr(_dispatch, "_entry_points_read", False)
    status = circfft.backends.available()
    assert status["spy_ep"].available and status["spy_ep"].family == "numpy"
    x = np.arange(16.0)
    with circfft.set_backend("spy_ep"):
        X = circfft.rdfft(x)
    assert SpyBackend.calls == 1
    np.testing.assert_array_equal(X, circfft.rdfft(x, backend="numpy"))


# --------------------------------------------------------------------------------------------
def test_set_backend_is_scoped_and_nests(registry):
    circfft.backends.register_backend("spy", SpyBackend)
    x = np.arange(8.0)
    circfft.rdfft(x)
    assert SpyBackend.calls == 0
    with circfft.set_backend("spy"):
        circfft.rdfft(x)
        assert SpyBackend.calls == 1
        with circfft.set_backend("numpy"):          # inner context wins
            circfft.rdfft(x)
            assert SpyBackend.calls == 1
            assert _dispatch.resolve(x).name == "numpy"
            with circfft.set_backend("spy"):
                circfft.irdfft(x)
                assert SpyBackend.calls == 2
            assert _dispatch.resolve(x).name == "numpy"
        circfft.irdfft(x)                            # back to the outer context
        assert SpyBackend.calls == 3
        # backend= overrides the context
        circfft.rdfft(x, backend="numpy")
        assert SpyBackend.calls == 3
    circfft.rdfft(x)
    assert SpyBackend.calls == 3


def test_set_backend_restored_after_exception(registry):
    circfft.backends.register_backend("spy", SpyBackend)
    with pytest.raises(RuntimeError):
        with circfft.set_backend("spy"):
            raise RuntimeError("boom")
    circfft.rdfft(np.ones(4))
    assert SpyBackend.calls == 0


def test_set_backend_not_seen_by_another_thread(registry):
    circfft.backends.register_backend("spy", SpyBackend)
    x = np.arange(8.0)
    inside = threading.Event()
    done = threading.Event()
    other = {}

    def other_thread():
        inside.wait(timeout=60)
        other["backend"] = _dispatch.resolve(x).name
        circfft.rdfft(x)
        done.set()

    t = threading.Thread(target=other_thread)
    t.start()
    with circfft.set_backend("spy"):
        inside.set()
        assert done.wait(timeout=120)
        assert _dispatch.resolve(x).name == "spy"
    t.join()
    assert other["backend"] != "spy"
    assert SpyBackend.calls == 0


# --------------------------------------------------------------------------------------------
_IMPORT_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import numpy
t1 = time.perf_counter()
import circfft
t2 = time.perf_counter()
heavy = [m for m in ("numba", "scipy", "torch", "cupy", "llvmlite") if m in sys.modules]
print(json.dumps({"numpy": t1 - t0, "circfft": t2 - t1, "heavy": heavy}))
"""


def _run(script, *args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_is_light_and_fast():
    runs = [_run(_IMPORT_SCRIPT) for _ in range(3)]
    for r in runs:
        assert r["heavy"] == [], f"import circfft imported {r['heavy']}"
    # best of three, so a busy machine does not make the test flaky
    assert min(r["circfft"] for r in runs) < 0.2, runs
    assert min(r["numpy"] + r["circfft"] for r in runs) < 0.5, runs


def test_numba_missing_falls_back_to_numpy():
    script = """
import json, sys
sys.modules["numba"] = None          # make "import numba" fail
import numpy as np, circfft
from circfft.backends import _registry as _dispatch
st = circfft.backends.available()["numba"]
x = np.arange(8.0)
X = circfft.rdfft(x)
print(json.dumps({"available": st.available, "reason": st.reason,
                  "resolved": _dispatch.resolve(x).name, "X": X.tolist()}))
"""
    r = _run(script)
    assert r["available"] is False and "numba" in r["reason"]
    assert r["resolved"] == "numpy"
    np.testing.assert_allclose(r["X"], circfft.rdfft(np.arange(8.0), backend="numpy"))


# --------------------------------------------------------------------------------------------
def test_workers_follow_scipy_rules():
    from circfft._validation import check_workers

    ncpu = os.cpu_count() or 1
    assert check_workers(None) == 1
    assert check_workers(1) == 1
    assert check_workers(2) == 2
    assert check_workers(-1) == ncpu
    assert check_workers(-ncpu) == 1
    with pytest.raises(ValueError, match="workers"):
        check_workers(0)
    with pytest.raises(ValueError, match="workers"):
        check_workers(-ncpu - 1)
    # and exactly what scipy.fft does, where its helper is reachable
    try:
        from scipy.fft._pocketfft.helper import _workers as scipy_workers
    except ImportError:
        pytest.skip("scipy's workers helper moved")
    for w in (None, 1, 2, 3, 64, -1, -ncpu):
        assert check_workers(w) == scipy_workers(w), w
    for w in (0, -ncpu - 1):
        with pytest.raises(ValueError):
            scipy_workers(w)


def test_backend_base_class_contract():
    class Minimal(Backend):
        name = "minimal"

    b = Minimal().load()
    assert b.family == "numpy" and "minimal" in repr(b)
    with pytest.raises(NotImplementedError):
        b.execute(np.ones((1, 4)), forward=True, scale=1.0, workers=1)
