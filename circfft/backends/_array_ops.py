"""Per-family array operations (numpy, torch, cupy) through which each routine is written once.

The front ends (:mod:`circfft._transforms`, :mod:`circfft._circulant`) and the generic defaults
of the backend protocol (:mod:`._base`) call these instead of a library directly, so one
implementation serves numpy arrays, torch tensors and cupy arrays.  A family's library is
imported only when an array of that family is seen (it is then in ``sys.modules`` already).
"""
from __future__ import annotations

import sys

import numpy as np

__all__ = ["ArrayOps", "array_family", "ops_for", "ops_for_family", "memory_overlaps",
           "strides_self_overlap"]


def _interface_view(ptr: int, shape, byte_strides, itemsize: int) -> np.ndarray:
    """A numpy array *describing* ``itemsize``-byte elements at the given address, shape and
    byte strides.  Nothing is read or written through it (the address may be a device
    pointer): it exists so that :func:`numpy.shares_memory` can solve the exact overlap
    problem for any array family."""
    class _Desc:
        __array_interface__ = {"data": (int(ptr), False), "shape": tuple(int(s) for s in shape),
                               "strides": tuple(int(s) for s in byte_strides),
                               "typestr": f"|V{itemsize}", "version": 3}
    return np.asarray(_Desc())


def memory_overlaps(a_desc, b_desc) -> bool:
    """Exact test: do two strided views (``(ptr, shape, byte_strides, itemsize)``) share a byte?

    Interleaved views that share no element (``x[::2]`` and ``x[1::2]``) do not overlap.
    """
    a, b = _interface_view(*a_desc), _interface_view(*b_desc)
    if a.size == 0 or b.size == 0:
        return False
    return bool(np.shares_memory(a, b))


def strides_self_overlap(shape, strides) -> bool:
    """True when distinct indices of an array of this ``shape`` and ``strides`` (any unit) may
    address the same memory, e.g. a broadcast or expanded view.  Sufficient test: sort the
    axes by stride; each must step past everything the smaller ones reach."""
    if any(n == 0 for n in shape):
        return False                    # no elements, nothing to share
    reach = 0
    for stride, size in sorted((abs(s), n) for n, s in zip(shape, strides) if n > 1):
        if stride <= reach:
            return True
        reach += stride * (size - 1)
    return False


class ArrayOps:
    """The operations one family provides; subclasses bind them to numpy, torch or cupy.

    Attributes
    ----------
    family : str
        ``"numpy"``, ``"torch"`` or ``"cupy"``.
    array_type : type
        The family's array class (``isinstance`` checks and error messages).
    kept_dtypes : tuple of str
        Real dtypes transformed in their own precision (half precision computed in float32).
    """

    family = ""
    array_type: type = object
    type_name = ""
    kept_dtypes: tuple = ()
    #: numpy.flip and cupy.flip return views; torch.flip copies.
    flip_is_view = True

    # -- dtypes ---------------------------------------------------------------------------------
    def dtype_name(self, dtype) -> str:
        return np.dtype(dtype).name

    def dtype_kind(self, dtype) -> str:
        """numpy's kind letter: ``f`` real float, ``c`` complex, ``b`` bool, ``i``/``u`` ints,
        anything else for dtypes no transform accepts."""
        return np.dtype(dtype).kind

    def dtype(self, name: str):
        return np.dtype(name)

    def promoted_int_dtype(self):
        """Result dtype of a transform of an integer array."""
        return np.dtype(np.float64)

    def size(self, a) -> int:
        return int(a.size)

    # -- memory ---------------------------------------------------------------------------------
    def describe(self, a):
        """``(address, shape, byte strides, itemsize)`` of ``a``'s elements."""
        raise NotImplementedError

    def same_view(self, a, b) -> bool:
        """True when ``a`` and ``b`` view exactly the same elements in the same order."""
        if a is b:
            return True
        if not isinstance(b, self.array_type) or not isinstance(a, self.array_type):
            return False
        return (a.dtype == b.dtype and self.device(a) == self.device(b)
                and self.describe(a) == self.describe(b))

    def self_overlap(self, a) -> bool:
        _, shape, strides, _ = self.describe(a)
        return strides_self_overlap(shape, strides)

    def overlaps(self, a, b) -> bool:
        if self.device(a) != self.device(b):
            return False
        return memory_overlaps(self.describe(a), self.describe(b))

    def writeable(self, a) -> bool:
        return True

    def can_overwrite(self, a) -> bool:
        """Whether ``overwrite_x=True`` may use ``a`` as the output buffer."""
        return self.writeable(a)

    def assign(self, out, x) -> None:
        """``out[...] = x`` (same shape; dtype converted)."""
        out[...] = x

    def mul_into(self, out, a, b) -> None:
        """``out[...] = a * b`` (broadcasting) in one pass."""
        out[...] = a * b

    def device(self, a):
        return getattr(a, "device", None)

    # -- array creation and views ---------------------------------------------------------------
    def asarray(self, x):
        return x

    def copy(self, x, dtype):
        """A new C-contiguous array holding ``x`` converted to ``dtype``."""
        raise NotImplementedError

    def empty(self, shape, dtype, like):
        raise NotImplementedError

    def zeros(self, shape, dtype, like):
        raise NotImplementedError

    def moveaxis(self, a, src, dst):
        raise NotImplementedError

    def flip_last(self, a):
        raise NotImplementedError

    def permute(self, a, axes):
        return a.transpose(axes)

    def broadcast_shapes(self, *shapes):
        return np.broadcast_shapes(*shapes)

    def arange(self, n, like):
        raise NotImplementedError

    # -- numerics -------------------------------------------------------------------------------
    def rfft_last(self, x, workers: int = 1):
        """Complex half spectrum of the real rows of ``x`` (last axis)."""
        raise NotImplementedError

    def irfft_last(self, Y, n: int, workers: int = 1):
        """Real rows of length ``n`` from half spectra, unnormalised (numpy's "forward")."""
        raise NotImplementedError

    def complex_dtype(self, dtype):
        raise NotImplementedError

    def matmul(self, a, b):
        return a @ b


