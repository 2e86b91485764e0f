"""``python -m circfft bench``: circfft's transforms timed against the usual real FFTs.

What is measured, for every method, direction, dtype, length ``n`` and worker count:

* **time**: ``rows = elements // n`` rows of length ``n`` are transformed in one call, with
  the same ``norm`` (``--norm``, default ``"ortho"``) for every method that has one.  Before
  every call (warm-up and timed alike) the call's input buffer is refilled from a pristine copy,
  untimed, so in-place methods never see their own output (no growth into Inf, no decay into
  denormals) and every method starts from the same cache state.  The reported figure is the
  median over ``--repeat`` timed calls, divided by ``rows * n``.
* **extra peak memory**: measured once per case, after warm-up and apart from the timing: on
  Linux the peak RSS of the process (``VmHWM``, reset through ``/proc/self/clear_refs``) minus
  the RSS just before the call, after ``gc.collect()`` and ``malloc_trim(0)`` so that memory
  reused from the allocator's free lists shows up.  This counts numba's allocations, which
  ``tracemalloc`` cannot see; where ``/proc`` is unavailable ``tracemalloc`` is used instead and
  the table says so (:class:`.measure.PeakMemory`).  The call's result is alive when the peak
  is read, so an out-of-place method's output counts.

Methods (``--methods``; by default every installed one but the ``circfft:numpy`` reference):

=================  ====================================================================
``circfft:numba``  ``circfft.rdfft(x, norm, out=x, workers=w, backend="numba")`` / ``irdfft``
``circfft:numpy``  the same with ``backend="numpy"`` (single-threaded reference)
``scipy.fft``      ``scipy.fft.rfft(x, norm=norm, workers=w)`` / ``irfft(X, n, ...)`` (baseline)
``numpy.fft``      ``numpy.fft.rfft(x, norm=norm)`` / ``irfft(X, n, norm=norm)`` (one thread)
``scipy.fftpack``  ``scipy.fftpack.rfft(x, overwrite_x=True)`` / ``irfft`` (one thread, no norm)
``torch.fft``      ``torch.fft.rfft(t, norm=norm)`` / ``irfft(T, n, ...)``,
                   ``torch.set_num_threads(w)``
=================  ====================================================================

Methods without a worker count (``SINGLE_THREADED``) run once per case, at the first worker
count, instead of once per worker count with the same result.  The full run covers powers of
two from 64 to 2**20 and the lengths 3*2**k, 5*2**k and 1000 (``FULL_SIZES``); the ratio table
(rows: dtype, workers, direction; columns: n) shows powers of two and the other lengths apart.
"""
from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

from .info import dist_version, importable
from .measure import PeakMemory, Profiles, progress_bar, render_table, time_call

__all__ = ["add_arguments", "run", "METHODS", "DEFAULT_METHODS", "SINGLE_THREADED",
           "FULL_SIZES", "method_available", "measure_case", "plan_cases", "format_table",
           "format_ratio_table", "plot"]

#: Method names in table order; the first available of BASELINES is the ratio's denominator.
METHODS = ("circfft:numba", "circfft:numpy", "scipy.fft", "numpy.fft", "scipy.fftpack",
           "torch.fft")
#: Run when ``--methods`` is not given (those installed): all but the slow numpy reference.
DEFAULT_METHODS = tuple(m for m in METHODS if m != "circfft:numpy")
#: Methods without a worker count: measured at the first worker count only.
SINGLE_THREADED = ("circfft:numpy", "numpy.fft", "scipy.fftpack")
BASELINES = ("scipy.fft", "numpy.fft")
DIRECTIONS = {"rdfft": "forward", "irdfft": "inverse"}
LABELS = {"forward": "rdfft", "inverse": "irdfft"}
NORMS = ("backward", "ortho", "forward")

