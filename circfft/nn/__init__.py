"""PyTorch layer of circfft: differentiable operators and fine-tuning adapters.

Importing ``circfft.nn`` imports torch (``import circfft`` alone never does).  The modules follow
PEFT's tuner layout:

- :mod:`circfft.nn.functional`: differentiable transforms and circulant / FourierFT products;
- :mod:`circfft.nn.config`: adapter configs (which modules, which hyper-parameters);
- :mod:`circfft.nn.layers`: adapter layers wrapping a frozen ``nn.Linear`` / HF ``Conv1D``;
- :mod:`circfft.nn.model`: injection, merging, unloading and reports for whole models;
- :mod:`circfft.nn.io`: saving and loading adapters, in circfft's format or stock PEFT's.
"""
from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("circfft.nn needs PyTorch: pip install 'circfft[torch]'") from exc

from ..backends import get_backend

# Load the torch backend now: torch.compile(fullgraph=True) cannot trace its first import.
get_backend("torch")

from . import functional  # noqa: E402
from .config import (AdapterConfig, CirculantConfig, CirculantDiagonalConfig,  # noqa: E402
                     FourierFTConfig)
from .io import load_adapter, save_adapter  # noqa: E402
from .layers import (AdapterLayer, CirculantAdapter, CirculantDiagonalAdapter,  # noqa: E402
                     FourierFTAdapter)
from .model import (adapter_report, disable_adapters, format_report, inject,  # noqa: E402
                    merge_and_unload, set_adapter, trainable_parameters, unload)

__all__ = ["functional",
           "AdapterConfig", "CirculantConfig", "CirculantDiagonalConfig", "FourierFTConfig",
           "AdapterLayer", "CirculantAdapter", "CirculantDiagonalAdapter", "FourierFTAdapter",
           "inject", "merge_and_unload", "unload", "disable_adapters", "set_adapter",
           "trainable_parameters", "adapter_report", "format_report",
           "save_adapter", "load_adapter"]
