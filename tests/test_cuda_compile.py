"""Compile every CUDA kernel instantiation with ``nvcc --ptx`` (no GPU needed).

For each source, a small translation unit includes it and takes the address of every name
expression that :func:`circfft.backends._cuda_build.kernel_instantiations` lists (which
instantiates the template exactly as CuPy's ``name_expressions`` would), compiles it to PTX
for sm_80 and sm_90, and checks that nvcc succeeded and that each kernel's mangled entry is in
the PTX.  Skipped where nvcc is not installed (failed under ``CI=true``).
"""
from __future__ import annotations

import re
import subprocess

import pytest

from circfft.backends._cuda_build import kernel_instantiations
from circfft.backends._cuda_build import CUDA_DIR, STORAGE_TYPES

# Skipped without nvcc, failed under CI=true (conftest.py handles the cuda_compile marker).
pytestmark = [pytest.mark.cuda_compile, pytest.mark.usefixtures("nvcc")]

ARCHS = ("sm_80", "sm_90")
SOURCES = sorted({src for src, _, _ in kernel_instantiations()})

#: Itanium mangling of the template arguments the instantiations use.
_MANGLED_TYPE = {"float": "f", "double": "d", "__half": "6__half",
                 "__nv_bfloat16": "13__nv_bfloat16"}


def mangled_prefix(expr: str) -> str:
    """``rdfft_rows<float, float>`` -> ``_Z10rdfft_rowsIffE`` (what its PTX entry starts with)."""
    m = re.fullmatch(r"(\w+)<(.*)>", expr)
    name, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
    return f"_Z{len(name)}{name}I{''.join(_MANGLED_TYPE[a] for a in args)}E"


def test_instantiation_list_is_complete():
    items = kernel_instantiations()
    assert len(items) == len({(e, o) for _, e, o in items})
    exprs = [e for _, e, _ in items]
    # half-precision headers only where a half type is instantiated
    for _, e, o in items:
        assert "-DCIRCFFT_WITH_HALF" in o or "__half" not in e
        assert "-DCIRCFFT_WITH_BF16" in o or "__nv_bfloat16" not in e
        if e.startswith(("rdfft_rows<float,", "rdfft_rows<double,")):
            assert not any(opt.startswith("-D") for opt in o), (e, o)
    assert {src for src, _, _ in kernel_instantiations()} == {"rdfft.cu", "circulant.cu"}
    for storage, compute in STORAGE_TYPES.values():
        assert f"rdfft_rows<{storage}, {compute}>" in exprs
        assert f"spectral_mul<{storage}, {compute}>" in exprs
    assert "rdfft_tail<float>" in exprs and "rdfft_tail<double>" in exprs
    assert mangled_prefix("rdfft_rows<__half, float>") == "_Z10rdfft_rowsI6__halffE"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES)
def test_nvcc_ptx(source, arch, tmp_path, nvcc):
    # One translation unit per set of options, as the backend builds one module per
    # (source, storage dtype): the float32/float64 modules must build without the half headers.
    groups = {}
    for src, expr, opts in kernel_instantiations():
        if src == source:
            groups.setdefault(tuple(opts), []).append(expr)
    assert len(groups) >= 3
    for k, (options, exprs) in enumerate(groups.items()):
        refs = ",\n    ".join(f"(const void*)&{expr}" for expr in exprs)
        tu = tmp_path / f"instantiate_{k}_{source}"
        tu.write_text(f'#include "{CUDA_DIR / source}"\n'
                      f"const void* circfft_instances[] = {{\n    {refs}\n}};\n")
        ptx = tmp_path / f"{source}.{k}.{arch}.ptx"
        proc = subprocess.run([nvcc, "--ptx", f"-arch={arch}", *options, str(tu), "-o",
                               str(ptx)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"nvcc failed for {source} {options} ({arch}):\n" \
                                     f"{proc.stderr}"
        assert "warning" not in proc.stderr.lower(), proc.stderr
        entries = re.findall(r"\.entry\s+(\w+)", ptx.read_text())
        for expr in exprs:
            prefix = mangled_prefix(expr)
            assert any(e.startswith(prefix) for e in entries), (expr, prefix, entries)
        assert len(entries) == len(exprs)
