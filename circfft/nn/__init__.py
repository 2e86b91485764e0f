"""PyTorch layer of circfft: differentiable transforms and circulant operators on tensors.

Importing ``circfft.nn`` imports torch (``import circfft`` alone never does).  See
:mod:`circfft.nn.functional` for the functional API.
"""
from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("circfft.nn needs PyTorch: pip install 'circfft[torch]'") from exc

from . import functional
from .._dispatch import get_backend

# Load the torch backend now: torch.compile(fullgraph=True) cannot trace its first import.
get_backend("torch")

__all__ = ["functional"]
