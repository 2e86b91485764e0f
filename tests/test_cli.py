"""``python -m circfft``: ``info``, ``bench`` (tiny settings), its table, ``--json``, ``--plot``,
the ``--ops`` hook, and the peak-memory probe the benchmark relies on."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from circfft import __version__
from circfft.__main__ import main
from circfft import _bench

REPO = Path(__file__).resolve().parents[1]

# Tiny settings: two sizes, 2**16 elements, one timed call, no progress bar.
TINY = ["bench", "--sizes", "64", "256", "--elements", "65536", "--repeat", "1",
        "--warmup", "1", "--workers", "1", "--dtype", "float32", "--no-progress"]


def _run(argv, capsys):
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_info_lists_backends(capsys):
    status, out, _ = _run(["info"], capsys)
    assert status == 0
    assert f"circfft {__version__}" in out
    assert "backends:" in out and "threads:" in out
    assert f"numpy                        {np.__version__}" in out
    from circfft.backends import available

    section = out.split("backends:")[1].split("threads:")[0].splitlines()
    for name, st in available().items():
        line = next(row for row in section if row.strip().startswith(name + " "))
        assert ("unavailable" if not st.available else "available") in line
    assert "os.cpu_count()" in out


def test_python_dash_m_info_and_help():
    run = subprocess.run([sys.executable, "-m", "circfft", "info"], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "backends:" in run.stdout
    run = subprocess.run([sys.executable, "-m", "circfft", "--help"], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0 and "bench" in run.stdout and "info" in run.stdout
    run = subprocess.run([sys.executable, "-m", "circfft", "bench", "--help"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0 and "--quick" in run.stdout and "--plot" in run.stdout


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--no-such-option"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_bench_tiny_table_json_plot(tmp_path, capsys):
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    argv = [*TINY, "--quick", "--json", str(js), "--plot", str(png)]
    status, out, _ = _run(argv, capsys)
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("$ python -m circfft bench --sizes 64 256")
    header = next(row for row in lines if row.startswith("dtype") and "method" in row)
    assert "rdfft ns/el" in header and "irdfft ns/el" in header
    assert "/scipy.fft" in header and "MiB extra" in header
    # the baseline's own ratio is 1.00; every method ran for both sizes
    scipy_rows = [row.split() for row in lines
                  if len(row.split()) > 6 and row.split()[4] == "scipy.fft"]
    assert len(scipy_rows) == 2 and all(cells[6] == "1.00" for cells in scipy_rows)
    assert "time / scipy.fft time" in out
    assert "extra memory (" in out

    doc = json.loads(js.read_text())
    methods = [m for m in _bench.METHODS if _bench.method_available(m) is None]
    assert len(doc["results"]) == len(methods) * 2 * 2   # methods x directions x sizes
    assert {r["method"] for r in doc["results"]} == set(methods)
    for r in doc["results"]:
        assert not r["error"]
        assert r["rows"] * r["n"] == 65536
        assert r["ns_per_element"] > 0 and r["extra_bytes"] >= 0
        if r["method"] == "scipy.fft":
            assert r["ratio"] == pytest.approx(1.0)
    assert doc["command"].startswith("python -m circfft bench")
    assert doc["memory_kind"] in ("rss", "tracemalloc")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_subset_of_methods_and_directions(capsys):
    argv = [*TINY, "--sizes", "64", "--methods", "circfft:numpy", "numpy.fft",
            "--directions", "irdfft"]
    status, out, _ = _run(argv, capsys)
    assert status == 0
    header = next(row for row in out.splitlines() if row.startswith("dtype"))
    assert "irdfft ns/el" in header and " rdfft ns/el" not in header
    assert "circfft:numpy" in out and "scipy.fftpack" not in out.split("# time:")[0]
    if _bench.method_available("scipy.fft") is None:
        # scipy.fft was not asked for, so the first baseline present is numpy.fft
        assert "/numpy.fft" in out


def test_ops_hook_calls_module(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("circfft._bench_ops")
    fake.main = lambda args: seen.setdefault("args", args) and 0
    monkeypatch.setitem(sys.modules, "circfft._bench_ops", fake)
    status, out, _ = _run(["bench", "--ops", "--whatever", "3"], capsys)
    assert status == 0
    assert seen["args"].ops is True
    assert seen["args"].extra_argv == ["--whatever", "3"]
    assert out.startswith("$ python -m circfft bench --ops")


def test_ops_hook_missing_module_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "circfft._bench_ops", None)   # import fails
    status, _, err = _run(["bench", "--ops"], capsys)
    assert status == 2
    assert "circfft._bench_ops" in err


@pytest.mark.parametrize("force_tracemalloc", [False, True])
def test_peak_memory_probe(force_tracemalloc):
    mem = _bench.PeakMemory(force_tracemalloc=force_tracemalloc)
    size = 32 << 20
    grown = mem.measure(lambda: np.ones(size // 8))
    assert 0.9 * size <= grown <= 1.5 * size
    x = np.ones(size // 8)
    in_place = mem.measure(lambda: np.multiply(x, 2.0, out=x))
    assert in_place < 0.1 * size
    assert mem.description


def test_render_aligns_columns():
    text = _bench._render(["a", "long header"], [["xyz", "1.0"], None, ["q", "12.25"]],
                          left={0})
    lines = text.splitlines()
    assert lines[0] == "a    long header"
    assert lines[2] == "xyz          1.0"
    assert lines[3] == ""
    assert lines[4] == "q          12.25"
