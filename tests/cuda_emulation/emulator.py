"""Build CUDA sources for the CPU emulation shim and call their kernels through ctypes.

The shim (``cuda_runtime_emu.h``, ``emu_launch.h`` and the stand-in ``cuda_fp16.h`` /
``cuda_bf16.h`` in this folder) lets g++ (C++20) compile the project's ``.cu`` files.  For one
source file and a list of cupy-style name expressions (``"rdfft_rows<float, float>"``),
`build_module` writes a small C++ file that includes the shim and the source and exports one
type-erased launcher per instantiation; `EmulatedModule` loads the shared library and hands out
`EmulatedKernel` objects called like cupy's ``RawKernel``::

    module = EmulatedModule(build_module(src, ["k<float>"], build_dir))
    module.get_function("k<float>")((grid,), (block,), (x, n), shared_mem=bytes)

Only the dynamic shared-memory declaration fixed by the kernel contract is rewritten in the
build's copy of the sources (a declaration cannot be both ``extern`` and a shared ``static``);
any other ``extern __shared__`` is refused.  Nothing else in the sources changes.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np

SHIM_DIR = Path(__file__).resolve().parent
SHIM_FILES = ("cuda_runtime_emu.h", "emu_launch.h", "cuda_fp16.h", "cuda_bf16.h")

#: The one dynamic shared-memory declaration the kernel contract allows, and its replacement.
DYNAMIC_SMEM_DECL = "extern __shared__ __align__(16) unsigned char circfft_smem[];"
DYNAMIC_SMEM_REPLACEMENT = "CIRCFFT_EMU_DYNAMIC_SMEM_DECL"

MIN_GXX_MAJOR = 12
CXX_FLAGS = ("-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-w")
#: Extra g++ flags from the environment, e.g. ``-fsanitize=thread -g`` to have ThreadSanitizer
#: report the kernels' data races (run python with ``LD_PRELOAD=$(g++
#: -print-file-name=libtsan.so)``; see README.md).
EXTRA_FLAGS_ENV = "CIRCFFT_EMU_CXXFLAGS"


class EmulationError(RuntimeError):
    """A source uses a construct the emulation cannot handle, or it failed to build."""


class KernelLaunchError(RuntimeError):
    """An emulated launch failed (bad configuration, or a barrier rule broken)."""


# ---------------------------------------------------------------------------------------------
# Compiler discovery
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def gxx_unavailable_reason() -> str | None:
    """None when a g++ >= 12 (C++20 <barrier>, atomic_ref, _Float16) is on PATH, else why not."""
    gxx = shutil.which("g++")
    if gxx is None:
        return "g++ not found on PATH"
    try:
        version = subprocess.run([gxx, "-dumpfullversion", "-dumpversion"], check=True,
                                 capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run g++: {exc}"
    try:
        major = int(version.split(".")[0])
    except ValueError:
        return f"cannot parse the g++ version {version!r}"
    if major < MIN_GXX_MAJOR:
        return f"g++ {version} is too old (need >= {MIN_GXX_MAJOR})"
    return None


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------
def _rewrite_source(text: str, name: str) -> str:
    """Replace the contract's dynamic shared-memory declaration; refuse any other form."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if re.search(r"\bextern\s+__shared__\b", line) and DYNAMIC_SMEM_DECL not in line:
            raise EmulationError(
                f"{name}:{lineno}: dynamic shared memory must be declared exactly as "
                f"{DYNAMIC_SMEM_DECL!r} for the CPU emulation, got {line.strip()!r}")
    return text.replace(DYNAMIC_SMEM_DECL, DYNAMIC_SMEM_REPLACEMENT)


