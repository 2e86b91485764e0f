"""The block-circulant factorisation: one algorithm for every backend, and its reference primitives.

A kernel ``w`` of shape ``(m, n, b)`` stands for the ``m b x n b`` matrix ``C(w)`` whose block
``(o, i)`` is ``circ(w[o, i])``; the operator is ``y = post * C(w) (pre * x)`` (``C(w)^T`` with
``transpose``) on rows ``x`` of shape ``(T, d)``.  With ``X_i = rdfft(x_i)`` of every block (the
derivation is in ``docs/operators.rst``, "Gradients without saved buffers" and "One algorithm,
several executors"):

- forward: ``Y_o = sum_i W_oi X_i`` per frequency pair, ``y_o = irdfft(Y_o)``; with
  ``transpose`` ``Y_i = sum_o conj(W_oi) X_o``;
- input gradient (the adjoint): the same product with the other orientation, applied to
  ``G = rdfft(grad_y)`` (the Parseval weights of ``rdfft`` and ``irdfft`` cancel pair by pair);
- kernel gradient: ``grad_w[o, i] = irdfft(sum_t conj(IN_i) OUT_o)`` with ``IN``/``OUT`` the
  spectra on the ``d_in``/``d_out`` side (``X`` and ``G``, swapped with ``transpose``);
- ``pre``/``post`` gradients: row sums of ``x * grad_u`` and of ``grad_y * C(w) (pre x)``.

The algorithm below runs on a block of rows ``[t0, t1)`` through a *primitives* object, which
chooses where spectra live and how products are computed.  An *executor* decides how the rows
are split into blocks: the CPU splits them into cache-sized chunks, a GPU takes them all at
once (a constant number of launches per call).  :class:`ReferencePrimitives` is the plain
version (the family's FFT view of the spectra as complex arrays and one complex matmul per
frequency), used for numpy arrays, for tensors without numba or CuPy and under
``circfft.config(torch_fft=True)``, and as the generic default of every backend.
"""
from __future__ import annotations

from ._layout import pack_half_spectrum, unpack_half_spectrum

__all__ = ["Geometry", "Primitives", "ReferencePrimitives", "forward", "forward_rows",
           "backward_rows", "Gradients", "slot_count", "slots_from_packed", "packed_from_slots",
           "slot_matrices", "packed_from_slot_products"]


class Geometry:
    """Shapes of one block-circulant call.

    Attributes
    ----------
    m, n, b : int
        Kernel shape: ``m`` output (``d_out``) blocks, ``n`` input (``d_in``) blocks of length b.
    transpose : bool
        Whether the operator is ``C(w)^T``.
    nx, ny : int
        Blocks per row of the operator's input ``x`` and output ``y``.
    """

    __slots__ = ("m", "n", "b", "transpose", "nx", "ny")

    def __init__(self, w_shape, transpose: bool):
        self.m, self.n, self.b = (int(s) for s in w_shape)
        self.transpose = bool(transpose)
        self.nx, self.ny = (self.m, self.n) if self.transpose else (self.n, self.m)

    @property
    def single(self) -> bool:
        """One block on each side: a plain circulant, spectra multiply pair by pair."""
        return self.m == 1 and self.n == 1


