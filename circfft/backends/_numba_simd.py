"""Explicit SIMD for the numba kernels: a lane-vector type, loads, stores, arithmetic, transposes.

A :class:`LaneVector` is ``LANE_BYTES`` of float32 or float64 lanes held as one LLVM vector
value (``<16 x float>`` or ``<8 x double>``).  The kernels work on ``V`` rows at once, one row
per lane, and write every butterfly as a handful of whole-vector operations, so the code LLVM
gets is vector code whatever its vectorisers would decide: loads and stores are explicit (no
alias analysis is needed, so stages may work in place), and the width is fixed by the type
(one register on AVX-512 targets, two on AVX2, four on SSE).  Lane vectors only live inside
compiled code; they never reach Python.

Arithmetic: ``+``, ``-``, ``*`` between lane vectors, or a lane vector and a scalar (the scalar
is broadcast), and unary ``-``, all with the ``contract`` fast-math flag (fused multiply-adds).
"""
from __future__ import annotations

import operator

from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic, lower_builtin, models, register_model
from numba.core.typing.templates import AbstractTemplate, infer_global, signature

__all__ = ["LANE_BYTES", "LaneVector", "alternate", "at", "detach", "lane_count", "lane_dft_dif",
           "lane_dft_dit", "peek", "poke", "prefetch_rows", "transpose_gather", "transpose_lanes",
           "transpose_scatter", "vreverse",
           "vload", "vload_at", "vsplat", "vstore", "vstore_at"]

#: Bytes of one lane vector: 16 float32 or 8 float64 lanes.  The kernels are written for this
#: width only (``numba_backend`` checks that its scratch is sized for it).
LANE_BYTES = 64
_FAST = ("contract",)


class LaneVector(types.Type):
    """``LANE_BYTES`` of ``dtype`` lanes in one SIMD value."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.lanes = LANE_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"LaneVector({dtype} x {self.lanes})")


_VECTORS = {types.float32: LaneVector(types.float32), types.float64: LaneVector(types.float64)}


@register_model(LaneVector)
class _LaneVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elt = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elt, fe_type.lanes))


def _vector_of(ty):
    """The lane-vector type of an array's (or a float scalar type's) dtype, else None."""
    dtype = ty.dtype if isinstance(ty, types.Array) else ty
    return _VECTORS.get(dtype)


def _data_ptr(context, builder, arrty, arr):
    return context.make_array(arrty)(context, builder, arr).data


def _byte_ptr(context, builder, ty, value, offset, elt_ptr_type):
    """Pointer to ``offset`` bytes past an array's data (or past an integer address)."""
    i8p = ir.IntType(8).as_pointer()
    if isinstance(ty, types.Array):
        base = builder.bitcast(_data_ptr(context, builder, ty, value), i8p)
    else:
        base = builder.inttoptr(value, i8p)
    return builder.bitcast(builder.gep(base, [offset]), elt_ptr_type)


@intrinsic
def lane_count(typingctx, arr):
    """Lanes of the vectors of ``arr``'s dtype (a compile-time constant)."""
    vt = _vector_of(arr)
    if vt is None or not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, vt.lanes)
    return types.intp(arr), codegen


