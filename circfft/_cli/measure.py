"""Timing, device sync, peak memory, fresh-process runs, run settings, progress bars and
tables: what every benchmark and the demo measure and report with.

Nothing heavy (torch, tqdm) is imported at module level: each helper imports what it uses.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["sync", "torch_threads", "time_call", "cuda_event_seconds", "cuda_median_seconds",
           "host_seconds_per_call", "default_device", "device_description", "PeakMemory",
           "fix_mmap_threshold", "run_fresh_process", "Profiles", "progress_bar", "mib",
           "format_row", "render_table", "ratio", "verdict", "run_header"]


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def sync(device: str) -> None:
    """Wait for the work queued on ``device`` ("cpu": nothing to wait for; "cuda[:k]")."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with torch's CPU thread count set to ``threads`` (None: as it is), then
    restore it, leaving the caller's process as it was."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_call(fn, device: str = "cpu"):
    """``(fn(), seconds)``: wall time of one call, ``device`` synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - t0


def cuda_event_seconds(torch, fn) -> float:
    """Seconds one call of ``fn`` takes on torch's current CUDA stream, timed by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e-3


def cuda_median_seconds(torch, fn, repeat: int, warmup: int, prepare=None) -> float:
    """Median of ``repeat`` CUDA-event timings of ``fn()`` after ``warmup`` untimed calls;
    ``prepare()`` (e.g. refilling an in-place call's input) runs untimed before every call."""
    times = []
    for i in range(warmup + repeat):
        if prepare is not None:
            prepare()
        if i < warmup:
            fn()
        else:
            times.append(cuda_event_seconds(torch, fn))
    return statistics.median(times)


