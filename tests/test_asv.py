"""The asv suite cannot rot: its configuration parses, every benchmark module imports, and
every benchmark runs setup + one call on its smallest parameters (no asv machinery needed).

Numeric parameter axes are reduced to their smallest value; the other axes (method, dtype,
direction) are covered completely.  ``$CIRCFFT_ASV_ELEMENTS`` is set small before the modules
are imported so each call is quick.  A setup raising ``NotImplementedError`` (asv: skipped,
e.g. torch not installed) is a pytest skip.
"""
from __future__ import annotations

import importlib
import inspect
import itertools
import json
import os
import re
import sys
from pathlib import Path

import pytest

ASV_DIR = Path(__file__).resolve().parents[1] / "asv_benchmarks"
BENCH_DIR = ASV_DIR / "benchmarks"
PREFIXES = ("time_", "peakmem_", "mem_", "track_", "timeraw_")


def _load_conf() -> dict:
    # asv.conf.json allows // comments (asv strips them); drop whole-line comments here.
    text = (ASV_DIR / "asv.conf.json").read_text()
    return json.loads("\n".join(line for line in text.splitlines()
                                if not line.lstrip().startswith("//")))


def _import_modules():
    if str(ASV_DIR) not in sys.path:
        sys.path.insert(0, str(ASV_DIR))
    saved = os.environ.get("CIRCFFT_ASV_ELEMENTS")
    os.environ["CIRCFFT_ASV_ELEMENTS"] = saved or "4096"     # read at import time
    try:
        return [importlib.import_module(f"benchmarks.{path.stem}")
                for path in sorted(BENCH_DIR.glob("*.py")) if path.name != "__init__.py"]
    finally:
        if saved is None:
            del os.environ["CIRCFFT_ASV_ELEMENTS"]


def _smallest(values):
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [min(values)]
    return list(values)


def _cases():
    """(id, owner, method name, params) for every benchmark, smallest numeric parameters."""
    cases = []
    for module in _import_modules():
        owners = [(module.__name__.partition(".")[2], module)]
        owners += [(f"{module.__name__.partition('.')[2]}.{name}", cls)
                   for name, cls in inspect.getmembers(module, inspect.isclass)
                   if cls.__module__ == module.__name__ and not name.startswith("_")]
        for label, owner in owners:
            names = [n for n in dir(owner) if n.startswith(PREFIXES) and callable(getattr(owner, n))]
            params = getattr(owner, "params", [])
            if params and not isinstance(params[0], (list, tuple)):
                params = [params]
            combos = list(itertools.product(*[_smallest(p) for p in params])) if params else [()]
            for name in names:
                for combo in combos:
                    cid = f"{label}.{name}" + (f"[{'-'.join(map(str, combo))}]" if combo else "")
                    cases.append(pytest.param(owner, name, combo, id=cid))
    return cases


def test_conf_is_usable_with_python_same():
    conf = _load_conf()
    assert conf["repo"] == ".."
    assert conf["environment_type"] == "existing"
    assert (ASV_DIR / conf["benchmark_dir"]).is_dir()
    for key in ("results_dir", "html_dir", "env_dir"):
        assert not Path(conf[key]).is_absolute() and ".." not in Path(conf[key]).parts
    assert conf["build_command"] and conf["install_command"]


CASES = _cases()


def test_every_module_has_benchmarks():
    modules = {p.stem for p in BENCH_DIR.glob("*.py") if p.name != "__init__.py"}
    assert modules, "no benchmark modules"
    covered = {c.values[0].__module__.partition(".")[2] if inspect.isclass(c.values[0])
               else c.values[0].__name__.partition(".")[2] for c in CASES}
    assert modules <= covered


def test_transforms_cover_backends_and_peers():
    from benchmarks import transforms

    assert {"numba", "numpy"} <= set(transforms.Circfft.params[0])
    assert {"scipy.fft", "numpy.fft", "scipy.fftpack", "torch.fft"} <= set(transforms.Peers.params[0])
    for cls in (transforms.Circfft, transforms.Peers, transforms.Parallel):
        assert hasattr(cls, "time_transform") and hasattr(cls, "peakmem_transform")
        assert len(cls.param_names) == len(cls.params)
        axes = dict(zip(cls.param_names, cls.params))
        assert set(axes["dtype"]) == {"float32", "float64"}
        assert set(axes["direction"]) == {"forward", "inverse"}
        # the lengths of `python -m circfft bench`'s full run: powers of two 64 ... 2**20,
        # 3*2**k, 5*2**k and 1000
        assert {64, 256, 1024, 4096, 16384, 65536, 1 << 20} <= set(axes["n"])
        assert {96, 192, 320, 640, 1000, 3072, 5120} <= set(axes["n"])
        assert axes["n"] == sorted(axes["n"])
    from circfft._cli import bench_transforms

    assert transforms.SIZES == bench_transforms.FULL_SIZES
    # workers 1 (Circfft, Peers) and 2 (Parallel), scipy.fft the peer of circfft's numba kernels
    parallel = dict(zip(transforms.Parallel.param_names, transforms.Parallel.params))
    assert parallel["workers"] == [2]
    assert {"circfft:numba", "scipy.fft"} <= set(parallel["method"])


@pytest.mark.parametrize("owner, name, params", CASES)
def test_benchmark_runs_once(owner, name, params):
    obj = owner() if inspect.isclass(owner) else owner
    setup = getattr(obj, "setup", None)
    teardown = getattr(obj, "teardown", None)
    if setup is not None:
        try:
            setup(*params)
        except NotImplementedError as exc:
            pytest.skip(f"setup skipped it: {exc}")
    try:
        getattr(obj, name)(*params)
    finally:
        if teardown is not None:
            teardown(*params)


def _makefile_variable(name: str) -> str:
    """The value of ``NAME := value`` in the Makefile, as the recipe passes it to the shell."""
    makefile = (ASV_DIR.parent / "Makefile").read_text()
    match = re.search(rf"^{name}\s*:=\s*(.*?)\s*$", makefile, flags=re.MULTILINE)
    assert match, f"{name} is not set in the Makefile"
    return match.group(1)


def _asv_names(owner, label, fn):
    """Every parameter combination's name as asv matches ``--bench`` against it."""
    params = owner.params if isinstance(owner.params[0], (list, tuple)) else [owner.params]
    return [(combo, f"{label}.{fn}({', '.join(map(repr, combo))})")
            for combo in itertools.product(*params)]


def test_makefile_smoke_selection_runs_every_method_once_per_direction():
    """``make asv-check`` runs ``asv run --bench "$(ASV_SMOKE)"``: as the Makefile says, every
    method (each backend and each peer) once, forward and inverse, at one size, in float32, one
    worker (no ``Parallel`` case, so the workers-2 cases make it no slower) -- and only a small
    share of the whole suite."""
    regex = _makefile_variable("ASV_SMOKE")
    # the recipe puts the value in double quotes, which the shell passes on unchanged unless it
    # holds $, `, " or a doubled backslash
    assert not re.search(r'[$`"]|\\\\', regex), regex
    from benchmarks import transforms

    for cls in (transforms.Circfft, transforms.Peers, transforms.Parallel):
        axes = dict(zip(cls.param_names, cls.params))
        one_worker = "workers" not in axes
        expected = sorted((m, min(axes["n"]), "float32", d)
                          for m in axes["method"] for d in axes["direction"]) if one_worker else []
        for fn in ("time_transform", "peakmem_transform"):
            picked = [combo for combo, name in _asv_names(cls, f"transforms.{cls.__name__}", fn)
                      if re.search(regex, name)]
            assert sorted(picked) == expected, (cls, fn)
    selected = total = 0
    benchmarks = {case.values[:2] for case in CASES}        # (owner, function name) pairs
    for owner, fn in benchmarks:
        if not inspect.isclass(owner) or not getattr(owner, "params", None):
            continue
        label = f"{owner.__module__.partition('.')[2]}.{owner.__name__}"
        names = [name for _, name in _asv_names(owner, label, fn)]
        total += len(names)
        selected += sum(bool(re.search(regex, name)) for name in names)
    assert 0 < selected <= total // 4, (selected, total)
