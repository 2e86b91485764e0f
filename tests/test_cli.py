"""``python -m circfft``: ``info``, ``bench`` (tiny settings), its table, ``--json``, ``--plot``,
the ``--ops`` hook, the up-front checks of output options, and the shared measuring helpers
(peak-memory probe, tables, settings profiles) the benchmarks rely on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from circfft import __version__
from circfft.__main__ import main
from circfft._cli import bench_adapters, bench_gpu, bench_ops, bench_transforms, demo, measure
from conftest import require

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
    require("matplotlib")
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
    methods = [m for m in bench_transforms.METHODS
               if bench_transforms.method_available(m) is None]
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
    if bench_transforms.method_available("scipy.fft") is None:
        # scipy.fft was not asked for, so the first baseline present is numpy.fft
        assert "/numpy.fft" in out


def test_ops_hook_calls_module(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(bench_ops, "main", lambda args: seen.setdefault("args", args) and 0)
    status, out, _ = _run(["bench", "--ops", "--whatever", "3"], capsys)
    assert status == 0
    assert seen["args"].ops is True
    assert seen["args"].extra_argv == ["--whatever", "3"]
    assert out.startswith("$ python -m circfft bench --ops")


# ---------------------------------------------------------------------------------------------
# Output options are checked before anything is measured
# ---------------------------------------------------------------------------------------------
def _never(*args, **kwargs):
    raise AssertionError("measuring started before the output options were checked")


def _exits_2_naming(argv, option, capsys) -> str:
    """``main(argv)`` stops with status 2 (as argparse errors do), naming ``option``."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "$ python -m circfft" not in captured.out      # nothing was started
    assert f"error: {option} " in captured.err, captured.err
    return captured.err


@pytest.mark.parametrize("ops", [False, True])
def test_bench_json_in_missing_directory_fails_first(tmp_path, monkeypatch, capsys, ops):
    monkeypatch.setattr(bench_transforms, "run", _never)
    monkeypatch.setattr(bench_ops, "main", _never)
    target = tmp_path / "missing_dir" / "out.json"
    err = _exits_2_naming(["bench", *(["--ops"] if ops else []), "--json", str(target)],
                          "--json", capsys)
    assert "does not exist" in err
    assert not target.parent.exists()


def test_bench_plot_without_matplotlib_fails_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_transforms, "run", _never)
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # `import matplotlib` fails
    err = _exits_2_naming(["bench", "--plot", str(tmp_path / "out.png")], "--plot", capsys)
    assert "matplotlib" in err
    assert not (tmp_path / "out.png").exists()


def test_bench_json_that_is_a_directory_fails_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_transforms, "run", _never)
    err = _exits_2_naming(["bench", "--json", str(tmp_path)], "--json", capsys)
    assert "is a directory" in err


def test_bench_adapters_json_in_missing_directory_fails_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_adapters, "run", _never)
    monkeypatch.setattr(bench_adapters, "make_batch", _never)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--adapters", "--json", str(tmp_path / "missing_dir" / "out.json")])
    assert exc.value.code == 2
    assert "error: --json " in capsys.readouterr().err


def test_bench_gpu_json_in_missing_directory_fails_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_gpu, "_gpu_or_reason", _never)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--device", "cuda", "--json", str(tmp_path / "missing_dir" / "o.json")])
    assert exc.value.code == 2
    assert "error: --json " in capsys.readouterr().err


@pytest.mark.parametrize("option, path", [
    ("--json", "missing_dir/out.json"),
    ("--plot", "missing_dir/out.png"),
    ("--save-adapter", "a_file/adapters"),
])
def test_demo_outputs_checked_first(tmp_path, monkeypatch, capsys, option, path):
    monkeypatch.setattr(demo, "run", _never)
    (tmp_path / "a_file").write_text("not a directory")
    err = _exits_2_naming(["demo", option, str(tmp_path / path)], option, capsys)
    assert "does not exist" in err or "is not a directory" in err


def test_demo_plot_without_matplotlib_fails_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "run", _never)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    err = _exits_2_naming(["demo", "--plot", str(tmp_path / "out.png")], "--plot", capsys)
    assert "matplotlib" in err


# ---------------------------------------------------------------------------------------------
# Shared measuring helpers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["auto", "rss", "tracemalloc"])
def test_peak_memory_probe(kind):
    if kind == "rss" and not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("no /proc/self/clear_refs: the RSS peak cannot be reset here")
    mem = measure.PeakMemory(kind)
    size = 32 << 20
    grown = mem.measure(lambda: np.ones(size // 8))
    assert 0.9 * size <= grown <= 1.5 * size
    assert mem.exact
    x = np.ones(size // 8)
    in_place = mem.measure(lambda: np.multiply(x, 2.0, out=x))
    assert in_place < 0.1 * size
    assert mem.description
    # start/stop bracket a span: a buffer freed inside it still counts at its peak
    mem.start()
    y = np.ones(size // 8)
    del y
    assert 0.9 * size <= mem.stop() <= 1.5 * size
    with pytest.raises(ValueError, match="kind must be one of"):
        measure.PeakMemory("vmhwm")


def test_render_aligns_columns():
    text = measure.render_table(["a", "long header"], [["xyz", "1.0"], None, ["q", "12.25"]],
                                left={0})
    lines = text.splitlines()
    assert lines[0] == "a    long header"
    assert lines[2] == "xyz          1.0"
    assert lines[3] == ""
    assert lines[4] == "q          12.25"


def test_render_markdown():
    text = measure.render_table(["a", "b"], [["1", ""], ["xyz", "2"]], markdown=True)
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 |  |", "| xyz | 2 |"]


def test_mib_and_profiles():
    assert measure.mib(3 * 2**20 // 2) == "1.5" and measure.mib(None) == "n/a"
    assert measure.mib(5 * 2**20, 0) == "5"
    profiles = measure.Profiles(full=dict(a=1, b=2), quick=dict(a=10, b=20))
    assert profiles.settings(False) == dict(a=1, b=2)
    assert profiles.settings(True, b=3, a=None) == dict(a=10, b=3)
    assert profiles.full == dict(a=1, b=2)          # not modified by settings()
