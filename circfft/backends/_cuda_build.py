"""CUDA sources of the GPU backend: the kernel list, compilation (CuPy) and per-device caches.

The sources live in ``circfft/backends/cuda`` (package data).  Kernels are C++ templates over
``(storage, compute)`` types and are instantiated through CuPy's ``name_expressions``;
:func:`kernel_instantiations` is the one list of what the backend uses, shared by the
backend, the nvcc compile test and the CPU emulation test.

Nothing here imports cupy at module import; :func:`get_kernel` and :func:`twiddle_table` do.
"""
from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np

__all__ = ["CUDA_DIR", "COMPILE_OPTIONS", "DTYPE_OPTIONS", "compile_options", "STORAGE_TYPES", "KERNELS", "kernel_instantiations",
           "name_expression", "get_kernel", "twiddle_table", "twiddle_bits", "padded_size",
           "device_limits"]

#: Directory holding ``common.cuh``, ``rdfft.cu`` and ``circulant.cu``.
CUDA_DIR = Path(__file__).resolve().parent / "cuda"
#: Options for every source (NVRTC and nvcc alike); the sources include ``common.cuh``.
COMPILE_OPTIONS = ("-std=c++17", f"-I{CUDA_DIR}")
#: Extra options per storage dtype: the half-precision headers are pulled in only by the
#: modules that use them, so float32/float64 build even where NVRTC lacks those headers.
DTYPE_OPTIONS = {"float16": ("-DCIRCFFT_WITH_HALF",), "bfloat16": ("-DCIRCFFT_WITH_BF16",)}

#: numpy dtype name -> (C++ storage type, C++ compute type).
STORAGE_TYPES = {
    "float32": ("float", "float"),
    "float64": ("double", "double"),
    "float16": ("__half", "float"),
    "bfloat16": ("__nv_bfloat16", "float"),
}

#: source file -> kernels templated on <S, C> (storage, compute) or on <C> only.
KERNELS = {
    "rdfft.cu": {
        "rdfft_rows": "SC", "rdfft_pass": "SC", "rdfft_split": "SC", "rdfft_merge": "SC",
        "rdfft_unscramble": "SC", "rdfft_tail": "C",
    },
    "circulant.cu": {
        "spectral_mul": "SC", "bc_accumulate": "SC",
    },
}


def name_expression(kernel: str, dtype_name: str) -> str:
    """The C++ name expression of ``kernel`` for the storage dtype ``dtype_name``."""
    for source, kernels in KERNELS.items():
        if kernel in kernels:
            storage, compute = STORAGE_TYPES[dtype_name]
            if kernels[kernel] == "SC":
                return f"{kernel}<{storage}, {compute}>"
            return f"{kernel}<{compute}>"
    raise KeyError(kernel)


def compile_options(dtype_name: str) -> tuple[str, ...]:
    """NVRTC/nvcc options of the module holding the kernels for storage dtype ``dtype_name``."""
    return COMPILE_OPTIONS + DTYPE_OPTIONS.get(dtype_name, ())


def kernel_instantiations() -> list[tuple[str, str, tuple[str, ...]]]:
    """Every kernel the backend can launch: ``(source_filename, name_expression, options)``.

    The backend builds one module per (source, storage dtype), so an expression templated on
    the compute type only (``rdfft_tail<float>``) appears once per module that holds it.
    """
    out = []
    for source, kernels in KERNELS.items():
        for dtype_name in STORAGE_TYPES:
            for kernel in kernels:
                out.append((source, name_expression(kernel, dtype_name),
                            compile_options(dtype_name)))
    return out


# ---------------------------------------------------------------------------------------------
# Host-side geometry shared with the kernels
# ---------------------------------------------------------------------------------------------
def padded_size(m: int) -> int:
    """Elements of one padded shared-memory array of ``m`` values (``padded_size`` in common.cuh)."""
    return m + (m >> 5) + 1


