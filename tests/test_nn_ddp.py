"""circfft.nn adapters under torch.distributed: DDP and FSDP2 with 2 CPU processes (gloo).

One spawn of two worker processes trains a small MLP (adapters injected with
``circfft.nn.inject``) for two SGD steps, once per adapter type, first wrapped in
``DistributedDataParallel`` and then sharded with FSDP2 ``fully_shard``; each rank sees half of
the global batch and records, per step, the parameters it started from, its local loss and the
(synchronised, full) gradients.  The test process then checks:

* every rank holds bitwise the same parameters and gradients (the all-reduce result);
* the mean of the ranks' losses and the gradients equal a single process computing the loss on
  the whole global batch from the same parameters.

Tolerance (derived).  Distributed and single-process runs evaluate the same per-sample terms
``g_t`` (loss ``mean = sum_t l_t`` with ``l_t`` the per-sample share) in float32 and differ
only in how they are grouped: 4 + 4 samples then an all-reduce (the division by the world size
2 is exact) versus 8 at once, and in BLAS blocking for 4 or 8 rows.  Each term carries a
relative error of at most ``K eps`` where ``K`` counts the roundings along its longest chain
(the widest dot product, 32, plus the levels of the adapter's transforms and a few elementwise
operations: ``K = 64``), so ``|g_ddp - g_ref| <= 2 K eps sum_t |g_t|`` entry by entry, with the
per-sample terms computed in the test process.
"""
from __future__ import annotations

import datetime
import os
import socket
import traceback

import numpy as np
import pytest

from conftest import require, require_tool

torch = require("torch")
dist = require("torch.distributed")

if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    # CI's torch (Linux CPU wheel) has gloo: fail there instead of skipping
    require_tool("torch.distributed with gloo is not available", "torch.distributed (gloo)")

import circfft.nn as cnn  # noqa: E402

WORLD = 2
GLOBAL_BATCH = 8
D_IN, D_HID, D_OUT = 16, 32, 8
STEPS = 2
LR = 0.5
KINDS = ("circulant", "circulant_diagonal", "fourierft")
MODES = ("ddp", "fsdp2")
K_ROUNDINGS = 64
#: Wall-clock limit for the two workers (the whole spawn), so a hang fails instead of waiting.
JOIN_TIMEOUT_S = 300


def _config(kind):
    targets = ["0", "2"]
    if kind == "circulant":
        return cnn.CirculantConfig(target_modules=targets, block_size=4)
    if kind == "circulant_diagonal":
        return cnn.CirculantDiagonalConfig(target_modules=targets, block_size=8)
    return cnn.FourierFTConfig(target_modules=targets, n_frequency=40, scaling=10.0)


def _build(kind):
    """The same model on every process: seeded base weights, adapters with seeded values."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D_IN, D_HID), torch.nn.Tanh(),
                                torch.nn.Linear(D_HID, D_OUT))
    cnn.inject(model, _config(kind))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # non-zero adapter values everywhere, so every adapter tensor gets a gradient
        for _, p in sorted(_trainable(model).items()):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


def _trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _data():
    g = torch.Generator().manual_seed(2)
    return torch.randn(GLOBAL_BATCH, D_IN, generator=g), torch.randn(GLOBAL_BATCH, D_OUT,
                                                                      generator=g)


def _full(t):
    """A plain tensor from a DTensor (FSDP2 shards) or a tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# ---------------------------------------------------------------------------------------------
# Worker (runs in the spawned processes)
# ---------------------------------------------------------------------------------------------
def _train(rank, mode, kind):
    model = _build(kind)
    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        wrapped = fully_shard(model)
    params = _trainable(model)
    opt = torch.optim.SGD(params.values(), lr=LR)
    X, Y = _data()
    per = GLOBAL_BATCH // WORLD
    x, y = X[rank * per:(rank + 1) * per], Y[rank * per:(rank + 1) * per]
    steps = []
    for _ in range(STEPS):
        before = {n: _full(p.detach()).clone() for n, p in params.items()}
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(wrapped(x), y)
        loss.backward()
        grads = {n: _full(p.grad).clone() for n, p in params.items()}
        steps.append({"params": before, "loss": float(loss), "grads": grads})
        opt.step()
    return steps


