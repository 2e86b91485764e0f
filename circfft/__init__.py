"""circfft: in-place real FFTs in the packed (halfcomplex) layout, and circulant algebra on it.

``import circfft`` is cheap: numba, cupy and torch are imported by their backends on first use.
"""
from ._circulant import (block_circulant_dense, block_circulant_matmul, circulant_dense,
                         circulant_diagonal_matmul, circulant_matmul, spectral_mul)
from ._config import config, get_config
from .backends import set_backend
from ._layout import from_rfft, to_rfft
from ._transforms import irdfft, rdfft
from ._version import __version__
from . import backends

__all__ = ["rdfft", "irdfft", "to_rfft", "from_rfft", "spectral_mul", "set_backend",
           "backends", "__version__", "circulant_matmul", "block_circulant_matmul",
           "circulant_diagonal_matmul", "circulant_dense", "block_circulant_dense",
           "config", "get_config"]