class Primitives:
    """What the algorithm needs from a backend, on blocks of at most ``capacity`` rows.

    Spectra live in a representation the primitives choose (packed rows, frequency-major
    slots, complex arrays); the algorithm only allocates, slices and passes them on.  Rows
    are 2-d ``(t, blocks * b)``; vectors (``pre``/``post``) multiply rows element-wise.
    """

    def new_spectrum(self, rows: int, blocks: int):
        """A new spectrum for ``rows`` rows of ``blocks`` blocks (e.g. the one saved for
        backward)."""
        raise NotImplementedError

    def scratch_spectrum(self, name: str, rows: int, blocks: int):
        """Scratch for a spectrum of ``rows <= capacity`` rows, reused by later blocks."""
        return self.new_spectrum(rows, blocks)

    def scratch_rows(self, name: str, rows: int, blocks: int):
        """Compute-dtype scratch rows ``(rows, blocks * b)``, reused by later blocks."""
        raise NotImplementedError

    def vector(self, v):
        """``pre``/``post`` prepared for :meth:`mul_rows` and :meth:`product` (None stays)."""
        return v

    def spectrum_rows(self, spec, t0: int, t1: int):
        """Rows ``[t0, t1)`` of ``spec`` (a view)."""
        raise NotImplementedError

    def spectra(self, x, vec, blocks: int, out) -> None:
        """``out`` = spectrum of the rows ``vec * x`` (``x`` is not modified)."""
        raise NotImplementedError

    def kernel(self, w, transpose: bool):
        """The prepared spectrum of ``w`` mapping the ``x`` side to the ``y`` side of
        ``C(w)`` (``C(w)^T`` with ``transpose``)."""
        raise NotImplementedError

    def product(self, K, spec, out, vec) -> None:
        """Rows ``out = vec * irdfft(K spec)`` (``out`` in the caller's dtype)."""
        raise NotImplementedError

    def kernel_products(self):
        """A zeroed accumulator for :meth:`reduce`."""
        raise NotImplementedError

    def reduce(self, P, spec_in, spec_out) -> None:
        """``P[o, i] += sum over rows of conj(spec_in[:, i]) spec_out[:, o]`` per frequency."""
        raise NotImplementedError

    def kernel_grad(self, P, w):
        """``irdfft`` of the accumulated products: the gradient of ``w`` in ``w``'s dtype."""
        raise NotImplementedError

    def mul_rows(self, dst, src, vec) -> None:
        """``dst = src * vec`` (a copy when ``vec`` is None)."""
        raise NotImplementedError

    def row_dot(self, acc, a, b) -> None:
        """``acc += sum over rows of a * b`` (``acc`` a 1-d accumulator)."""
        raise NotImplementedError

    def vector_acc(self, length: int):
        """A zeroed 1-d accumulator for :meth:`row_dot`."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# The algorithm, on one block of rows
# ---------------------------------------------------------------------------------------------
def forward_rows(p: Primitives, g: Geometry, K, x, pre, post, y, spec, t0: int, t1: int):
    """Rows ``[t0, t1)`` of ``y = post * C (pre * x)``; the spectrum of ``pre * x`` goes to
    ``spec`` (the full saved spectrum) when given, else to scratch."""
    s = p.spectrum_rows(spec, t0, t1) if spec is not None else \
        p.scratch_spectrum("x", t1 - t0, g.nx)
    p.spectra(x[t0:t1], pre, g.nx, s)
    p.product(K, s, y[t0:t1], post)


class Gradients:
    """Outputs and accumulators of one backward call (shared by its blocks of rows)."""

    __slots__ = ("dx", "P", "dpre", "dpost")

    def __init__(self, p: Primitives, g: Geometry, dx, need_w: bool, need_pre: bool,
                 need_post: bool):
        self.dx = dx
        self.P = p.kernel_products() if need_w else None
        self.dpre = p.vector_acc(g.nx * g.b) if need_pre else None
        self.dpost = p.vector_acc(g.ny * g.b) if need_post else None

    def add(self, other: "Gradients") -> None:
        """Add another block's sums (rows split among threads) to these."""
        for name in ("P", "dpre", "dpost"):
            mine = getattr(self, name)
            if mine is not None:
                mine += getattr(other, name)


def backward_rows(p: Primitives, g: Geometry, Kf, Kb, gy, x, pre, post, spec,
                  out: Gradients, t0: int, t1: int) -> None:
    """Gradients of rows ``[t0, t1)``: ``out.dx`` rows, and the sums over these rows added to
    ``out.P`` (kernel), ``out.dpre``, ``out.dpost``.  ``Kf``/``Kb`` are the kernel prepared for
    the forward and the adjoint orientation; ``spec`` the saved spectrum of ``pre * x`` (None:
    recomputed from ``x``)."""
    t = t1 - t0
    G = p.scratch_spectrum("gy", t, g.ny)
    p.spectra(gy[t0:t1], post, g.ny, G)
    if spec is not None:
        U = p.spectrum_rows(spec, t0, t1)
    else:
        U = p.scratch_spectrum("x", t, g.nx)
        p.spectra(x[t0:t1], pre, g.nx, U)
    if out.dpost is not None:                   # d post = sum_t grad_y * C (pre x)
        yp = p.scratch_rows("y", t, g.ny)
        p.product(Kf, U, yp, None)
        p.row_dot(out.dpost, yp, gy[t0:t1])
    if out.P is not None:
        spec_in, spec_out = (G, U) if g.transpose else (U, G)
        p.reduce(out.P, spec_in, spec_out)
    if out.dx is not None or out.dpre is not None:
        if pre is None and out.dx is not None:
            du = out.dx[t0:t1]
            p.product(Kb, G, du, None)
        else:
            du = p.scratch_rows("dx", t, g.nx)
            p.product(Kb, G, du, None)
            if out.dpre is not None:
                p.row_dot(out.dpre, x[t0:t1], du)
            if out.dx is not None:
                p.mul_rows(out.dx[t0:t1], du, pre)