def host_seconds_per_call(fn, calls: int, device: str = "cpu") -> tuple[float, float]:
    """``(enqueue, wall)`` seconds per call of ``calls`` back-to-back calls of ``fn()``.

    ``device`` is synchronised before the first call and after the last one, never in between:
    ``enqueue`` is the host time until the last call returned (what the caller's thread spends
    per call, launches included), ``wall`` the time until the device finished as well.
    """
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    sync(device)
    t2 = time.perf_counter()
    return (t1 - t0) / calls, (t2 - t0) / calls


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------
def default_device() -> str:
    """``"cuda"`` when torch sees a CUDA device, else ``"cpu"`` (the commands' default)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_description(device: str) -> str:
    """What ``device`` is, for the line every command prints: name, or why not a GPU."""
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        return f"{device} ({torch.cuda.get_device_name(index)}, torch {torch.__version__})"
    why = ("a CUDA device is present but not chosen" if torch.cuda.is_available() else
           "no CUDA device: torch.cuda.is_available() is False")
    return f"cpu ({torch.get_num_threads()} torch threads; {why})"


# ---------------------------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------------------------
def _status_bytes(field: str) -> int | None:
    """A size field (``VmRSS``, ``VmHWM``) of ``/proc/self/status`` in bytes; None without it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the resident-set high-water mark ``VmHWM`` to the current RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> bool:
    """Return glibc's free heap memory to the system; False where there is no glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def fix_mmap_threshold(nbytes: int = 65536) -> None:
    """glibc: serve every allocation of ``nbytes`` or more by mmap, and trim the heap.

    With the threshold fixed (glibc otherwise raises it as large blocks are freed), such a buffer
    is mapped when allocated and unmapped when freed, so the resident peak counts exactly the
    live buffers; call it once, at the start of a process that measures peaks.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, int(nbytes))       # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above the level at :meth:`start`, read one of three ways (``kind``).

    ``"rss"``
        Linux resident set: ``VmHWM`` after resetting it through ``/proc/self/clear_refs``,
        minus ``VmRSS`` at the start (after ``gc.collect()`` and ``malloc_trim(0)``, so memory
        reused from the allocator's free lists shows up).  Counts every allocation (numba's and
        torch's too).  Where the reset fails, ``VmHWM`` is the process's lifetime peak and
        :attr:`exact` is False.
    ``"tracemalloc"``
        ``tracemalloc``'s peak minus the traced memory at the start: Python and numpy
        allocations only.
    ``"cuda"``
        ``torch.cuda.max_memory_allocated`` (peak statistics reset at the start) minus the
        memory allocated at the start.

    Parameters
    ----------
    kind : {"auto", "rss", "tracemalloc", "cuda"}, optional
        ``"auto"``: ``"rss"`` where ``/proc/self/clear_refs`` works, else ``"tracemalloc"``.
    """

    KINDS = ("auto", "rss", "tracemalloc", "cuda")

    def __init__(self, kind: str = "auto"):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        if kind == "auto":
            resettable = _reset_rss_peak() and _status_bytes("VmRSS") is not None
            kind = "rss" if resettable else "tracemalloc"
        self.kind = kind
        self._trims = kind == "rss" and _malloc_trim()
        #: Whether the last figure is the peak of the measured span alone.
        self.exact = True
        self._before = None
        self._started_tracing = False

    @classmethod
    def for_device(cls, device: str) -> "PeakMemory":
        """``"cuda"`` for a CUDA device, else ``"rss"`` (torch's CPU allocations need it)."""
        return cls("cuda" if device.startswith("cuda") else "rss")

    @property
    def description(self) -> str:
        """How the figure is read, for report footers."""
        if self.kind == "rss":
            trim = " and malloc_trim(0)" if self._trims else ""
            return ("peak RSS: VmHWM after resetting it via /proc/self/clear_refs, minus VmRSS "
                    f"before the call (after gc.collect(){trim}); counts numba's allocations")
        if self.kind == "cuda":
            return ("torch.cuda.max_memory_allocated during the call minus the memory "
                    "allocated before it")
        return ("tracemalloc peak during the call (Python/numpy allocations only; numba's "
                "and torch's allocations are invisible to it)")

    def start(self) -> None:
        """Record the current level and reset the peak."""
        gc.collect()
        if self.kind == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._before = torch.cuda.memory_allocated()
        elif self.kind == "rss":
            _malloc_trim()
            self._before = _status_bytes("VmRSS")
            self.exact = _reset_rss_peak()
        else:
            import tracemalloc

            self._started_tracing = not tracemalloc.is_tracing()
            if self._started_tracing:
                tracemalloc.start()
            tracemalloc.reset_peak()
            self._before = tracemalloc.get_traced_memory()[0]

    def stop(self) -> int | None:
        """Bytes at the peak since :meth:`start` beyond the level then (None: unreadable)."""
        if self.kind == "cuda":
            import torch

            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self.kind == "rss":
            peak = _status_bytes("VmHWM")
        else:
            import tracemalloc

            peak = tracemalloc.get_traced_memory()[1]
            if self._started_tracing:
                tracemalloc.stop()
        if peak is None or self._before is None:
            return None
        return max(0, int(peak - self._before))

    def measure(self, fn, prepare=None) -> int | None:
        """Extra peak bytes of one call ``fn()`` (``prepare()`` first, unmeasured).

        The call's result is alive when the peak is read, so an out-of-place output counts.
        """
        if prepare is not None:
            prepare()
        self.start()
        try:
            result = fn()
        except BaseException:
            self.stop()
            raise
        peak = self.stop()
        del result
        return peak


# ---------------------------------------------------------------------------------------------
# Fresh processes and settings
# ---------------------------------------------------------------------------------------------
def run_fresh_process(module: str, *args: str) -> dict:
    """Run ``python -m module *args`` in a fresh interpreter and return its answer.

    The answer is the JSON object on the last line of its output, or ``{"error": ...}`` holding
    the last line of its error output when it fails.  This checkout's circfft is imported.
    """
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Profiles:
    """Settings of a full run and of a ``--quick`` run; options given explicitly win."""

    full: dict
    quick: dict

    def settings(self, quick: bool, **given) -> dict:
        """The chosen profile's settings; each ``given`` value that is not None replaces its own."""
        chosen = dict(self.quick if quick else self.full)
        chosen.update((key, value) for key, value in given.items() if value is not None)
        return chosen


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
class _NoBar:
    """Stand-in for a tqdm bar (disabled, or tqdm not installed): the same methods, no output."""

    def update(self, k=1):
        pass

    def set_description_str(self, s, refresh=True):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def progress_bar(total: int, enabled: bool = True, **options):
    """A tqdm bar on stderr (``options`` go to tqdm), or a silent stand-in."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, file=sys.stderr, dynamic_ncols=True, **options)
    return _NoBar()


def mib(nbytes, digits: int = 1) -> str:
    """``nbytes`` in MiB with ``digits`` decimals; "n/a" for None."""
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.{digits}f}"


def format_row(cells, widths, left=(), sep: str = "  ") -> str:
    """Aligned columns: cell ``i`` padded to ``widths[i]``, left-aligned if ``i`` is in ``left``."""
    return sep.join(c.ljust(wd) if i in left else c.rjust(wd)
                    for i, (c, wd) in enumerate(zip(cells, widths))).rstrip()


def render_table(headers, rows, left=(), markdown: bool = False) -> str:
    """A table of string cells: aligned plain text, or Markdown (``markdown=True``).

    ``None`` in ``rows`` is a blank line (in plain text, a separator between groups).
    """
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(out + ["" if row is None else "| " + " | ".join(row) + " |"
                                for row in rows])
    widths = [len(h) for h in headers]
    for row in rows:
        if row is not None:
            widths = [max(wd, len(c)) for wd, c in zip(widths, row)]
    out = [format_row(headers, widths, left), format_row(["-" * wd for wd in widths], widths)]
    out += ["" if row is None else format_row(row, widths, left) for row in rows]
    return "\n".join(out)


def ratio(numerator, denominator) -> float | None:
    """``numerator / denominator``; None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def verdict(what: str, value: float | None, target: float | None) -> str:
    """``"time ok"`` / ``"time MISSED"`` for ``value <= target``; "" without both."""
    if value is None or target is None:
        return ""
    return f"{what} ok" if value <= target else f"{what} MISSED"


def run_header(command: str, versions: dict, device: str | None = None) -> list[str]:
    """Header lines of a report: the command, the date, the versions and the device."""
    lines = [f"# {command}" if command else None,
             f"# {time.strftime('%Y-%m-%d %H:%M:%S %z')}; "
             + ", ".join(f"{name} {v}" for name, v in versions.items() if v),
             f"# device: {device}" if device else None]
    return [line for line in lines if line]
