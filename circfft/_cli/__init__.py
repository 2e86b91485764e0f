"""The command-line tools of ``python -m circfft`` (``info``, ``bench``, ``demo``), kept apart
from the library: they use only circfft's public API, and the library never imports them.

:mod:`.commands` parses and dispatches; :mod:`.info` is ``info``; one module per benchmark
(:mod:`.bench_transforms`, :mod:`.bench_ops`, :mod:`.bench_adapters`, :mod:`.bench_gpu`);
:mod:`.demo` and :mod:`.demo_data` are the fine-tuning demo; :mod:`.measure` holds what all of
them measure and report with, and :mod:`.options` the up-front checks of output options.
"""
from __future__ import annotations

from .commands import main

__all__ = ["main"]