class NumpyOps(ArrayOps):
    family = "numpy"
    array_type = np.ndarray
    type_name = "numpy.ndarray"
    kept_dtypes = ("float32", "float64")

    def describe(self, a):
        return (a.__array_interface__["data"][0], a.shape, a.strides, a.itemsize)

    def writeable(self, a):
        return bool(a.flags.writeable)

    def device(self, a):
        return "cpu"

    def asarray(self, x):
        return np.asarray(x)

    def mul_into(self, out, a, b):
        np.multiply(a, b, out=out)

    def copy(self, x, dtype):
        return np.array(x, dtype=dtype, order="C", copy=True)

    def empty(self, shape, dtype, like):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype, like):
        return np.zeros(shape, dtype=dtype)

    def moveaxis(self, a, src, dst):
        return np.moveaxis(a, src, dst)

    def flip_last(self, a):
        return a[..., ::-1]

    def arange(self, n, like):
        return np.arange(n)

    @property
    def fft(self):
        """``scipy.fft`` when installed (float32 kept, threads, faster), else ``numpy.fft``."""
        fft = self.__dict__.get("_fft")
        if fft is None:
            try:
                import scipy.fft as fft
            except ImportError:
                fft = np.fft
            self._fft = fft
        return fft

    def rfft_last(self, x, workers=1):
        if self.fft is np.fft:
            return np.fft.rfft(x, axis=-1)
        return self.fft.rfft(x, axis=-1, workers=workers)

    def irfft_last(self, Y, n, workers=1):
        if self.fft is np.fft:
            return np.fft.irfft(Y, n=n, axis=-1, norm="forward")
        return self.fft.irfft(Y, n=n, axis=-1, norm="forward", workers=workers)

    def complex_dtype(self, dtype):
        return np.result_type(dtype, np.complex64)


class CupyOps(NumpyOps):
    family = "cupy"
    type_name = "cupy.ndarray"
    kept_dtypes = ("float16", "float32", "float64")

    @property
    def xp(self):
        # looked up on every use (an import of a loaded module is a dict look-up), so that a
        # stand-in module installed by the tests is honoured
        import cupy

        return cupy

    @property
    def array_type(self):
        return self.xp.ndarray

    def describe(self, a):
        return (a.data.ptr, a.shape, a.strides, a.itemsize)

    def writeable(self, a):
        return True

    def device(self, a):
        return a.device

    def asarray(self, x):
        return x

    def mul_into(self, out, a, b):
        self.xp.multiply(a, b, out=out)

    def copy(self, x, dtype):
        return self.xp.array(x, dtype=dtype, order="C", copy=True)

    def empty(self, shape, dtype, like):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype, like):
        return self.xp.zeros(shape, dtype=dtype)

    def moveaxis(self, a, src, dst):
        return self.xp.moveaxis(a, src, dst)

    def arange(self, n, like):
        return self.xp.arange(n)

    def rfft_last(self, x, workers=1):
        return self.xp.fft.rfft(x, axis=-1)

    def irfft_last(self, Y, n, workers=1):
        # cupy.fft.irfft has numpy's signature; "forward" leaves the inverse unnormalised
        return self.xp.fft.irfft(Y, n=n, axis=-1, norm="forward")