def prepare_sources(source_dir: Path, dest_dir: Path) -> None:
    """Copy every ``*.cu``/``*.cuh`` of ``source_dir`` to ``dest_dir``, rewritten for the shim."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(source_dir.iterdir()):
        if path.suffix in (".cu", ".cuh") and path.is_file():
            text = _rewrite_source(path.read_text(), path.name)
            (dest_dir / path.name).write_text(text)


def _gxx_options(options) -> list[str]:
    """The nvcc/NVRTC options g++ understands the same way (-D, -U, -I); others are ignored."""
    out = []
    for opt in options or ():
        if opt.startswith(("-D", "-U", "-I")):
            out.append(opt)
    return out


def build_module(source: Path, name_expressions, build_dir: Path, options=()) -> Path:
    """Compile ``source`` (and the headers next to it) into a shared library for the emulation.

    Parameters
    ----------
    source : Path
        A ``.cu`` file; its folder's ``.cu``/``.cuh`` files are copied (see `prepare_sources`).
    name_expressions : sequence of str
        Kernel instantiations to export, as cupy's ``name_expressions``.
    build_dir : Path
        Where the copy, the generated wrapper and the library go.
    options : sequence of str
        NVRTC options; ``-D``/``-U``/``-I`` are passed on to g++, the rest ignored.

    Returns
    -------
    Path
        The shared library.  Rebuilt only when the inputs change (hash in the file name).
    """
    reason = gxx_unavailable_reason()
    if reason is not None:
        raise EmulationError(reason)
    source = Path(source).resolve()
    names = list(name_expressions)
    if not names:
        raise ValueError("name_expressions: at least one kernel instantiation is needed")
    digest = hashlib.sha256()
    for path in sorted(source.parent.iterdir()):
        if path.suffix in (".cu", ".cuh"):
            digest.update(path.name.encode() + path.read_bytes())
    for shim in SHIM_FILES:
        digest.update((SHIM_DIR / shim).read_bytes())
    extra = shlex.split(os.environ.get(EXTRA_FLAGS_ENV, ""))
    digest.update(repr((source.name, names, list(options or ()), CXX_FLAGS, extra)).encode())
    tag = digest.hexdigest()[:16]
    out_dir = Path(build_dir) / f"{source.stem}-{tag}"
    lib = out_dir / f"lib{source.stem}_emu.so"
    if lib.exists():
        return lib
    src_copy = out_dir / "src"
    prepare_sources(source.parent, src_copy)
    entries = ",\n".join(f"    CIRCFFT_EMU_ENTRY({name})" for name in names)
    wrapper = out_dir / "wrapper.cpp"
    wrapper.write_text(
        "// Generated by tests/cuda_emulation/emulator.py\n"
        '#include "emu_launch.h"\n'
        f'#include "{source.name}"\n'
        f"static const emu::Entry circfft_emu_entries[] = {{\n{entries}\n}};\n"
        "CIRCFFT_EMU_DEFINE_EXPORTS(circfft_emu_entries)\n")
    cmd = ["g++", *CXX_FLAGS, *extra, f"-I{SHIM_DIR}", f"-I{src_copy}",
           *_gxx_options(options), str(wrapper), "-o", str(lib) + ".tmp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise EmulationError(
            f"g++ failed on {source.name} for {names}:\n{' '.join(cmd)}\n{proc.stderr[-6000:]}")
    Path(str(lib) + ".tmp").replace(lib)
    return lib


# ---------------------------------------------------------------------------------------------
# Calling
# ---------------------------------------------------------------------------------------------
_CTYPE_OF_CODE = {
    "b": ctypes.c_int8, "B": ctypes.c_uint8, "h": ctypes.c_int16, "H": ctypes.c_uint16,
    "i": ctypes.c_int32, "I": ctypes.c_uint32, "q": ctypes.c_int64, "Q": ctypes.c_uint64,
    "f": ctypes.c_float, "d": ctypes.c_double, "?": ctypes.c_bool, "p": ctypes.c_void_p,
}
_INT_RANGE = {"b": (-2**7, 2**7), "B": (0, 2**8), "h": (-2**15, 2**15), "H": (0, 2**16),
              "i": (-2**31, 2**31), "I": (0, 2**32), "q": (-2**63, 2**63), "Q": (0, 2**64)}


def _dim3(value, what: str) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"{what}: 1 to 3 dimensions, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


class EmulatedKernel:
    """One kernel instantiation; call as ``kernel(grid, block, args, shared_mem=0)``."""

    def __init__(self, lib, index: int, name: str, signature: str):
        self._lib = lib
        self._index = index
        self.name = name
        self.signature = signature

    def _convert(self, code: str, value, position: int):
        if code == "X":
            raise TypeError(f"{self.name}: parameter {position} has a type the emulation "
                            "cannot pass (only pointers, integers, float, double, bool)")
        if code == "p":
            if value is None:
                return ctypes.c_void_p(None)
            if isinstance(value, np.ndarray):
                return ctypes.c_void_p(value.ctypes.data)
            if isinstance(value, (int, np.integer)):
                return ctypes.c_void_p(int(value))
            raise TypeError(f"{self.name}: parameter {position} is a pointer; pass a numpy "
                            f"array, an address or None, not {type(value).__name__}")
        if isinstance(value, np.ndarray):
            raise TypeError(f"{self.name}: parameter {position} is a scalar ({code!r}), got an "
                            "array")
        if code in _INT_RANGE:
            if isinstance(value, (float, np.floating)):
                raise TypeError(f"{self.name}: parameter {position} is an integer, got {value!r}")
            lo, hi = _INT_RANGE[code]
            if not lo <= int(value) < hi:
                raise ValueError(f"{self.name}: parameter {position} = {value} does not fit "
                                 f"its C type ({code!r})")
            return _CTYPE_OF_CODE[code](int(value))
        if code in "fd":
            return _CTYPE_OF_CODE[code](float(value))
        return _CTYPE_OF_CODE[code](bool(value))

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        args = tuple(args)
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments "
                            f"(signature {self.signature!r}), got {len(args)}")
        values = [self._convert(code, value, i)
                  for i, (code, value) in enumerate(zip(self.signature, args))]
        pointers = (ctypes.c_void_p * max(1, len(values)))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        g = (ctypes.c_uint * 3)(*_dim3(grid, "grid"))
        b = (ctypes.c_uint * 3)(*_dim3(block, "block"))
        err = ctypes.create_string_buffer(2048)
        rc = self._lib.circfft_emu_launch(self._index, g, b, ctypes.c_size_t(int(shared_mem)),
                                          pointers, err, ctypes.c_size_t(len(err)))
        if rc != 0:
            raise KernelLaunchError(f"{self.name}: {err.value.decode(errors='replace')}")


class EmulatedModule:
    """A built shared library; `get_function` mirrors cupy's ``RawModule.get_function``."""

    def __init__(self, lib_path: Path):
        self._lib = ctypes.CDLL(str(lib_path))
        self._lib.circfft_emu_count.restype = ctypes.c_int
        self._lib.circfft_emu_name.restype = ctypes.c_char_p
        self._lib.circfft_emu_name.argtypes = [ctypes.c_int]
        self._lib.circfft_emu_signature.restype = ctypes.c_char_p
        self._lib.circfft_emu_signature.argtypes = [ctypes.c_int]
        self._lib.circfft_emu_launch.restype = ctypes.c_int
        self._lib.circfft_emu_launch.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
            ctypes.c_char_p, ctypes.c_size_t]
        self._kernels = {}
        for k in range(self._lib.circfft_emu_count()):
            name = self._lib.circfft_emu_name(k).decode()
            sig = self._lib.circfft_emu_signature(k).decode()
            self._kernels[_normalise(name)] = EmulatedKernel(self._lib, k, name, sig)

    def get_function(self, name_expression: str) -> EmulatedKernel:
        try:
            return self._kernels[_normalise(name_expression)]
        except KeyError:
            raise KeyError(f"{name_expression!r} is not in this module; it has "
                           f"{sorted(k.name for k in self._kernels.values())}") from None

    @property
    def names(self) -> list[str]:
        return [k.name for k in self._kernels.values()]


def _normalise(name: str) -> str:
    """Name expressions compare without whitespace (``k<float,float>`` == ``k<float, float>``)."""
    return re.sub(r"\s+", "", name)
