"""How CPU work on many rows is split into chunks: the one size policy.

A chunk holds about ``circfft.get_config().chunk_elements`` elements per row side (default
``2**18``: 1 MiB of float32, which keeps a chunk's temporaries in L2 on current CPUs), and at
least one row.  Temporaries therefore never grow with the number of rows.  On the CPU executor
the chunks of one call are shared by ``torch.get_num_threads()`` Python threads, each taking
every k-th chunk, and the per-thread sums are added in thread order, so results depend on the
chunk size and the thread count only (``docs/settings.rst``, "Reproducibility").  GPUs take all
rows at once.
"""
from __future__ import annotations

from ._config import get_config

__all__ = ["rows_per_chunk", "chunk_ranges"]


def rows_per_chunk(rows: int, width: int) -> int:
    """Rows per chunk for ``rows`` rows of ``width`` elements (per side): at least 1."""
    return max(1, min(int(rows), get_config().chunk_elements // max(1, int(width))))


def chunk_ranges(rows: int, width: int) -> list[tuple[int, int]]:
    """``[(t0, t1), ...]`` covering ``range(rows)`` in chunks of `rows_per_chunk` rows."""
    step = rows_per_chunk(rows, width)
    return [(t0, min(rows, t0 + step)) for t0 in range(0, int(rows), step)]