def forward(backend, w, x, pre, post, transpose):
    """``post * C(w) (pre * x)`` on all rows of the 2-d ``x`` at once, no autograd (the
    default of :meth:`circfft.backends.Backend.block_circulant`)."""
    g = Geometry(w.shape, transpose)
    ops = backend.ops
    T = int(x.shape[0])
    p = backend.bc_primitives(g, x.dtype, x)
    y = ops.empty((T, g.ny * g.b), x.dtype, x)
    if T:
        forward_rows(p, g, p.kernel(w, transpose), x, p.vector(pre), p.vector(post), y, None,
                     0, T)
    return y


# ---------------------------------------------------------------------------------------------
# The slot layout: packed spectra of many blocks, frequency-major, for real batched matmuls
# ---------------------------------------------------------------------------------------------
# For rows of ``nb`` blocks of length ``b`` the packed spectra are stored as ``slots[S, t, 2 nb]``
# with ``S = ceil(b/2)``: slot ``k >= 1`` holds ``[Re X_k of every block, Im X_k of every
# block]``; slot 0 holds ``[X_0, X_{b/2}]`` (both real; zeros for odd ``b``).  The product of
# every frequency is then one real matmul ``slots[k] @ M[k]`` whose 2 x 2 block structure
# ``[[Wr, Wi], [-Wi, Wr]]`` is the complex product, and the buffer has exactly the size of the
# packed rows for even ``b``.  These are the reference maps; the CPU executor runs compiled
# versions of the same maps (numba), checked against these.
def slot_count(b: int) -> int:
    """Frequency slots of the slot layout: ``ceil(b / 2)``."""
    return (b + 1) // 2