#: Lengths of a full run: powers of two 64 ... 2**20, and 3*2**k, 5*2**k and 1000.
FULL_SIZES = sorted([4 ** k for k in range(3, 9)] + [1 << k for k in (17, 18, 19, 20)]
                    + [96, 192, 320, 640, 1000, 3072, 5120])
#: Settings of a full run and of ``--quick`` (workers None: 1 and ``os.cpu_count()``).
SETTINGS = Profiles(
    full=dict(sizes=FULL_SIZES, elements=1 << 22, repeat=7, warmup=2,
              dtype=["float32", "float64"], workers=None),
    quick=dict(sizes=[256, 1000, 4096, 65536], elements=1 << 20, repeat=3, warmup=1,
               dtype=["float32"], workers=None))


def _default_workers() -> list[int]:
    return sorted({1, os.cpu_count() or 1})


def add_arguments(p) -> None:
    """Add ``bench``'s options to the argparse (sub)parser ``p``."""
    p.add_argument("--sizes", type=int, nargs="+", metavar="N",
                   help=f"row lengths n (full run: {' '.join(map(str, FULL_SIZES))}; "
                        f"--quick: {' '.join(map(str, SETTINGS.quick['sizes']))})")
    p.add_argument("--elements", type=int, metavar="E",
                   help="elements per call; rows = E // n (full run: 2**22; --quick: 2**20)")
    p.add_argument("--dtype", nargs="+", choices=["float32", "float64"],
                   help="dtypes (full run: float32 float64; --quick: float32)")
    p.add_argument("--workers", type=int, nargs="+", metavar="W",
                   help="worker counts; each method uses w threads where it can "
                        f"(default: 1 and os.cpu_count(), here {_default_workers()})")
    p.add_argument("--repeat", type=int, metavar="R",
                   help="timed calls per case; the median is reported (full run: 7; --quick: 3)")
    p.add_argument("--warmup", type=int, metavar="K",
                   help="untimed calls before timing (full run: 2; --quick: 1)")
    p.add_argument("--methods", nargs="+", choices=METHODS, metavar="M",
                   help=f"methods to run, from {', '.join(METHODS)} (default: those installed "
                        f"of {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--norm", choices=NORMS, default="ortho",
                   help="normalisation of every method that has one (default: ortho; "
                        "scipy.fftpack always runs 'backward')")
    p.add_argument("--directions", nargs="+", choices=list(DIRECTIONS),
                   default=list(DIRECTIONS), help="transform directions (default: both)")
    p.add_argument("--quick", action="store_true",
                   help="short run (fewer sizes, elements and repeats; float32); explicit "
                        "options still win")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw time per element and extra memory against n (matplotlib)")
    p.add_argument("--json", metavar="FILE", help="save the raw results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


# --------------------------------------------------------------------------------------------
# Methods


def method_available(name: str) -> str | None:
    """None if ``name`` can run here, else the reason it cannot."""
    if name.startswith("circfft:"):
        from circfft.backends import get_backend

        try:
            get_backend(name.partition(":")[2])    # loads only this backend
        except ValueError as exc:
            return str(exc)
        return None
    module = name.partition(".")[0]
    if not importable(module):
        return f"{module} is not installed"
    return None


@dataclass
class Case:
    """Buffers and the call for one (method, direction, dtype, n, rows, workers)."""

    src: object                   # pristine input (numpy array)
    work: object                  # the buffer the call reads (numpy array)
    call: object                  # zero-argument callable doing one transform
    setup: object = None          # called before timing (e.g. torch.set_num_threads)

    def refill(self):
        import numpy as np

        np.copyto(self.work, self.src)


class Sources:
    """Pristine inputs, shared by all methods for the current (dtype, n, rows); one set kept."""

    def __init__(self):
        self._key, self._data = None, {}

    def get(self, dtype: str, n: int, rows: int, kind: str):
        """``kind="real"``: standard normal rows; ``"complex"``: their half spectra."""
        import numpy as np

        if self._key != (dtype, n, rows):
            self._key, self._data = (dtype, n, rows), {}
        if "real" not in self._data:
            rng = np.random.default_rng(n)
            self._data["real"] = rng.standard_normal((rows, n)).astype(dtype)
        if kind == "complex" and kind not in self._data:
            cdtype = np.result_type(dtype, np.complex64)
            self._data[kind] = np.fft.rfft(self._data["real"]).astype(cdtype)
        return self._data[kind]


def make_case(method: str, direction: str, dtype: str, n: int, rows: int, workers: int,
              sources: Sources | None = None, norm: str = "ortho") -> Case:
    import numpy as np

    sources = sources or Sources()
    real = sources.get(dtype, n, rows, "real")
    forward = direction == "forward"

    if method.startswith("circfft:"):
        import circfft

        backend = method.partition(":")[2]
        fn = circfft.rdfft if forward else circfft.irdfft
        work = real.copy()             # real input; for irdfft any real array is a packed spectrum
        return Case(real, work, lambda: fn(work, norm=norm, out=work, workers=workers,
                                           backend=backend))

    if method == "scipy.fftpack":
        import scipy.fftpack as fftpack

        fn = fftpack.rfft if forward else fftpack.irfft
        work = real.copy()
        return Case(real, work, lambda: fn(work, overwrite_x=True))

    # Out-of-place peers: the inverse reads a complex half spectrum.
    src = real if forward else sources.get(dtype, n, rows, "complex")
    work = src.copy()
    if method == "scipy.fft":
        import scipy.fft

        if forward:
            return Case(src, work, lambda: scipy.fft.rfft(work, norm=norm, workers=workers))
        return Case(src, work, lambda: scipy.fft.irfft(work, n, norm=norm, workers=workers))
    if method == "numpy.fft":
        if forward:
            return Case(src, work, lambda: np.fft.rfft(work, norm=norm))
        return Case(src, work, lambda: np.fft.irfft(work, n, norm=norm))
    if method == "torch.fft":
        import torch

        t = torch.from_numpy(work)     # shares memory with work, so refill() feeds it
        setup = lambda: torch.set_num_threads(workers)  # noqa: E731
        if forward:
            return Case(src, work, lambda: torch.fft.rfft(t, norm=norm), setup)
        return Case(src, work, lambda: torch.fft.irfft(t, n, norm=norm), setup)
    raise ValueError(f"unknown method {method!r}")


# --------------------------------------------------------------------------------------------
# Running


@dataclass
class Result:
    method: str
    direction: str
    dtype: str
    n: int
    rows: int
    workers: int
    times_s: list = field(default_factory=list)
    median_s: float = math.nan
    ns_per_element: float = math.nan
    extra_bytes: int = -1
    extra_per_x: float = math.nan
    ratio: float = math.nan
    error: str = ""


def measure_case(method, direction, dtype, n, rows, workers, *, repeat, warmup, memory,
                 sources=None, norm="ortho") -> Result:
    """Time (median of ``repeat`` calls after ``warmup``) and extra peak memory of one case."""
    import numpy as np

    res = Result(method, direction, dtype, n, rows, workers)
    case = make_case(method, direction, dtype, n, rows, workers, sources, norm)
    if case.setup is not None:
        case.setup()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(warmup + repeat):
            case.refill()
            out, seconds = time_call(case.call)
            del out
            if i >= warmup:
                res.times_s.append(seconds)
    finally:
        if gc_was_enabled:
            gc.enable()
    res.median_s = statistics.median(res.times_s)
    res.ns_per_element = res.median_s / (rows * n) * 1e9
    res.extra_bytes = memory.measure(case.call, prepare=case.refill)
    res.extra_per_x = res.extra_bytes / (rows * n * np.dtype(dtype).itemsize)
    return res


def _settings(args) -> dict:
    s = SETTINGS.settings(args.quick, **{key: getattr(args, key, None) for key in SETTINGS.full})
    if s["workers"] is None:
        s["workers"] = _default_workers()
    for key in ("sizes", "workers"):
        bad = [v for v in s[key] if v < 1]
        if bad:
            raise SystemExit(f"bench: --{key} must be positive, got {bad}")
    if s["elements"] < 1 or s["repeat"] < 1 or s["warmup"] < 0:
        raise SystemExit("bench: --elements and --repeat must be positive, --warmup >= 0")
    s["directions"] = [DIRECTIONS[d] for d in args.directions]
    s["norm"] = getattr(args, "norm", None) or "ortho"
    return s


def plan_cases(s, methods) -> list[tuple]:
    """``(dtype, workers, n, method, direction)`` of every case, in running order; a method of
    ``SINGLE_THREADED`` runs at the first worker count only."""
    first = s["workers"][0]
    return [(dt, w, n, m, d) for dt in s["dtype"] for n in s["sizes"] for w in s["workers"]
            for m in methods for d in s["directions"]
            if w == first or m not in SINGLE_THREADED]


def run(args) -> int:
    """Run the benchmark described by the parsed ``args``; print the tables; return status."""
    s = _settings(args)
    requested = list(args.methods) if args.methods else list(DEFAULT_METHODS)
    methods, skipped = [], {}
    for m in requested:
        reason = method_available(m)
        if reason is None:
            methods.append(m)
        else:
            skipped[m] = reason
    if not methods:
        print("bench: no method can run here: "
              + "; ".join(f"{m}: {r}" for m, r in skipped.items()), file=sys.stderr)
        return 1
    baseline = next((b for b in BASELINES if b in methods), methods[0])
    memory = PeakMemory()
    meta = _meta(args, s, baseline, memory, skipped)
    for line in meta["header"]:
        print(line)
    sys.stdout.flush()

    plan = plan_cases(s, methods)
    sources = Sources()
    results = []
    bar = progress_bar(len(plan), enabled=not args.no_progress, unit="case", leave=False)
    try:
        for dt, w, n, m, d in plan:
            rows = max(1, s["elements"] // n)
            bar.set_description_str(f"{m} {d} {dt} n={n} w={w}")
            try:
                r = measure_case(m, d, dt, n, rows, w, repeat=s["repeat"],
                                 warmup=s["warmup"], memory=memory, sources=sources,
                                 norm=s["norm"])
            except Exception as exc:   # keep going; reported below and in the exit status
                r = Result(m, d, dt, n, rows, w, error=f"{type(exc).__name__}: {exc}")
            results.append(r)
            bar.update(1)
    finally:
        bar.close()

    base = {(r.direction, r.dtype, r.n, r.workers): r.median_s
            for r in results if r.method == baseline and not r.error}
    for r in results:
        b = base.get((r.direction, r.dtype, r.n, r.workers))
        if b and not r.error:
            r.ratio = r.median_s / b

    print(format_table(results, s, baseline))
    print()
    print(format_ratio_table(results, s, baseline, methods))
    print()
    for line in _footer(meta, results):
        print(line)

    if args.json:
        doc = {k: v for k, v in meta.items() if k != "header"}
        doc["results"] = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                           for k, v in asdict(r).items()} for r in results]
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, allow_nan=False)
        print(f"# raw results written to {args.json}")
    if args.plot:
        plot(results, s, methods, args.plot, title=args.command_line)
        print(f"# plot written to {args.plot}")
    sys.stdout.flush()
    return 1 if any(r.error for r in results) else 0


