"""``save_input=True`` of block_circulant_matmul / circulant_diagonal_matmul (circfft.nn).

The mode must give the same results and gradients as the default (which saves the packed
spectrum of the input) while saving no new activation-sized tensor: only ``x`` itself.
"""
from __future__ import annotations

import pytest

from conftest import require

torch = require("torch")

from circfft.nn import functional as F  # noqa: E402
from _autograd_spy import saved_tensors  # noqa: E402

# (kernel shape, transpose): several blocks, one block (the packed-rows path), odd b, b = 1
CASES = [((2, 3, 4), False), ((2, 3, 4), True), ((1, 1, 16), False), ((1, 1, 9), True),
         ((3, 2, 5), False), ((2, 2, 1), False), ((4, 6, 64), False)]


def _inputs(shape, transpose, tokens=(3, 70), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    m, n, b = shape
    d_x = (m if transpose else n) * b
    w = torch.randn(shape, generator=g, dtype=dtype)
    x = torch.randn(*tokens, d_x, generator=g, dtype=dtype)
    a = torch.randn(m * b, generator=g, dtype=dtype)
    gd = torch.randn(n * b, generator=g, dtype=dtype)
    return w, x, a, gd


def _run(fn, tensors, save_input):
    leaves = [t.clone().requires_grad_() for t in tensors]
    y = fn(*leaves, save_input=save_input)
    gy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(9))
    (y * gy).sum().backward()
    return y.detach(), [t.grad for t in leaves]


def _bc(w, x, *, save_input, transpose):
    return F.block_circulant_matmul(w, x, transpose=transpose, save_input=save_input)


def _cd(a, w, g, x, *, save_input, transpose):
    return F.circulant_diagonal_matmul(a, w, g, x, transpose=transpose, save_input=save_input)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape,transpose", CASES, ids=str)
def test_same_results_and_gradients(shape, transpose, dtype):
    w, x, a, g = _inputs(shape, transpose, dtype=dtype)
    for fn, args in ((_bc, (w, x)), (_cd, (a, w, g, x))):
        def call(*t, save_input):
            return fn(*t, save_input=save_input, transpose=transpose)

        y0, g0 = _run(call, args, False)
        y1, g1 = _run(call, args, True)
        # The same arithmetic on the same chunks (the spectrum is recomputed, not
        # approximated): results agree exactly.
        assert torch.equal(y0, y1)
        for a0, a1 in zip(g0, g1):
            assert torch.equal(a0, a1)


@pytest.mark.parametrize("torch_fft", [False, True], ids=["numba-views", "torch-fft"])
def test_multichunk_and_torch_fft_path(torch_fft):
    """Several chunks, and the torch.fft path CUDA tensors take without CuPy."""
    import circfft

    with circfft.config(chunk_elements=64, torch_fft=torch_fft):
        for shape, transpose in CASES[:4]:
            w, x, a, g = _inputs(shape, transpose, tokens=(45,))

            def call(*t, save_input):
                return _cd(*t, save_input=save_input, transpose=transpose)

            y0, g0 = _run(call, (a, w, g, x), False)
            y1, g1 = _run(call, (a, w, g, x), True)
            assert torch.equal(y0, y1)
            for a0, a1 in zip(g0, g1):
                assert torch.equal(a0, a1)


@pytest.mark.parametrize("shape,transpose", CASES[:5], ids=str)
def test_gradcheck(shape, transpose):
    w, x, a, g = _inputs(shape, transpose, tokens=(2, 3))
    args = [t.requires_grad_() for t in (a, w, g, x)]
    assert torch.autograd.gradcheck(
        lambda a, w, g, x: F.circulant_diagonal_matmul(a, w, g, x, transpose=transpose,
                                                       save_input=True), args)


def _saved_activations(fn, x, *params):
    """Saved tensors of at least x's size, split into (x's own storage, new buffers)."""
    with saved_tensors() as saved:
        y = fn(x, *params)
    ptr = x.untyped_storage().data_ptr()
    big = [t for t in saved if t.numel() * t.element_size() >= x.numel() * x.element_size()]
    own = [t for t in big if t.untyped_storage().data_ptr() == ptr]
    new = [t for t in big if t.untyped_storage().data_ptr() != ptr]
    y.sum().backward()
    return own, new


@pytest.mark.parametrize("shape,transpose", CASES, ids=str)
def test_saves_no_new_activation(shape, transpose):
    w, x, a, g = _inputs(shape, transpose, dtype=torch.float32)
    params = [t.requires_grad_() for t in (w, a, g)]
    x.requires_grad_()

    def bc(x, w, a, g, save_input):
        return F.block_circulant_matmul(w, x, transpose=transpose, save_input=save_input)

    def cd(x, w, a, g, save_input):
        return F.circulant_diagonal_matmul(a, w, g, x, transpose=transpose,
                                           save_input=save_input)

    for fn in (bc, cd):
        own, new = _saved_activations(lambda x, *p: fn(x, *p, True), x, *params)
        assert new == [], [tuple(t.shape) for t in new]
        assert len(own) == 1                     # x itself, once
        # the default mode does save a new buffer of x's size (so this check can fail)
        own, new = _saved_activations(lambda x, *p: fn(x, *p, False), x, *params)
        assert len(new) == 1 and new[0].numel() >= x.numel()


def test_frozen_input_saved_without_copy():
    # As in an adapter: x does not require grad, only the kernel does.
    w, x, _, _ = _inputs((2, 3, 8), False, dtype=torch.float32)
    w.requires_grad_()
    own, new = _saved_activations(lambda x, w: F.block_circulant_matmul(w, x, save_input=True),
                                  x, w)
    assert new == [] and len(own) == 1
    assert w.grad is not None


def test_bad_input():
    w, x, a, g = _inputs((2, 3, 4), False)
    with pytest.raises(TypeError, match="save_input"):
        F.block_circulant_matmul(w, x, save_input=1)
    with pytest.raises(TypeError, match="save_input"):
        F.circulant_diagonal_matmul(a, w, g, x, save_input="yes")
    with pytest.raises(ValueError, match="block"):
        F.block_circulant_matmul(w, x[..., :-1], save_input=True)
    with pytest.raises(ValueError, match="a must have shape"):
        F.circulant_diagonal_matmul(a[:-1], w, g, x, save_input=True)
    with pytest.raises(ValueError, match="g must have shape"):
        F.circulant_diagonal_matmul(a, w, g[:-1], x, save_input=True)
    with pytest.raises(TypeError, match="dtype"):
        F.block_circulant_matmul(w.float(), x, save_input=True)