def slots_from_packed(H, out, ops) -> None:
    """Packed rows ``H`` (t, nb, b) -> slots ``out`` (S, t, 2 nb)."""
    t, nb, b = (int(s) for s in H.shape)
    ni = (b - 1) // 2
    out[0, :, :nb] = H[:, :, 0]
    if b % 2 == 0 and b > 1:
        out[0, :, nb:] = H[:, :, b // 2]
    else:
        out[0, :, nb:] = 0
    if ni:
        out[1:, :, :nb] = ops.permute(H[:, :, 1: ni + 1], (2, 0, 1))
        out[1:, :, nb:] = ops.permute(ops.flip_last(H[:, :, b - ni:]), (2, 0, 1))


def packed_from_slots(src, H, ops) -> None:
    """Slots ``src`` (S, t, 2 nb) -> packed rows ``H`` (t, nb, b); inverse of
    `slots_from_packed`."""
    t, nb, b = (int(s) for s in H.shape)
    ni = (b - 1) // 2
    H[:, :, 0] = src[0, :, :nb]
    if b % 2 == 0 and b > 1:
        H[:, :, b // 2] = src[0, :, nb:]
    if ni:
        H[:, :, 1: ni + 1] = ops.permute(src[1:, :, :nb], (1, 2, 0))
        H[:, :, b - ni:] = ops.flip_last(ops.permute(src[1:, :, nb:], (1, 2, 0)))


def slot_matrices(Wp, ops):
    """``(S, 2n, 2m)`` real matrices of the packed kernel spectrum ``Wp`` (m, n, b).

    Row-vector convention: a slot row ``[Xr, Xi]`` of the ``n`` input blocks times
    ``M[k]`` gives ``[Yr, Yi]`` of the ``m`` output blocks, ``Y = W X`` per frequency; the
    transposed operator uses ``M[k]^T``.
    """
    m, n, b = (int(s) for s in Wp.shape)
    S, ni = slot_count(b), (b - 1) // 2
    P = ops.permute(Wp, (2, 1, 0))                      # (b, n, m): P[k] = W[:, :, k]^T
    big = ops.zeros((S, 2 * n, 2 * m), Wp.dtype, Wp)
    big[0, :n, :m] = P[0]
    if b % 2 == 0 and b > 1:
        big[0, n:, m:] = P[b // 2]
    if ni:
        wr = P[1: ni + 1]
        wi = ops.permute(ops.flip_last(ops.permute(P[b - ni:], (1, 2, 0))), (2, 0, 1))
        big[1:, :n, :m] = wr
        big[1:, :n, m:] = wi
        big[1:, n:, :m] = -wi
        big[1:, n:, m:] = wr
    return big


def packed_from_slot_products(P, m: int, n: int, b: int, ops):
    """Packed ``sum_t conj(IN_i) OUT_o`` (m, n, b) from the slot products
    ``P[k] = OUT_k^T IN_k`` (S, 2m, 2n) accumulated by the slot layout."""
    ni = (b - 1) // 2
    dW = ops.zeros((m, n, b), P.dtype, P)
    dW[:, :, 0] = P[0, :m, :n]
    if b % 2 == 0 and b > 1:
        dW[:, :, b // 2] = P[0, m:, n:]
    if ni:
        re = P[1:, :m, :n] + P[1:, m:, n:]                 # (ni, m, n)
        im = P[1:, m:, :n] - P[1:, :m, n:]
        dW[:, :, 1: ni + 1] = ops.permute(re, (1, 2, 0))
        dW[:, :, b - ni:] = ops.flip_last(ops.permute(im, (1, 2, 0)))
    return dW


# ---------------------------------------------------------------------------------------------
# Reference primitives: complex spectra, one complex matmul per frequency
# ---------------------------------------------------------------------------------------------
class ReferencePrimitives(Primitives):
    """Spectra as complex arrays ``(t, blocks, b//2 + 1)`` computed by the backend's own
    transform, products as one complex matmul per frequency; works for any array family.

    Parameters
    ----------
    backend : Backend
        Supplies ``execute`` (the packed transform) and ``ops`` (the family's operations).
    geometry : Geometry
    dtype
        The caller's dtype; arithmetic is in its compute dtype (float32 for half precision).
    like
        An array on the device to allocate on.
    """

    def __init__(self, backend, geometry: Geometry, dtype, like):
        self.be, self.g, self.ops, self.like = backend, geometry, backend.ops, like
        name = self.ops.dtype_name(dtype)
        self.cd = self.ops.dtype("float32") if name in ("float16", "bfloat16") else dtype

    def _packed(self, a, blocks):
        """Packed spectra ``(t, blocks, b)`` of rows ``a``, in a new compute-dtype array."""
        t, b = int(a.shape[0]), self.g.b
        buf = self.ops.copy(a, self.cd).reshape(t, blocks, b)
        if t:
            self.be.execute(buf, forward=True, scale=1.0, workers=1)
        return buf

    def new_spectrum(self, rows, blocks):
        F = self.g.b // 2 + 1
        return self.ops.empty((rows, blocks, F), self.ops.complex_dtype(self.cd), self.like)

    def spectrum_rows(self, spec, t0, t1):
        return spec[t0:t1]

    def spectra(self, x, vec, blocks, out):
        u = x if vec is None else x * vec
        out[...] = unpack_half_spectrum(self._packed(u, blocks), self.ops)

    def kernel(self, w, transpose):
        m, n, b = self.g.m, self.g.n, self.g.b
        W = unpack_half_spectrum(self._packed(w.reshape(m, n * b), n), self.ops)   # (m, n, F)
        # as (F, nx, ny) matrices multiplying row vectors of the x-side spectra
        return self.ops.permute(W.conj(), (2, 0, 1)) if transpose else \
            self.ops.permute(W, (2, 1, 0))

    def product(self, K, spec, out, vec):
        t, b = int(spec.shape[0]), self.g.b
        Y = self.ops.permute(self.ops.matmul(self.ops.permute(spec, (2, 0, 1)), K), (1, 2, 0))
        blocks = int(Y.shape[1])
        rows = self.ops.empty((t, blocks, b), self.cd, self.like)
        pack_half_spectrum(Y, b, rows, 1.0, self.ops)
        if t:
            self.be.execute(rows, forward=False, scale=1.0 / b, workers=1)
        rows = rows.reshape(t, blocks * b)
        self.ops.assign(out, rows if vec is None else rows * vec)

    def kernel_products(self):
        F = self.g.b // 2 + 1
        return self.ops.zeros((F, self.g.m, self.g.n), self.ops.complex_dtype(self.cd),
                              self.like)

    def reduce(self, P, spec_in, spec_out):
        # P[f, o, i] += sum_t spec_out[t, o, f] conj(spec_in[t, i, f])
        P += self.ops.matmul(self.ops.permute(spec_out, (2, 1, 0)),
                             self.ops.permute(spec_in.conj(), (2, 0, 1)))

    def kernel_grad(self, P, w):
        m, n, b = self.g.m, self.g.n, self.g.b
        dW = self.ops.empty((m, n, b), self.cd, self.like)
        pack_half_spectrum(self.ops.permute(P, (1, 2, 0)), b, dW, 1.0, self.ops)
        self.be.execute(dW, forward=False, scale=1.0 / b, workers=1)
        return self.ops.copy(dW, w.dtype)

    def scratch_rows(self, name, rows, blocks):
        return self.ops.empty((rows, blocks * self.g.b), self.cd, self.like)

    def mul_rows(self, dst, src, vec):
        self.ops.assign(dst, src if vec is None else src * vec)

    def row_dot(self, acc, a, b):
        acc += (a * b).sum(0)

    def vector_acc(self, length):
        return self.ops.zeros((length,), self.cd, self.like)