def _meta(args, s, baseline, memory, skipped) -> dict:
    import numpy as np

    from circfft import __version__

    versions = {"circfft": __version__, "python": platform.python_version(),
                "numpy": np.__version__}
    for dist in ("scipy", "numba", "torch"):
        v = dist_version(dist)
        if v:
            versions[dist] = v
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("NUMBA_", "OMP_", "MKL_", "OPENBLAS_"))}
    header = [
        "# " + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"; {sys.executable}",
        f"# {platform.platform()}; os.cpu_count() = {os.cpu_count()}{_loadavg()}"
        + (f"; env: {' '.join(f'{k}={v}' for k, v in env.items())}" if env else ""),
        f"# {s['elements']} elements per call (rows = elements // n); median of {s['repeat']} "
        f"calls after {s['warmup']} warm-up; norm={s['norm']!r}; ratio = time / {baseline} "
        "time (same direction, dtype, n, workers)",
    ]
    return {"command": args.command_line, "argv": getattr(args, "argv", None),
            "versions": versions, "env": env, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "settings": s, "baseline": baseline,
            "memory_method": memory.description, "memory_kind": memory.kind,
            "skipped": skipped, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "header": header}


def _loadavg() -> str:
    """'; load average 1.23' (other work on the machine skews timings), or ''."""
    try:
        return f"; load average {os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return ""


def _footer(meta, results) -> list[str]:
    lines = [
        f"# finished {time.strftime('%Y-%m-%d %H:%M:%S')}{_loadavg()}",
        "# time: median wall time per call / (rows * n), in ns per element; in-place methods "
        "(circfft, scipy.fftpack with overwrite_x) get their input refilled, untimed, "
        "before every call, and so do the others.",
        f"# extra memory ({meta['memory_kind']}): {meta['memory_method']}. "
        "'/x' is that divided by the size of the real input x.",
        f"# {', '.join(SINGLE_THREADED)} take no worker count: measured at "
        f"w={meta['settings']['workers'][0]} only; torch.fft runs under "
        "torch.set_num_threads(w); scipy.fftpack has no norm argument (always 'backward').",
    ]
    for m, reason in meta["skipped"].items():
        lines.append(f"# skipped {m}: {reason}")
    for r in results:
        if r.error:
            lines.append(f"# FAILED {r.method} {r.direction} {r.dtype} n={r.n} "
                         f"w={r.workers}: {r.error}")
    return lines


# --------------------------------------------------------------------------------------------
# Tables and plot


def format_table(results, s, baseline) -> str:
    """Main table: one row per (dtype, workers, n, method), rdfft and irdfft side by side."""
    dirs = s["directions"]
    headers = ["dtype", "w", "n", "rows", "method"]
    for d in dirs:
        headers += [f"{LABELS[d]} ns/el", f"/{baseline}", "MiB extra", "/x"]
    by_key = {(r.dtype, r.workers, r.n, r.method, r.direction): r for r in results}
    rows = []
    order = {k: {v: i for i, v in enumerate(s[k])} for k in ("dtype", "workers", "sizes")}
    method_order = {m: i for i, m in enumerate(METHODS)}
    seen = sorted({(r.dtype, r.workers, r.n, r.method) for r in results},
                  key=lambda k: (order["dtype"].get(k[0], 0), order["workers"].get(k[1], 0),
                                 order["sizes"].get(k[2], 0), method_order.get(k[3], 99)))
    previous_group = None
    for dt, w, n, m in seen:
        group = (dt, w)
        if previous_group is not None and group != previous_group:
            rows.append(None)
        previous_group = group
        any_r = next(by_key[(dt, w, n, m, d)] for d in dirs if (dt, w, n, m, d) in by_key)
        row = [dt, str(w), str(n), str(any_r.rows), m]
        for d in dirs:
            r = by_key.get((dt, w, n, m, d))
            if r is None or r.error:
                row += ["FAILED" if r is not None else "-", "", "", ""]
                continue
            row += [f"{r.ns_per_element:.3f}",
                    f"{r.ratio:.2f}" if not math.isnan(r.ratio) else "-",
                    f"{r.extra_bytes / 2**20:.1f}",
                    f"{r.extra_per_x:.2f}"]
        rows.append(row)
    return render_table(headers, rows, left={0, 4})


