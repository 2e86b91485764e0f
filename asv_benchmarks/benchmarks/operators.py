"""asv benchmarks: forward + backward of the block-circulant product on CPU, float32.

``BlockCirculant`` times ``circfft.nn.functional.block_circulant_matmul`` and PEFT's C3A
``BlockCircularConvolution`` (when peft is installed) at ``d_in = d_out = d`` in {768, 4096}
and block size ``b`` in {64, 256, d} (``b = 0`` in the parameters means ``b = d``);
``LoRA`` times the dense low-rank product ``(x A^T) B^T`` at rank 8 and 16 for reference.
The issue's cases use 8192 tokens; ``$CIRCFFT_ASV_TOKENS`` overrides that, and when only
``$CIRCFFT_ASV_ELEMENTS`` is set (the smoke test) each case uses ``ELEMENTS // d`` tokens.

``peakmem_`` is asv's peak RSS of the whole benchmark process (inputs included): compare the
implementations with each other.  ``python -m circfft bench --ops`` reports the memory above
the inputs, each case in a fresh process.  ``setup`` raises ``NotImplementedError`` (asv:
skipped) when torch or peft is missing.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

try:
    import circfft  # noqa: F401
except ImportError:  # asv --python=same on a checkout where circfft is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import circfft  # noqa: F401

DIMS = [768, 4096]
BLOCKS = [64, 256, 0]
DTYPES = ["float32"]


def _tokens(d: int) -> int:
    if "CIRCFFT_ASV_TOKENS" in os.environ:
        return int(os.environ["CIRCFFT_ASV_TOKENS"])
    if "CIRCFFT_ASV_ELEMENTS" in os.environ:
        return max(8, int(os.environ["CIRCFFT_ASV_ELEMENTS"]) // d)
    return 8192


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise NotImplementedError(f"{module} is not installed")


class BlockCirculant:
    """Forward + backward of a ``d x d`` block-circulant product with block size ``b``."""

    params = (["circfft", "c3a"], DIMS, BLOCKS, DTYPES)
    param_names = ["impl", "d", "b", "dtype"]
    number = 1
    repeat = (1, 5, 60.0)
    timeout = 900

    def setup(self, impl, d, b, dtype):
        _need("torch")
        if impl == "c3a":
            _need("peft")
        import torch

        b = d if b == 0 else b
        T = _tokens(d)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(T, d, generator=gen, dtype=getattr(torch, dtype)).requires_grad_()
        gy = torch.randn(T, d, generator=gen, dtype=x.dtype)
        k = (torch.randn(d // b, d // b, b, generator=gen, dtype=x.dtype) / d).requires_grad_()
        if impl == "circfft":
            from circfft.nn import functional as F

            def step():
                F.block_circulant_matmul(k, x).backward(gy)
        else:
            from peft.tuners.c3a.utils import BlockCircularConvolution

            def step():
                (BlockCircularConvolution.apply(x, k) / d).backward(gy)

        def run():
            x.grad = None
            k.grad = None
            step()

        self.run = run
        run()                   # warm-up: numba kernels load or compile here

    def time_forward_backward(self, impl, d, b, dtype):
        self.run()

    def peakmem_forward_backward(self, impl, d, b, dtype):
        self.run()


class LoRA:
    """Forward + backward of the dense LoRA product ``(x A^T) B^T`` at rank ``r``."""

    params = ([8, 16], DIMS, DTYPES)
    param_names = ["rank", "d", "dtype"]
    number = 1
    repeat = (1, 5, 60.0)
    timeout = 300

    def setup(self, rank, d, dtype):
        _need("torch")
        import torch

        T = _tokens(d)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(T, d, generator=gen, dtype=getattr(torch, dtype)).requires_grad_()
        gy = torch.randn(T, d, generator=gen, dtype=x.dtype)
        A = (torch.randn(rank, d, generator=gen, dtype=x.dtype) / d ** 0.5).requires_grad_()
        B = (torch.randn(d, rank, generator=gen, dtype=x.dtype) / rank ** 0.5).requires_grad_()

        def run():
            for t in (x, A, B):
                t.grad = None
            ((x @ A.T) @ B.T).backward(gy)

        self.run = run
        run()

    def time_forward_backward(self, rank, d, dtype):
        self.run()

    def peakmem_forward_backward(self, rank, d, dtype):
        self.run()