class TorchOps(ArrayOps):
    family = "torch"
    type_name = "torch.Tensor"
    kept_dtypes = ("float32", "float64", "float16", "bfloat16")
    flip_is_view = False

    def __init__(self):
        import torch

        self.torch = torch
        self.array_type = torch.Tensor
        self._names = {torch.float32: "float32", torch.float64: "float64",
                       torch.float16: "float16", torch.bfloat16: "bfloat16"}

    def dtype_name(self, dtype):
        return self._names.get(dtype) or str(dtype).replace("torch.", "")

    def dtype_kind(self, dtype):
        if dtype == self.torch.bool:
            return "b"
        if dtype.is_complex:
            return "c"
        if dtype.is_floating_point:
            return "f"
        if dtype in (self.torch.uint8, self.torch.uint16, self.torch.uint32,
                     self.torch.uint64):
            return "u"
        if dtype in (self.torch.int8, self.torch.int16, self.torch.int32, self.torch.int64):
            return "i"
        return "O"                         # quantised, float8 and other special dtypes

    def dtype(self, name):
        return getattr(self.torch, name)

    def promoted_int_dtype(self):
        return self.torch.get_default_dtype()

    def size(self, a):
        return a.numel()

    def describe(self, a):
        e = a.element_size()
        return (a.data_ptr(), tuple(a.shape), tuple(s * e for s in a.stride()), e)

    def device(self, a):
        return a.device

    def can_overwrite(self, a):
        # an autograd input must stay intact for its backward
        return not (self.torch.is_grad_enabled() and a.requires_grad)

    def assign(self, out, x):
        out.copy_(x)

    def mul_into(self, out, a, b):
        self.torch.mul(a, b, out=out)

    def copy(self, x, dtype):
        return x.to(dtype=dtype, memory_format=self.torch.contiguous_format, copy=True)

    def empty(self, shape, dtype, like):
        return self.torch.empty(shape, dtype=dtype, device=like.device)

    def zeros(self, shape, dtype, like):
        return self.torch.zeros(shape, dtype=dtype, device=like.device)

    def moveaxis(self, a, src, dst):
        return a.movedim(src, dst)

    def flip_last(self, a):
        return a.flip(-1)

    def permute(self, a, axes):
        return a.permute(axes)

    def broadcast_shapes(self, *shapes):
        try:
            return tuple(self.torch.broadcast_shapes(*shapes))
        except RuntimeError as exc:
            raise ValueError(str(exc)) from None

    def arange(self, n, like):
        return self.torch.arange(n, device=like.device)

    def rfft_last(self, x, workers=1):
        return self.torch.fft.rfft(x, dim=-1)

    def irfft_last(self, Y, n, workers=1):
        return self.torch.fft.irfft(Y, n=n, dim=-1, norm="forward")

    def complex_dtype(self, dtype):
        return self.torch.complex128 if dtype == self.torch.float64 else self.torch.complex64


_CLASSES = {"numpy": NumpyOps, "torch": TorchOps, "cupy": CupyOps}


_INSTANCES: dict = {}


def ops_for_family(family: str) -> ArrayOps:
    """The (cached) operations of ``family``; imports its library on first use."""
    ops = _INSTANCES.get(family)
    if ops is None:
        ops = _INSTANCES[family] = _CLASSES[family]()
    return ops


def array_family(x) -> str:
    """``"torch"``, ``"cupy"`` or ``"numpy"`` (numpy arrays and anything array-like).

    As array-api-compat does it: a library that is not in ``sys.modules`` cannot have made
    ``x``, so the check never imports one; plain ``isinstance`` also keeps it traceable by
    ``torch.compile`` (reading ``type(x).__module__`` of an ``nn.Parameter`` is not).
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return "cupy"
    return "numpy"


def ops_for(x) -> ArrayOps:
    """The operations of ``x``'s family (numpy for anything that is not torch or cupy)."""
    return ops_for_family(array_family(x))