def format_ratio_table(results, s, baseline, methods) -> str:
    """Time over the baseline's: rows (dtype, workers, direction, method), columns n.

    The baseline's own row holds its median time per call in ms (the ratios' unit); the other
    rows hold ``time / baseline time`` at the same dtype, n, workers and direction.  Powers of
    two and the other lengths are two blocks of columns, so that each stays readable.
    """
    by_key = {(r.dtype, r.workers, r.method, r.direction, r.n): r for r in results}
    measured = {(r.dtype, r.workers, r.method) for r in results}
    blocks = [("n: powers of two", [n for n in s["sizes"] if n & (n - 1) == 0]),
              ("n: other lengths", [n for n in s["sizes"] if n & (n - 1)])]
    out = [f"time / {baseline} time (below 1.00: faster than {baseline}); the {baseline} ms "
           "rows: its time per call in ms"]
    for title, sizes in blocks:
        if not sizes:
            continue
        rows = []
        for dt in s["dtype"]:
            for w in s["workers"]:
                if rows:
                    rows.append(None)
                for d in s["directions"]:
                    for m in [baseline] + [m for m in methods if m != baseline]:
                        if (dt, w, m) not in measured:
                            continue
                        cells = [_ratio_cell(by_key.get((dt, w, m, d, n)), m == baseline)
                                 for n in sizes]
                        rows.append([dt, str(w), LABELS[d],
                                     f"{m} ms" if m == baseline else m] + cells)
        out += ["", title, render_table(["dtype", "w", "dir", "method"] + [str(n) for n in sizes],
                                        rows, left={0, 2, 3})]
    return "\n".join(out)