def twiddle_bits(n: int) -> int:
    """log2 of the low twiddle table's size for length ``n`` (see ``twiddle`` in common.cuh)."""
    half_bits = max(0, (n // 2).bit_length() - 1)           # log2(n/2)
    return half_bits if half_bits <= 16 else (half_bits + 1) // 2


def _twiddle_host(n: int) -> np.ndarray:
    """Two-level table of ``W_n^k = exp(-2 pi i k / n)`` in float64, interleaved cos, -sin."""
    bits = twiddle_bits(n)
    lo = np.arange(1 << bits, dtype=np.float64)
    hi = np.arange(max(1, -(-(n // 2) // (1 << bits))), dtype=np.float64) * (1 << bits)
    k = np.concatenate([lo, hi])
    angle = (2.0 * np.pi / n) * k
    tw = np.empty(2 * k.size, dtype=np.float64)
    tw[0::2] = np.cos(angle)
    tw[1::2] = -np.sin(angle)
    tw[np.abs(tw) < 1e-15] = 0.0       # exact zeros keep integer inputs exact
    return tw


# ---------------------------------------------------------------------------------------------
# Compilation and per-device caches (need cupy)
# ---------------------------------------------------------------------------------------------
_lock = threading.Lock()
_modules: dict = {}        # (device id, source, dtype name) -> cupy.RawModule
_kernels: dict = {}        # (device id, name expression) -> cupy.RawKernel
_twiddles: dict = {}       # (device id, n, compute dtype) -> cupy.ndarray


def _module(cupy, device: int, source: str, dtype_name: str):
    key = (device, source, dtype_name)
    mod = _modules.get(key)
    if mod is None:
        code = (CUDA_DIR / source).read_text()
        names = [name_expression(k, dtype_name) for k in KERNELS[source]]
        mod = cupy.RawModule(code=code, options=compile_options(dtype_name),
                             name_expressions=names)
        _modules[key] = mod
    return mod


def get_kernel(kernel: str, dtype_name: str):
    """The compiled ``kernel`` for storage dtype ``dtype_name`` on the current device.

    Built on first use and cached per device; kernels using dynamic shared memory are allowed
    the device's opt-in maximum (above the default 48 KiB).
    """
    import cupy

    device = cupy.cuda.Device().id
    expr = name_expression(kernel, dtype_name)
    key = (device, expr)
    fn = _kernels.get(key)
    if fn is not None:
        return fn
    with _lock:
        fn = _kernels.get(key)
        if fn is None:
            source = next(s for s, ks in KERNELS.items() if kernel in ks)
            fn = _module(cupy, device, source, dtype_name).get_function(expr)
            if kernel in ("rdfft_rows", "rdfft_tail"):
                fn.max_dynamic_shared_size_bytes = device_limits()["smem_optin"]
            _kernels[key] = fn
    return fn


@functools.lru_cache(maxsize=None)
def _limits(device: int) -> dict:
    import cupy

    attrs = cupy.cuda.Device(device).attributes
    return {
        "smem_optin": int(attrs.get("MaxSharedMemoryPerBlockOptin",
                                    attrs["MaxSharedMemoryPerBlock"])),
        "sm_count": int(attrs["MultiProcessorCount"]),
    }


def device_limits(device: int | None = None) -> dict:
    """``smem_optin`` (bytes of dynamic shared memory a block may use) and ``sm_count`` of
    ``device`` (default: CuPy's current device)."""
    if device is None:
        import cupy

        device = cupy.cuda.Device().id
    return _limits(device)


def twiddle_table(n: int, compute_dtype):
    """The device twiddle table for length ``n`` in ``compute_dtype``, cached per device."""
    import cupy

    device = cupy.cuda.Device().id
    key = (device, n, np.dtype(compute_dtype).name)
    tw = _twiddles.get(key)
    if tw is None:
        tw = cupy.asarray(_twiddle_host(n).astype(compute_dtype))
        with _lock:
            if len(_twiddles) >= 128:              # bounded: drop the oldest entry
                _twiddles.pop(next(iter(_twiddles)))
            _twiddles[key] = tw
    return tw