def _worker(rank, port, outdir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    results = {}
    try:
        for mode in MODES:
            for kind in KINDS:
                try:
                    results[(mode, kind)] = _train(rank, mode, kind)
                except Exception as exc:  # recorded: the test reports the exact error
                    results[(mode, kind)] = f"{type(exc).__name__}: {exc}\n" + \
                        traceback.format_exc()
                dist.barrier()
    finally:
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Test process
# ---------------------------------------------------------------------------------------------
def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch.multiprocessing as mp

    outdir = str(tmp_path_factory.mktemp("ddp"))
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, outdir), daemon=True)
             for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=JOIN_TIMEOUT_S)
    for p in procs:
        p.join(max(1.0, (deadline - datetime.datetime.now()).total_seconds()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join(10)
    if hung:
        pytest.fail(f"distributed workers still running after {JOIN_TIMEOUT_S} s: killed")
    codes = [p.exitcode for p in procs]
    assert codes == [0] * WORLD, f"worker exit codes {codes}"
    return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False)
            for r in range(WORLD)]


def _reference(kind, params):
    """Single process, whole global batch, from ``params``: (loss, grads, sum_t |g_t|)."""
    model = _build(kind)
    trainable = _trainable(model)
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(params[n])
    X, Y = _data()
    model.zero_grad()
    loss = torch.nn.functional.mse_loss(model(X), Y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainable.items()}
    abs_sum = {n: torch.zeros_like(g, dtype=torch.float64) for n, g in grads.items()}
    loss_terms = 0.0
    for t in range(GLOBAL_BATCH):      # per-sample shares l_t = mse(sample) / batch
        model.zero_grad()
        lt = torch.nn.functional.mse_loss(model(X[t:t + 1]), Y[t:t + 1]) / GLOBAL_BATCH
        lt.backward()
        loss_terms += abs(lt.item())
        for n, p in trainable.items():
            abs_sum[n] += p.grad.double().abs()
    return float(loss.detach()), grads, abs_sum, loss_terms


def _result(runs, mode, kind):
    res = [r[(mode, kind)] for r in runs]
    for r in res:
        if isinstance(r, str):
            pytest.fail(f"{mode} with the {kind} adapter failed on CPU/gloo:\n{r}")
    return res


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_ranks_agree(runs, mode, kind):
    r0, r1 = _result(runs, mode, kind)
    assert len(r0) == STEPS
    for s0, s1 in zip(r0, r1):
        assert s0["grads"].keys() == s1["grads"].keys() and s0["grads"]
        for n in s0["grads"]:
            assert torch.equal(s0["grads"][n], s1["grads"][n]), n
            assert torch.equal(s0["params"][n], s1["params"][n]), n
    # training happened: the second step starts from different parameters
    assert any(not torch.equal(r0[0]["params"][n], r0[1]["params"][n]) for n in r0[0]["params"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_matches_single_process(runs, mode, kind):
    r0, r1 = _result(runs, mode, kind)
    eps = float(np.finfo(np.float32).eps)
    for step, (s0, s1) in enumerate(zip(r0, r1)):
        loss, grads, abs_sum, loss_terms = _reference(kind, s0["params"])
        mean_loss = (s0["loss"] + s1["loss"]) / WORLD
        assert abs(mean_loss - loss) <= 2 * K_ROUNDINGS * eps * loss_terms, (step, mean_loss,
                                                                             loss)
        for n, g in grads.items():
            tol = 2 * K_ROUNDINGS * eps * abs_sum[n]
            err = (s0["grads"][n].double() - g.double()).abs()
            assert bool((err <= tol).all()), (
                f"step {step} {n}: max err {float(err.max()):.3e}, "
                f"tol at that entry {float(tol.flatten()[int(err.argmax())]):.3e}")


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_storage_stays_resizable(kind):
    """FSDP2 frees unsharded parameters with ``storage.resize_(0)``, which fails once a numpy
    view of the storage was ever taken: forward and backward must not view parameters."""
    model = _build(kind)
    X, Y = _data()
    torch.nn.functional.mse_loss(model(X), Y).backward()
    for n, p in _trainable(model).items():
        p.data.untyped_storage().resize_(0)    # raises RuntimeError if not resizable