def _ratio_cell(r, absolute: bool) -> str:
    """One cell: the ratio, or (``absolute``) the time per call in ms; "-" without a result."""
    if r is None or r.error:
        return "-" if r is None else "FAILED"
    if absolute:
        return f"{r.median_s * 1e3:.2f}"
    return "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}"


def plot(results, s, methods, path, title="") -> None:
    """Time per element and extra memory against n: one panel row per (dtype, workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = [(dt, w) for dt in s["dtype"] for w in s["workers"]]
    dirs = s["directions"]
    ncols = 2 * len(dirs)
    fig, axes = plt.subplots(len(combos), ncols, figsize=(4.2 * ncols, 3.2 * len(combos)),
                             squeeze=False, sharex=True)
    colors = {m: f"C{i}" for i, m in enumerate(METHODS)}
    for i, (dt, w) in enumerate(combos):
        for j, d in enumerate(dirs):
            ax_t, ax_m = axes[i, j], axes[i, len(dirs) + j]
            for m in methods:
                pts = sorted((r.n, r.ns_per_element, r.extra_bytes / 2**20) for r in results
                             if (r.method, r.direction, r.dtype, r.workers) == (m, d, dt, w)
                             and not r.error)
                if not pts:
                    continue
                ns, t, mem = zip(*pts)
                style = dict(color=colors.get(m), marker="o", markersize=3,
                             linewidth=2 if m.startswith("circfft") else 1.2, label=m)
                ax_t.plot(ns, t, **style)
                ax_m.plot(ns, mem, **style)
            ax_t.set_title(f"{LABELS[d]} time, {dt}, {w} worker(s)", fontsize=9)
            ax_m.set_title(f"{LABELS[d]} extra peak memory, {dt}, {w} worker(s)", fontsize=9)
            ax_t.set_ylabel("ns per element")
            ax_m.set_ylabel("MiB")
            ax_t.set_yscale("log")
            for ax in (ax_t, ax_m):
                ax.set_xscale("log", base=2)
                ax.grid(True, which="both", alpha=0.3)
                if i == len(combos) - 1:
                    ax.set_xlabel("n")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=8, y=0.005, va="bottom")
    fig.tight_layout(rect=(0, 0.02, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
