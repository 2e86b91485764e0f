"""Several Python threads calling circfft at once give the same results as sequential calls."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import require

import circfft

CASES = [(64, np.float32), (1024, np.float64), (4096, np.float32), (12, np.float64),
         (2**15, np.float32), (8, np.float64), (256, np.float32), (2**16, np.float64)]


def make_inputs(seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((max(3, 2**16 // n), n)).astype(dt) for n, dt in CASES]


def task(fn, x, workers, backend, inplace):
    y = x.copy()
    if inplace:
        result = fn(y, out=y, workers=workers, backend=backend)
        assert result is y
        return y
    return fn(y, workers=workers, backend=backend)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("inplace", [False, True])
def test_threads_match_sequential(backend, workers, inplace):
    inputs = make_inputs(workers + 10 * inplace)
    jobs = [(fn, x) for x in inputs for fn in (circfft.rdfft, circfft.irdfft)]
    # sequential reference (also the warm-up: compilation happens here)
    expected = [task(fn, x, workers, backend, inplace) for fn, x in jobs]
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(task, fn, x, workers, backend, inplace) for fn, x in jobs]
            results = [f.result(timeout=300) for f in futures]
        for (fn, x), got, want in zip(jobs, results, expected):
            # the same arithmetic in the same order: bit-for-bit identical
            np.testing.assert_array_equal(got, want, err_msg=f"{fn.__name__} n={x.shape[-1]}")


def test_threads_mixing_backends_and_workers():
    require("numba")
    inputs = make_inputs(99)
    jobs = [(fn, x, w, be) for x in inputs for fn in (circfft.rdfft, circfft.irdfft)
            for w in (1, 2) for be in ("numpy", "numba")]
    expected = [task(fn, x, w, be, True) for fn, x, w, be in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda j: task(j[0], j[1], j[2], j[3], True), jobs,
                                timeout=600))
    for job, got, want in zip(jobs, results, expected):
        np.testing.assert_array_equal(got, want, err_msg=f"{job[0].__name__} {job[2:]}")


def test_threads_with_set_backend_contexts():
    """Each thread's set_backend context is its own (ContextVar): concurrent threads choosing
    different backends all get the backend they chose."""
    from circfft.backends import _registry as _dispatch

    x = np.random.default_rng(0).standard_normal((8, 64))
    barrier = threading.Barrier(4)
    seen = {}

    def worker(i):
        name = "numpy" if i % 2 == 0 else ("numba" if _numba() else "numpy")
        with circfft.set_backend(name):
            barrier.wait(timeout=60)
            be = _dispatch.resolve(x)
            result = circfft.rdfft(x)
            barrier.wait(timeout=60)
            seen[i] = (name, be.name, result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(seen) == 4
    for name, used, result in seen.values():
        assert used == name
        np.testing.assert_allclose(result, circfft.rdfft(x, backend="numpy"),
                                   atol=1e-12 * np.abs(result).max())


def _numba():
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def test_numba_scratch_is_per_thread_and_kept():
    """Each Python thread keeps its own scratch pair between calls (so concurrent callers
    never share one), up to KEEP_SCRATCH_BYTES; release_scratch frees it."""
    require("numba")
    from circfft.backends import numba_backend as nb

    def pair_ids(n, dtype, workers):
        a, b = nb.get_scratch(n, dtype, workers)
        again = nb.get_scratch(n, dtype, workers)
        assert again[0] is a and again[1] is b                     # kept for the next call
        assert a.shape == b.shape == (workers, n * nb.lanes_for(n, dtype))
        assert not np.shares_memory(a, b)
        return id(a), id(b)

    mine = pair_ids(1024, np.float32, 2)
    with ThreadPoolExecutor(max_workers=1) as pool:
        theirs = pool.submit(pair_ids, 1024, np.float32, 2).result()
    assert set(mine).isdisjoint(theirs)
    a, _ = nb.get_scratch(1024, np.float32, 2)
    nb.release_scratch()
    assert nb.get_scratch(1024, np.float32, 2)[0] is not a
    big = 1 << 22                                   # one lane: 2 * 2**22 * 8 B > 32 MiB
    assert 2 * big * nb.lanes_for(big, np.float64) * 8 > nb.KEEP_SCRATCH_BYTES
    first = nb.get_scratch(big, np.float64, 1)[0]
    assert nb.get_scratch(big, np.float64, 1)[0] is not first      # not kept
    nb.release_scratch()


def test_concurrent_block_circulant_backward_is_deterministic():
    """Concurrent block-circulant backward passes from several Python threads give the serial
    gradients bit for bit, and torch's thread count is never changed, not even transiently.

    (The chunks of one call used to be shared among ``torch.get_num_threads()`` threads while
    the call set torch's thread count to 1 for its duration, so a concurrent call changed the
    split, and with it the rounding, and undid a user's own ``torch.set_num_threads``.)
    """
    torch = require("torch")
    from circfft.nn import functional as F

    rng = np.random.default_rng(5)
    w = torch.tensor(rng.standard_normal((3, 4, 16)), dtype=torch.float32)
    xs = [torch.tensor(rng.standard_normal((3000, 64)), dtype=torch.float32) for _ in range(4)]
    g = torch.tensor(rng.standard_normal((3000, 48)), dtype=torch.float32)
    threads_before = torch.get_num_threads()

    def grads(x, chunk=None):
        wr, xr = w.clone().requires_grad_(), x.clone().requires_grad_()
        # circfft.config is per thread, like set_backend: set it in the thread that calls
        with circfft.config(chunk_elements=chunk or circfft.get_config().chunk_elements):
            (F.block_circulant_matmul(wr, xr) * g).sum().backward()
        return wr.grad, xr.grad

    seen_counts = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen_counts.add(torch.get_num_threads())

    for x in xs:                                   # warm-up: kernels compiled, plans cached
        grads(x)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        chunked = [grads(x, 4096) for x in xs]            # many chunks per call
        for _ in range(3):
            with ThreadPoolExecutor(max_workers=4) as pool:
                concurrent = list(pool.map(lambda x: grads(x, 4096), xs))
            for (wa, xa), (wb, xb) in zip(concurrent, chunked):
                assert torch.equal(wa, wb) and torch.equal(xa, xb)
    finally:
        stop.set()
        watcher.join()
    assert seen_counts == {threads_before}
    assert torch.get_num_threads() == threads_before