@intrinsic
def at(typingctx, arr, index):
    """``arr[index]`` of a 1-d contiguous array, without wraparound of negative indices."""
    if not (isinstance(arr, types.Array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        a, i = args
        i = context.cast(builder, i, sig.args[1], types.intp)
        return builder.load(builder.gep(_data_ptr(context, builder, sig.args[0], a), [i]))
    return arr.dtype(arr, index), codegen


@intrinsic
def vload(typingctx, arr, index):
    """The lane vector of ``arr`` (1-d, contiguous) starting at element ``index``."""
    vt = _vector_of(arr)
    if vt is None or not isinstance(arr, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        a, i = args
        i = context.cast(builder, i, sig.args[1], types.intp)
        ptr = builder.gep(_data_ptr(context, builder, sig.args[0], a), [i])
        vty = context.get_value_type(vt)
        return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=vt.dtype.bitwidth // 8)
    return vt(arr, index), codegen


@intrinsic
def vstore(typingctx, arr, index, value):
    """Store lane vector ``value`` into ``arr`` (1-d, contiguous) from element ``index``."""
    vt = _vector_of(arr)
    if (vt is None or not isinstance(arr, types.Array) or value != vt
            or not isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        a, i, v = args
        i = context.cast(builder, i, sig.args[1], types.intp)
        ptr = builder.gep(_data_ptr(context, builder, sig.args[0], a), [i])
        builder.store(v, builder.bitcast(ptr, v.type.as_pointer()), align=vt.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(arr, index, value), codegen


@intrinsic
def vload_at(typingctx, address, like):
    """The lane vector (of ``like``'s dtype) at byte ``address``; no alignment needed."""
    vt = _vector_of(like)
    if vt is None or not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(vt)
        ptr = _byte_ptr(context, builder, types.intp, args[0], ir.Constant(ir.IntType(64), 0),
                        vty.as_pointer())
        return builder.load(ptr, align=vt.dtype.bitwidth // 8)
    return vt(address, like), codegen


@intrinsic
def vstore_at(typingctx, address, value):
    """Store lane vector ``value`` at byte ``address``; no alignment needed."""
    if not isinstance(value, LaneVector) or not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[1]
        ptr = _byte_ptr(context, builder, types.intp, args[0], ir.Constant(ir.IntType(64), 0),
                        v.type.as_pointer())
        builder.store(v, ptr, align=value.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(address, value), codegen


@intrinsic
def peek(typingctx, address, like):
    """The element (of ``like``'s dtype) at byte ``address``."""
    if not (isinstance(like, types.Array) and isinstance(address, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        elt = context.get_value_type(like.dtype)
        ptr = _byte_ptr(context, builder, types.intp, args[0], ir.Constant(ir.IntType(64), 0),
                        elt.as_pointer())
        return builder.load(ptr)
    return like.dtype(address, like), codegen


@intrinsic
def poke(typingctx, address, value):
    """Store the float ``value`` at byte ``address``."""
    if not (isinstance(value, types.Float) and isinstance(address, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v = args[1]
        ptr = _byte_ptr(context, builder, types.intp, args[0], ir.Constant(ir.IntType(64), 0),
                        v.type.as_pointer())
        builder.store(v, ptr)
        return context.get_dummy_value()
    return types.void(address, value), codegen


def _splat(context, builder, vt, scalar, scalar_type):
    scalar = context.cast(builder, scalar, scalar_type, vt.dtype)
    vty = context.get_value_type(vt)
    one = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar,
                                 ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vt.lanes),
                                              [0] * vt.lanes))


@intrinsic
def alternate(typingctx, like, even, odd):
    """A lane vector of ``like``'s dtype: ``even`` in the even lanes, ``odd`` in the odd."""
    vt = _vector_of(like)
    if vt is None or not all(isinstance(t, (types.Float, types.Integer)) for t in (even, odd)):
        return None

    def codegen(context, builder, sig, args):
        v = ir.Constant(context.get_value_type(vt), ir.Undefined)
        e = context.cast(builder, args[1], sig.args[1], vt.dtype)
        o = context.cast(builder, args[2], sig.args[2], vt.dtype)
        for i in range(vt.lanes):
            v = builder.insert_element(v, o if i % 2 else e, ir.Constant(ir.IntType(32), i))
        return v
    return vt(like, even, odd), codegen


@intrinsic
def vsplat(typingctx, like, scalar):
    """A lane vector of ``like``'s dtype (an array) with every lane equal to ``scalar``."""
    vt = _vector_of(like)
    if vt is None or not isinstance(scalar, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return _splat(context, builder, vt, args[1], sig.args[1])
    return vt(like, scalar), codegen


def _zip_masks(B):
    """Shuffle masks interleaving the low (high) halves of two B-element vectors."""
    lo = [i // 2 + (B if i % 2 else 0) for i in range(B)]
    return lo, [v + B // 2 for v in lo]


def _transpose_rows(builder, rows):
    """The B x B transpose of B row vectors: log2(B) rounds of zips (pairing rows i and
    i + B/2 into rows 2i and 2i+1 rotates the (row, column) index bits by one)."""
    B = len(rows)
    lo, hi = (ir.Constant(ir.VectorType(ir.IntType(32), B), m) for m in _zip_masks(B))
    h = B // 2
    for _ in range(B.bit_length() - 1):
        rows = [builder.shuffle_vector(rows[i // 2], rows[i // 2 + h], hi if i % 2 else lo)
                for i in range(B)]
    return rows


def _side_ok(side, arr):
    return (isinstance(side, types.Integer)
            or (isinstance(side, types.Array) and side.dtype == arr.dtype))


def _tile_codegen(arr, src_row, dst_row, mul=None):
    """Codegen of a B x B tile transpose: ``src_row(context, builder, args, i)`` gives the
    pointer to source row i (or None to repeat the previous one), ``dst_row(..., j)`` the
    pointer to destination row j and whether to store it (an i1 or None for always)."""
    def codegen(context, builder, signature, args):
        vt = _VECTORS[arr.dtype]
        align = vt.dtype.bitwidth // 8
        vty = context.get_value_type(vt)
        rows = [builder.load(src_row(context, builder, signature, args, i, vty.as_pointer()),
                             align=align) for i in range(vt.lanes)]
        rows = _transpose_rows(builder, rows)
        factor = None if mul is None else args[mul]
        for j, v in enumerate(rows):
            ptr, cond = dst_row(context, builder, signature, args, j, vty.as_pointer())
            if factor is not None:
                v = builder.fmul(v, factor, flags=_FAST)
            if cond is None:
                builder.store(v, ptr, align=align)
            else:
                with builder.if_then(cond, likely=True):
                    builder.store(v, ptr, align=align)
        return context.get_dummy_value()
    return codegen


def _strided_row(base, off, step, count, clamp):
    """Row k at byte ``off + k * step`` past argument ``base``; rows k >= ``count`` repeat
    the last one (``clamp``, sources) or are skipped (destinations)."""
    def row(context, builder, signature, args, k, ptr_type):
        idx = ir.IntType(64)
        ck = ir.Constant(idx, k)
        inside = builder.icmp_signed("<", ck, args[count])
        if clamp:
            ck = builder.select(inside, ck, builder.sub(args[count], ir.Constant(idx, 1)))
        o = builder.add(args[off], builder.mul(args[step], ck))
        ptr = _byte_ptr(context, builder, signature.args[base], args[base], o, ptr_type)
        return ptr if clamp else (ptr, inside)
    return row


def _indexed_row(base, offs):
    """Row k at byte ``offs[k]`` past argument ``base`` (``offs`` an int64 array)."""
    def row(context, builder, signature, args, k, ptr_type):
        table = _data_ptr(context, builder, signature.args[offs], args[offs])
        o = builder.load(builder.gep(table, [ir.Constant(ir.IntType(64), k)]))
        ptr = _byte_ptr(context, builder, signature.args[base], args[base], o, ptr_type)
        return ptr
    return row


@intrinsic
def prefetch_rows(typingctx, src, offs):
    """Prefetch (for reading) the B rows at bytes ``offs[i]`` past the array ``src``."""
    if not (isinstance(src, types.Array) and src.dtype in _VECTORS
            and isinstance(offs, types.Array) and offs.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, ir.IntType(32),
                                                            ir.IntType(32), ir.IntType(32)]),
            "llvm.prefetch.p0i8")
        row = _indexed_row(0, 1)
        for i in range(_VECTORS[src.dtype].lanes):
            ptr = row(context, builder, sig, args, i, i8p)
            builder.call(fn, [ptr, ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 3),
                              ir.Constant(ir.IntType(32), 1)])
        return context.get_dummy_value()
    return types.void(src, offs), codegen


@intrinsic
def transpose_lanes(typingctx, src, s_off, s_step, s_rows, dst, d_off, d_step, d_rows):
    """Transpose one B x B tile, B = ``LANE_BYTES`` of elements (16 float32, 8 float64), in
    registers: element j of source row i (B contiguous elements at byte ``s_off + i*s_step``
    past ``src``) goes to element i of destination row j (byte ``d_off + j*d_step`` past
    ``dst``).  ``src`` and ``dst`` are arrays or integer addresses (at least one an array,
    which gives the dtype).  Only source rows ``i < s_rows`` are read (later ones repeat row
    ``s_rows - 1``) and only destination rows ``j < d_rows`` are written, so a tile may
    overhang the last row of a matrix; rows need no alignment."""
    arr = src if isinstance(src, types.Array) else dst
    if not (isinstance(arr, types.Array) and arr.dtype in _VECTORS
            and _side_ok(src, arr) and _side_ok(dst, arr)):
        return None
    sig = types.void(src, types.intp, types.intp, types.intp,
                     dst, types.intp, types.intp, types.intp)
    src_row = _strided_row(0, 1, 2, 3, clamp=True)
    dst_row = _strided_row(4, 5, 6, 7, clamp=False)
    return sig, _tile_codegen(arr, src_row, dst_row)


@intrinsic
def transpose_gather(typingctx, src, s_offs, dst, d_off, d_step, d_rows, mul):
    """``transpose_lanes`` with source row i at byte ``s_offs[i]`` past the array ``src``
    (``s_offs``: int64, B entries) and every destination row multiplied by the lane vector
    ``mul`` before it is stored."""
    if not (isinstance(src, types.Array) and src.dtype in _VECTORS and _side_ok(dst, src)
            and isinstance(s_offs, types.Array) and s_offs.dtype == types.int64
            and mul == _VECTORS[src.dtype]):
        return None
    sig = types.void(src, s_offs, dst, types.intp, types.intp, types.intp, mul)
    return sig, _tile_codegen(src, _indexed_row(0, 1), _strided_row(2, 3, 4, 5, clamp=False),
                              mul=6)


@intrinsic
def transpose_scatter(typingctx, src, s_off, s_step, s_rows, dst, d_offs):
    """``transpose_lanes`` with destination row j at byte ``d_offs[j]`` past the array
    ``dst`` (``d_offs``: int64, B entries); every destination row is written."""
    if not (isinstance(dst, types.Array) and dst.dtype in _VECTORS and _side_ok(src, dst)
            and isinstance(d_offs, types.Array) and d_offs.dtype == types.int64):
        return None
    sig = types.void(src, types.intp, types.intp, types.intp, dst, d_offs)
    indexed = _indexed_row(4, 5)
    return sig, _tile_codegen(dst, _strided_row(0, 1, 2, 3, clamp=True),
                              lambda *a: (indexed(*a), None))


# -- arithmetic: vector op vector, vector op scalar, scalar op vector ---------------------------
def _operand(context, builder, vt, value, ty):
    return value if isinstance(ty, LaneVector) else _splat(context, builder, vt, value, ty)


def _register_binop(op, instr):
    @infer_global(op)
    class _Typer(AbstractTemplate):
        def generic(self, args, kws):
            if len(args) != 2 or kws:
                return None
            a, b = args
            vt = a if isinstance(a, LaneVector) else b if isinstance(b, LaneVector) else None
            if vt is None:
                return None
            for t in (a, b):
                if t != vt and not isinstance(t, (types.Float, types.Integer)):
                    return None
            return signature(vt, a, b)

    def lower(context, builder, sig, args):
        vt = sig.return_type
        x = _operand(context, builder, vt, args[0], sig.args[0])
        y = _operand(context, builder, vt, args[1], sig.args[1])
        return getattr(builder, instr)(x, y, flags=_FAST)

    for a, b in ((LaneVector, LaneVector), (LaneVector, types.Number),
                 (types.Number, LaneVector)):
        lower_builtin(op, a, b)(lower)


for _op, _instr in ((operator.add, "fadd"), (operator.sub, "fsub"), (operator.mul, "fmul")):
    _register_binop(_op, _instr)


@infer_global(operator.neg)
class _NegTyper(AbstractTemplate):
    def generic(self, args, kws):
        if len(args) == 1 and not kws and isinstance(args[0], LaneVector):
            return signature(args[0], args[0])
        return None


@lower_builtin(operator.neg, LaneVector)
def _lower_neg(context, builder, sig, args):
    return builder.fneg(args[0], flags=_FAST)


@intrinsic
def detach(typingctx, arr):
    """``arr`` without its reference to the memory's owner (a view numba does not count
    references to).  Handing arrays to the kernels' helper functions otherwise costs an
    atomic increment and decrement of the owner's count per call, and threads working on
    views of one buffer (or on the shared plan tables) then contend for that count's cache
    line: at n = 64 two workers were no faster than one.  The caller keeps ``arr`` alive."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        out = context.make_array(sig.return_type)(context, builder)
        for field in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(out, field, getattr(ary, field))
        return out._getvalue()
    return arr(arr), codegen


def _shuffle(builder, v, mask):
    idx = ir.Constant(ir.VectorType(ir.IntType(32), len(mask)), list(mask))
    return builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), idx)


@intrinsic
def vreverse(typingctx, v):
    """Lane vector ``v`` with its lanes in reverse order."""
    if not isinstance(v, LaneVector):
        return None

    def codegen(context, builder, sig, args):
        return _shuffle(builder, args[0], range(v.lanes - 1, -1, -1))
    return v(v), codegen


def _lane_dft(dit):
    """Codegen of a DFT across the lanes of (re, im): decimation in frequency (natural order
    in, bit-reversed out) or in time (bit-reversed in, natural out).  Stage of half-span h:
    lane l and its partner l ^ h give P + s v (s = +1 where bit h of l is clear, -1 where it
    is set: the sum and the difference of the pair), the lanes with bit h set multiplied by
    W_2h^(l mod h): after the butterfly (DIF), before it (DIT)."""
    import cmath

    def generic(typingctx, re, im):
        if not isinstance(re, LaneVector) or im != re:
            return None
        tup = types.UniTuple(re, 2)

        def codegen(context, builder, sig, args):
            vr, vi = args
            B = re.lanes
            elt = context.get_value_type(re.dtype)

            def const(values):
                return ir.Constant(ir.VectorType(elt, B), [float(c) for c in values])

            def twiddle(vr, vi, h):
                w = [1.0 if not (l & h) else cmath.exp(-2j * cmath.pi * (l % h) / (2 * h))
                     for l in range(B)]
                if h == 1:
                    return vr, vi
                c, d = const([z.real for z in w]), const([z.imag for z in w])
                return (builder.fsub(builder.fmul(vr, c, flags=_FAST),
                                     builder.fmul(vi, d, flags=_FAST), flags=_FAST),
                        builder.fadd(builder.fmul(vr, d, flags=_FAST),
                                     builder.fmul(vi, c, flags=_FAST), flags=_FAST))

            def butterfly(vr, vi, h):
                perm = [l ^ h for l in range(B)]
                s = const([1.0 if not (l & h) else -1.0 for l in range(B)])
                return tuple(builder.fadd(_shuffle(builder, v, perm),
                                          builder.fmul(s, v, flags=_FAST), flags=_FAST)
                             for v in (vr, vi))

            spans = [1 << i for i in range(B.bit_length() - 1)]
            for h in (spans if dit else spans[::-1]):
                if dit:
                    vr, vi = butterfly(*twiddle(vr, vi, h), h)
                else:
                    vr, vi = twiddle(*butterfly(vr, vi, h), h)
            return context.make_tuple(builder, sig.return_type, (vr, vi))
        return tup(re, im), codegen
    return generic


lane_dft_dif = intrinsic(_lane_dft(False))
lane_dft_dif.__doc__ = """(re, im) -> DFT across the lanes, lane l holding output bitrev(l)."""
lane_dft_dit = intrinsic(_lane_dft(True))
lane_dft_dit.__doc__ = """(re, im) with input bitrev(l) in lane l -> DFT across the lanes."""
