"""What autograd saves for backward: the memory tests of the torch operators and adapters.

Importable as ``_autograd_spy`` (tests/ is on sys.path).
"""
from contextlib import contextmanager

import torch


@contextmanager
def saved_tensors():
    """Collect, in a list yielded to the block, every tensor autograd saves inside it."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved
