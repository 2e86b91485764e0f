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
from circfft._cli import (bench_adapters, bench_gpu, bench_ops, bench_transforms, demo, info,
                          measure)
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
    methods = [m for m in bench_transforms.DEFAULT_METHODS
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
    assert doc["settings"]["norm"] == "ortho"
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


# ---------------------------------------------------------------------------------------------
# bench: the full run's settings, the plan and the ratio table
# ---------------------------------------------------------------------------------------------
def _bench_args(argv):
    from circfft._cli.commands import build_parser

    args = build_parser().parse_args(["bench", *argv])
    return args, bench_transforms._settings(args)


def test_bench_default_run_covers_the_comparison():
    _, s = _bench_args([])
    powers = [64, 256, 1024, 4096, 16384, 65536, 1 << 17, 1 << 18, 1 << 19, 1 << 20]
    assert set(powers + [96, 192, 320, 640, 1000, 3072, 5120]) <= set(s["sizes"])
    assert max(s["sizes"]) == 1 << 20 and s["sizes"] == sorted(s["sizes"])
    assert s["dtype"] == ["float32", "float64"] and s["directions"] == ["forward", "inverse"]
    assert s["workers"] == sorted({1, os.cpu_count() or 1})
    assert (s["elements"], s["repeat"], s["norm"]) == (1 << 22, 7, "ortho")
    assert "scipy.fft" in bench_transforms.DEFAULT_METHODS
    assert "circfft:numba" in bench_transforms.DEFAULT_METHODS
    _, quick = _bench_args(["--quick"])
    assert len(quick["sizes"]) <= 4 and quick["elements"] == 1 << 20
    _, given = _bench_args(["--quick", "--sizes", "96", "--workers", "3", "--norm", "backward"])
    assert (given["sizes"], given["workers"], given["norm"]) == ([96], [3], "backward")


def test_bench_plan_runs_single_threaded_methods_once():
    s = dict(dtype=["float32"], workers=[1, 2], sizes=[64, 96], directions=["forward"])
    plan = bench_transforms.plan_cases(s, ["circfft:numba", "scipy.fft", "numpy.fft"])
    by_method = {}
    for dt, w, n, m, d in plan:
        by_method.setdefault(m, set()).add((w, n))
    assert by_method["circfft:numba"] == by_method["scipy.fft"] == {(1, 64), (1, 96), (2, 64),
                                                                       (2, 96)}
    assert by_method["numpy.fft"] == {(1, 64), (1, 96)}       # no worker count: w = 1 only


def _result(method, direction, dtype, n, workers, median_s, base_s=None, error=""):
    r = bench_transforms.Result(method, direction, dtype, n, max(1, 4096 // n), workers,
                                median_s=median_s, error=error)
    r.ratio = median_s / base_s if base_s else float("nan")
    return r


def test_bench_ratio_table_layout():
    """Rows (dtype, w, direction, method), columns n, powers of two and other lengths apart;
    the baseline's row holds its ms per call, the others their ratio to it."""
    s = dict(dtype=["float32"], workers=[1, 2], sizes=[64, 96, 1024], directions=["forward",
                                                                                  "inverse"])
    results = []
    for w in (1, 2):
        for d in ("forward", "inverse"):
            for n in (64, 96, 1024):
                base = 1e-3 * n / 64 * w
                results.append(_result("scipy.fft", d, "float32", n, w, base))
                results.append(_result("circfft:numba", d, "float32", n, w, 0.5 * base, base))
                if w == 1:
                    results.append(_result("numpy.fft", d, "float32", n, w, 2 * base, base))
    results.append(_result("torch.fft", "forward", "float32", 64, 1, 1.0, error="boom"))
    text = bench_transforms.format_ratio_table(
        results, s, "scipy.fft", ["circfft:numba", "scipy.fft", "numpy.fft", "torch.fft"])
    assert text.startswith("time / scipy.fft time")
    powers, others = text.split("n: powers of two\n")[1].split("n: other lengths\n")
    assert powers.splitlines()[0].split() == ["dtype", "w", "dir", "method", "64", "1024"]
    assert others.splitlines()[0].split() == ["dtype", "w", "dir", "method", "96"]
    rows = [line.split() for line in powers.splitlines()[2:] if line]
    assert ["float32", "1", "rdfft", "scipy.fft", "ms", "1.00", "16.00"] in rows
    assert ["float32", "2", "irdfft", "scipy.fft", "ms", "2.00", "32.00"] in rows
    assert ["float32", "1", "rdfft", "circfft:numba", "0.50", "0.50"] in rows
    assert ["float32", "1", "irdfft", "numpy.fft", "2.00", "2.00"] in rows
    assert ["float32", "1", "rdfft", "torch.fft", "FAILED", "-"] in rows
    assert not any(r[1] == "2" and r[3] == "numpy.fft" for r in rows)   # measured at w=1 only
    # one block a (dtype, workers) group, blank line between
    assert "" in powers.splitlines()[2:]
    other_rows = [line.split() for line in others.splitlines()[2:] if line]
    assert ["float32", "2", "rdfft", "circfft:numba", "0.50"] in other_rows


# ---------------------------------------------------------------------------------------------
# info: kernels per kind of array
# ---------------------------------------------------------------------------------------------
def test_info_prints_kernel_routes(capsys):
    status, out, _ = _run(["info"], capsys)
    assert status == 0
    section = out.split("kernels (what each kind of array runs):")[1].split("threads:")[0]
    routes = dict(info.kernel_routes(info.kernel_facts()))
    for kind in ("numpy arrays", "torch CPU tensors", "torch CUDA tensors", "cupy arrays"):
        assert any(line.strip().startswith(kind) for line in section.splitlines()), kind
    from circfft.backends import available

    expected = "numba kernels" if available()["numba"].available else "numpy reference"
    assert routes["numpy arrays"].startswith(expected)
    assert routes["torch CPU tensors"].startswith(expected)
    import torch

    if not torch.cuda.is_available():
        assert routes["torch CUDA tensors"].startswith("torch.fft, not the CUDA kernels: ")
    assert info.cuda_tensor_route().startswith(routes["torch CUDA tensors"])


def _status(name, ok, reason=""):
    from circfft.backends import BackendStatus

    return BackendStatus(name, "numpy" if ok else None, ok, reason)


def _facts(**over):
    facts = dict(statuses={"numpy": _status("numpy", True), "numba": _status("numba", True),
                           "torch": _status("torch", True),
                           "cupy": _status("cupy", False, "cupy is not installed")},
                 torch_fft=False, torch="2.9.0", torch_cuda="12.8", cuda_device=True,
                 cupy_importable=False, cupy_dists={})
    facts.update(over)
    return facts


def test_kernel_routes_say_why_not():
    routes = dict(info.kernel_routes(_facts()))
    assert routes["numpy arrays"] == "numba kernels"
    assert routes["torch CPU tensors"] == "numba kernels, on zero-copy numpy views"
    cuda = routes["torch CUDA tensors"]
    assert cuda.startswith("torch.fft") and "cupy" in cuda and "not installed" in cuda
    assert "cupy-cuda12x" in cuda and "circfft[cuda12]" in cuda       # matches torch's CUDA 12
    assert routes["cupy arrays"] == "unavailable: cupy is not installed"

    ok = _facts(cupy_importable=True, cupy_dists={"cupy-cuda12x": "13.6.0"},
                statuses={**_facts()["statuses"], "cupy": _status("cupy", True)})
    routes = dict(info.kernel_routes(ok))
    assert routes["torch CUDA tensors"].startswith("circfft CUDA kernels")
    assert routes["cupy arrays"] == "circfft CUDA kernels"

    routes = dict(info.kernel_routes(dict(ok, cuda_device=False)))
    assert "no CUDA device" in routes["torch CUDA tensors"]
    assert routes["torch CUDA tensors"].startswith("torch.fft")
    routes = dict(info.kernel_routes(_facts(torch_cuda=None, torch="2.9.0+cpu")))
    assert "CPU build" in routes["torch CUDA tensors"]
    routes = dict(info.kernel_routes(_facts(torch_cuda="13.0")))
    assert "cupy-cuda13x" in routes["torch CUDA tensors"]
    assert "circfft[cuda13]" in routes["torch CUDA tensors"]
    # a cupy wheel for the other CUDA major version gets a note naming the right one
    mismatch = info.kernel_routes(_facts(torch_cuda="13.0", cupy_importable=True,
                                         cupy_dists={"cupy-cuda12x": "13.6.0"}))
    assert any("cupy-cuda12x installed" in r and "cupy-cuda13x" in r for _, r in mismatch)
    routes = dict(info.kernel_routes(_facts(torch_fft=True)))
    assert routes["torch tensors"].startswith("torch.fft (circfft.config(torch_fft=True)")
    routes = dict(info.kernel_routes(_facts(torch=None)))
    assert routes["torch tensors"] == "torch is not installed"
    no_numba = _facts(statuses={**_facts()["statuses"],
                                "numba": _status("numba", False, "numba is not installed")})
    routes = dict(info.kernel_routes(no_numba))
    assert routes["numpy arrays"] == ("numpy reference kernels (numba unavailable: numba is not "
                                      "installed)")


def test_cuda_extras_name_the_wheels_info_suggests():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for major, dist in info.CUPY_DISTS.items():
        assert [r.split(">")[0] for r in extras[f"cuda{major}"]] == [dist]
    assert extras["cuda"] in (extras["cuda12"], extras["cuda13"])      # an alias
    assert "cuda12" in info.cupy_wheel_for("12.8") and "cupy-cuda13x" in info.cupy_wheel_for("13.0")


# ---------------------------------------------------------------------------------------------
# bench --device cuda (bench_gpu): options and the table, from fake measurements
# ---------------------------------------------------------------------------------------------
def test_bench_gpu_options():
    args = bench_gpu.build_parser().parse_args([])
    assert args.dtype == ["float32", "float64", "float16", "bfloat16"]
    assert (args.repeat, args.peer, args.array, args.elements) == (10, "torch.fft", "torch",
                                                                   1 << 24)
    assert args.sizes[0] == 64 and args.sizes[-1] == 65536
    assert bench_gpu.check_args(args) is None
    bad = bench_gpu.build_parser().parse_args(["--sizes", "96"])
    assert "powers of two" in bench_gpu.check_args(bad)
    with pytest.raises(SystemExit):
        bench_gpu.build_parser().parse_args(["--dtype", "int8"])


def test_bench_gpu_without_gpu_exits_2(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the benchmark would run")
    assert main(["bench", "--device", "cuda", "--sizes", "64"]) == 2
    err = capsys.readouterr().err
    assert "bench --device cuda: no GPU to run on:" in err
    assert main(["bench", "--device", "cuda", "--sizes", "96"]) == 2
    assert "powers of two" in capsys.readouterr().err


def test_bench_gpu_table_from_fake_rows():
    nbytes = (1 << 20) * 4
    ms = 1e-3

    def row(dtype, direction, circfft_s, peer_s, size=nbytes):
        return dict(dtype=dtype, direction=direction, n=1024, rows=1024, nbytes=size,
                    copy_s=0.2 * ms, circfft_s=circfft_s, peer=None if peer_s is None else "x",
                    peer_s=peer_s, extra_peak_bytes=0)

    rows = [row("float32", "inverse", 0.5 * ms, 0.25 * ms),     # shown after the forward rows
            row("float32", "forward", 0.4 * ms, 0.8 * ms),
            row("float16", "forward", 0.3 * ms, None, nbytes // 2)]
    text = bench_gpu.format_table(rows, "torch.fft")
    lines = text.splitlines()
    assert lines[0].split() == ["dtype", "dir", "n", "rows", "copy", "GB/s", "circfft", "ms",
                                "circfft", "GB/s", "of", "copy", "torch.fft", "ms", "/",
                                "torch.fft", "/", "float32", "extra", "MiB"]
    # copy: 2 * 4 MiB / 0.2 ms = 41.9 GB/s; circfft 0.4 ms: 21 GB/s, 50% of the copy's
    assert lines[2].split() == ["float32", "rdfft", "1024", "1024", "42", "0.400", "21", "50%",
                                "0.800", "0.50", "-", "0.0"]
    assert lines[3] == ""                          # a blank line between (dtype, direction)
    assert lines[4].split() == ["float32", "irdfft", "1024", "1024", "42", "0.500", "17", "40%",
                                "0.250", "2.00", "-", "0.0"]
    # half storage: no cuFFT column, ratio to circfft's float32 time at the same n, direction
    assert lines[6].split() == ["float16", "rdfft", "1024", "1024", "21", "0.300", "14", "67%",
                                "-", "-", "0.75", "0.0"]
    assert any("2 * nbytes" in line for line in bench_gpu.footer("torch.fft"))


# ---------------------------------------------------------------------------------------------
# bench --ops on CUDA: options, cases, tables (fake rows), the routing
# ---------------------------------------------------------------------------------------------
def test_bench_ops_cuda_options_and_cases():
    import argparse

    cfg = bench_ops._options(argparse.Namespace(device="cuda", extra_argv=[]))
    assert cfg["tokens"] == 8192 and list(cfg["dims"]) == [768, 4096]
    assert list(cfg["blocks"]) == [64, 256, 1024] and cfg["repeat"] == 10
    cases = bench_ops._cases(cfg, have_c3a=True)
    assert ("circfft", 768, 1024) not in cases and ("circfft", 4096, 1024) in cases
    assert ("c3a", 768, 256) in cases and ("lora-8", 768, 0) in cases
    cpu = bench_ops._options(argparse.Namespace(extra_argv=["--with-base"]))
    assert cpu["device"] == "cpu" and cpu["with_base"] and list(cpu["blocks"]) == [64, 256, 0]
    with pytest.raises(SystemExit):
        bench_ops._options(argparse.Namespace(extra_argv=["--tokens", "0"]))


def test_bench_ops_cuda_tables():
    r = dict(d=768, b=64, tokens=8192, time_s=0.004, peak_above_inputs=40 * 2**20)
    rows = [dict(r, impl="circfft"), dict(r, impl="c3a", time_s=0.010, peak_above_inputs=70 * 2**20)]
    table = bench_ops.format_table(rows, bench_ops.CUDA_TARGETS, time_unit="ms")
    line = next(x for x in table.splitlines() if "| circfft |" in x)
    assert "| 4.000 |" in line and "| 0.400 | 0.571 | time ok, memory MISSED |" in line
    assert "time (ms)" in table.splitlines()[0]
    host = [dict(call="circfft.rdfft(x, norm='ortho', out=x)", calls=100, enqueue_s=30e-6,
                 wall_s=31e-6),
            dict(call="torch.fft.rfft(x)", calls=100, enqueue_s=10e-6, wall_s=11e-6)]
    text = bench_ops.format_host_table(host)
    line = next(x for x in text.splitlines() if "circfft.rdfft" in x)
    assert "| 30.0 | 31.0 | 3.00 (host time MISSED) |" in line
    assert "target <= 2" in text.splitlines()[0]


def test_bench_ops_cuda_routing(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(bench_ops, "main", lambda args: seen.setdefault("args", args) and 0)
    monkeypatch.setattr(bench_gpu, "main", _never)
    status, out, _ = _run(["bench", "--ops", "--device", "cuda", "--tokens", "64"], capsys)
    assert status == 0 and seen["args"].device == "cuda"
    assert seen["args"].extra_argv == ["--tokens", "64"]
    import torch

    if not torch.cuda.is_available():
        monkeypatch.undo()
        assert main(["bench", "--ops", "--device", "cuda"]) == 2
        assert "bench --ops: --device cuda: no CUDA device" in capsys.readouterr().err


def test_bench_gpu_routing_passes_the_command(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(bench_gpu, "main",
                        lambda argv, command=None: seen.update(argv=argv, command=command) or 0)
    assert main(["bench", "--device", "cuda", "--dtype", "float16"]) == 0
    assert seen["argv"] == ["--device", "cuda", "--dtype", "float16"]
    assert seen["command"] == "python -m circfft bench --device cuda --dtype float16"


# ---------------------------------------------------------------------------------------------
# Measuring helpers added for the GPU benchmarks (CPU stand-ins)
# ---------------------------------------------------------------------------------------------
def test_host_seconds_per_call_counts_calls():
    calls = []
    enqueue, wall = measure.host_seconds_per_call(lambda: calls.append(1), 50)
    assert len(calls) == 50 and 0 < enqueue <= wall


def test_cuda_median_seconds_with_fake_events():
    """Median of the event timings after the warm-up, ``prepare`` before every call."""
    import types

    elapsed = iter([5.0, 1.0, 3.0])           # ms, of the three timed calls

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            pass

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return next(elapsed)

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Event=Event))
    log = []
    seconds = measure.cuda_median_seconds(fake, lambda: log.append("call"), repeat=3, warmup=2,
                                          prepare=lambda: log.append("prepare"))
    assert seconds == pytest.approx(3e-3)
    assert log == ["prepare", "call"] * 5


def test_default_device_follows_torch(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert measure.default_device() == "cpu"
    assert "no CUDA device" in measure.device_description("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert measure.default_device() == "cuda"
    assert "not chosen" in measure.device_description("cpu")


def test_ratio_and_verdict():
    assert measure.ratio(1.0, 4.0) == 0.25 and measure.ratio(None, 1.0) is None
    assert measure.ratio(1.0, 0) is None
    assert measure.verdict("time", 0.5, 0.5) == "time ok"
    assert measure.verdict("memory", 0.6, 0.5) == "memory MISSED"
    assert measure.verdict("time", None, 0.5) == "" and measure.verdict("time", 1.0, None) == ""


class _StampEvent:
    """A stand-in for ``torch.cuda.Event``: perf_counter stamps (CPU work is synchronous)."""

    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        import time

        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def _cuda_stand_ins(monkeypatch):
    """torch.cuda's timing and memory statistics as no-ops over the CPU (PeakMemory("cuda")
    and the CUDA-event timers read them); the memory figures are 0."""
    import torch

    for name, value in dict(synchronize=lambda: None, reset_peak_memory_stats=lambda: None,
                            memory_allocated=lambda: 0, max_memory_allocated=lambda: 0,
                            empty_cache=lambda: None, Event=_StampEvent).items():
        monkeypatch.setattr(torch.cuda, name, value)


def test_bench_ops_cuda_case_and_host_time_on_cpu_stand_ins(monkeypatch):
    """run_case_cuda / host_overhead run end to end with torch.cuda's events and statistics
    replaced by CPU stand-ins (their GPU figures stay unmeasured here)."""
    _cuda_stand_ins(monkeypatch)
    row = bench_ops.run_case_cuda("circfft", 64, 16, 32, repeat=2, warmup=1, device="cpu")
    assert row["time_s"] > 0 and row["params"] == 4 * 4 * 16 and row["peak_above_inputs"] == 0
    based = bench_ops.run_case_cuda("lora-4", 64, 0, 32, repeat=1, with_base=True, device="cpu")
    assert based["params"] == 2 * 4 * 64
    host = bench_ops.host_overhead(calls=20, warmup=2, device="cpu")
    assert [r["call"].split("(")[0] for r in host] == ["circfft.rdfft", "torch.fft.rfft"]
    assert all(0 < r["enqueue_s"] <= r["wall_s"] for r in host)
    assert "circfft.rdfft" in bench_ops.format_host_table(host)


def test_bench_gpu_measure_runs_on_a_cpu_stand_in(monkeypatch):
    """The measuring loop of ``bench --device cuda`` run on CPU tensors: a torch whose "cuda"
    device is the CPU and whose CUDA events are perf_counter stamps (no GPU here; the GPU
    figures themselves stay unmeasured)."""
    import types

    import torch

    class CpuAsCuda:
        cuda = types.SimpleNamespace(
            Event=_StampEvent, empty_cache=lambda: None,
            current_stream=lambda: types.SimpleNamespace(cuda_stream=0))

        def randn(self, *shape, device=None):
            return torch.randn(*shape)

        def __getattr__(self, name):
            return getattr(torch, name)

    _cuda_stand_ins(monkeypatch)
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        ExternalStream=lambda ptr: __import__("contextlib").nullcontext()))
    args = bench_gpu.build_parser().parse_args(["--sizes", "64", "256", "--elements", "4096",
                                                "--repeat", "2", "--warmup", "1"])
    rows = bench_gpu.measure(CpuAsCuda(), fake_cupy, args, progress=lambda line: None)
    assert [(r["dtype"], r["n"], r["direction"]) for r in rows] == [
        (dt, n, d) for dt in bench_gpu.DTYPES for n in (64, 256) for d in ("forward", "inverse")]
    for r in rows:
        assert r["rows"] * r["n"] == 4096 and r["copy_s"] > 0 and r["circfft_s"] > 0
        itemsize = 2 if r["dtype"] in bench_gpu.HALF else int(r["dtype"][-2:]) // 8
        assert r["nbytes"] == 4096 * itemsize
        assert (r["peer_s"] is None) == (r["dtype"] in bench_gpu.HALF)
    text = bench_gpu.format_table(rows)
    assert text.count("bfloat16") == 4 and text.count("float64") == 4
