"""``python -m circfft bench --adapters``: one training step of the demo model, per adapter.

The model is the demo's (MiniLM-L6 encoder, mean pooling, linear head; :mod:`circfft._demo`),
float32, with the same target modules (every attention and FFN linear) for every method:

=================  ===========================================================
``lora``           PEFT LoRA, r = 8
``circulant``      circfft ``CirculantAdapter``, block size ``b`` (default 64)
``c3a``            PEFT C3A at the same block size
``fourierft``      circfft ``FourierFTAdapter``, n_frequency = 1000
``peft-fourierft`` PEFT FourierFT, n_frequency = 1000
=================  ===========================================================

(``circulant-diagonal`` and ``frozen`` can be added with ``--methods``.)  One step is forward,
cross-entropy loss, backward and an AdamW step, on the same batch for every method:
``--batch-size`` rows of ``--seq-len`` real tokens (training lexicon entries run together, so
the step has the shape of a sentence batch); ``--seq-len 0`` uses the demo's own batch (one
lexicon entry a row, a few tokens).

- **time**: all methods live in one process; after ``--warmup`` untimed rounds, ``--repeat``
  rounds each time one step of every method in turn (round-robin, so machine noise is shared);
  the median per method is reported.
- **peak memory**: each method in a fresh subprocess.  glibc's mmap threshold is fixed at
  64 KiB (as in ``bench --ops``) so freed buffers leave the resident set; after one warm-up step
  (optimizer state allocated, lazy initialisation done) and ``zero_grad(set_to_none=True)``, the
  RSS is read, the high-water mark is reset through ``/proc/self/clear_refs`` and one step runs:
  the figure is the peak minus that RSS (activations and tensors saved for backward,
  gradients, temporaries) above the model + batch + optimizer-state baseline.  On CUDA:
  ``torch.cuda.max_memory_allocated`` minus the allocated memory at the same point.

Options (after ``--adapters``): ``--methods``, ``--batch-size``, ``--seq-len``, ``--repeat``,
``--warmup``, ``--block-size``, ``--n-frequency``, ``--device``, ``--threads``, ``--no-memory``,
``--no-progress``, ``--json FILE``, ``--quick`` (a short run); ``--help`` lists them.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

__all__ = ["main", "make_batch", "format_table", "TARGETS", "DEFAULT_METHODS"]

DEFAULT_METHODS = ("lora", "circulant", "c3a", "fourierft", "peft-fourierft")
FULL = dict(batch_size=16, seq_len=128, repeat=7, warmup=2)
QUICK = dict(batch_size=8, seq_len=64, repeat=3, warmup=1)

#: (numerator, denominator, time target, memory target): numerator's time must be at most
#: ``time target`` x the denominator's, its peak at most ``memory target`` x (None: no target).
TARGETS = (
    ("circulant", "lora", 1.2, 1.0),
    ("circulant", "c3a", 1 / 1.5, 1.0),
    ("fourierft", "peft-fourierft", 1 / 3, 1.0),
)


def _parse(argv):
    """Options of ``bench --adapters``: the command line after ``bench``, less ``--adapters``."""
    from ._demo import METHODS

    p = argparse.ArgumentParser(prog="python -m circfft bench --adapters",
                                description="One training step of the demo model per adapter "
                                            "method: median time (round-robin) and peak memory "
                                            "(fresh process per method).")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(DEFAULT_METHODS),
                   help=f"default: {' '.join(DEFAULT_METHODS)}")
    p.add_argument("--quick", action="store_true",
                   help=f"short run: batch {QUICK['batch_size']} x {QUICK['seq_len']} tokens, "
                        f"{QUICK['repeat']} rounds (explicit options still win)")
    p.add_argument("--batch-size", type=int, help=f"rows (default {FULL['batch_size']})")
    p.add_argument("--seq-len", type=int,
                   help=f"tokens per row (default {FULL['seq_len']}; 0: the demo's own batch "
                        "of lexicon entries)")
    p.add_argument("--repeat", type=int, help=f"timed rounds (default {FULL['repeat']})")
    p.add_argument("--warmup", type=int, help=f"untimed rounds first (default {FULL['warmup']})")
    p.add_argument("--block-size", type=int, default=64, help="CirculantAdapter / C3A block")
    p.add_argument("--n-frequency", type=int, default=1000, help="FourierFT entries per layer")
    p.add_argument("--device", nargs="+", metavar="DEV",
                   help="cpu and/or cuda[:k] (default: cpu, plus cuda when torch sees one)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", metavar="FILE", help="save the rows as JSON")
    ns = p.parse_args(list(argv))
    base = QUICK if ns.quick else FULL
    cfg = dict(methods=ns.methods, block_size=ns.block_size, n_frequency=ns.n_frequency,
               devices=ns.device, threads=ns.threads, memory=not ns.no_memory, json=ns.json,
               progress=not ns.no_progress)
    for key in ("batch_size", "seq_len", "repeat", "warmup"):
        value = getattr(ns, key)
        cfg[key] = base[key] if value is None else value
    for key in ("batch_size", "repeat", "block_size", "n_frequency"):
        if cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, "
                             f"got {cfg[key]}")
    if cfg["threads"] is not None and cfg["threads"] < 1:
        raise ValueError(f"--threads must be a positive integer, got {cfg['threads']}")
    if cfg["seq_len"] < 0 or 0 < cfg["seq_len"] < 3:
        raise ValueError(f"--seq-len must be 0 (demo batch) or at least 3, got {cfg['seq_len']}")
    if cfg["warmup"] < 0:
        raise ValueError(f"--warmup must be >= 0, got {cfg['warmup']}")
    return cfg


# ---------------------------------------------------------------------------------------------
# Model, batch and step
# ---------------------------------------------------------------------------------------------
def make_batch(tokenizer, batch_size: int, seq_len: int, device="cpu"):
    """``(input_ids, attention_mask, labels)``: the same batch for every method.

    ``seq_len > 0``: training lexicon entries, tokenized without special tokens and run
    together, cut into rows of ``seq_len - 2`` tokens framed by [CLS] ... [SEP]; labels are the
    first entry's of each row.  ``seq_len == 0``: the demo's first batch (seed 0).
    """
    import torch

    from . import _demo_data as data

    train, _ = data.split_lexicon(data.load_lexicon())
    if seq_len == 0:
        return data.Batches(train, tokenizer, batch_size, seed=0, device=device).next()
    body = seq_len - 2
    stream, labels, i = [], [], 0
    for row in range(batch_size):
        ids = []
        labels.append(train[i % len(train)].label)
        while len(ids) < body:
            ids += tokenizer(train[i % len(train)].text, add_special_tokens=False)["input_ids"]
            i += 1
        stream.append([tokenizer.cls_token_id, *ids[:body], tokenizer.sep_token_id])
    input_ids = torch.tensor(stream, device=device)
    return input_ids, torch.ones_like(input_ids), torch.tensor(labels, device=device)


def build(name: str, cfg: dict, seed: int = 0):
    """``(model, optimizer, trainable)`` of method ``name`` on ``cfg["device"]``."""
    from . import _demo as demo
    from . import _demo_data as data

    model = data.load_model(seed=seed)
    model = demo.build_method(name, model, list(data.DEFAULT_TARGET_MODULES),
                              cfg["block_size"], cfg["n_frequency"], seed=seed)
    model = model.to(cfg["device"]).eval()      # no dropout, as in the demo
    trainable, _ = demo.parameter_counts(name, model)
    return model, demo._optimizer(name, model), trainable


def _step(model, opt, batch):
    import torch

    ids, mask, labels = batch
    loss = torch.nn.functional.cross_entropy(model(ids, mask), labels)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _sync(device):
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_methods(cfg, batch, progress=None) -> dict:
    """Median step time per method, round-robin in this process."""
    built = {}
    for name in cfg["methods"]:
        model, opt, trainable = build(name, cfg)
        built[name] = (model, opt, trainable)
    times = {name: [] for name in built}
    rounds = cfg["warmup"] + cfg["repeat"]
    for r in range(rounds):
        for name, (model, opt, _) in built.items():
            _sync(cfg["device"])
            t0 = time.perf_counter()
            _step(model, opt, batch)
            _sync(cfg["device"])
            if r >= cfg["warmup"]:
                times[name].append(time.perf_counter() - t0)
            if progress is not None:
                progress.update(1)
    return {name: dict(time_s=statistics.median(t), times_s=t, trainable=built[name][2])
            for name, t in times.items()}


def memory_case(name: str, cfg: dict) -> dict:
    """Peak memory of one step of ``name`` above model + batch + optimizer state (this process)."""
    from ._bench_ops import _fixed_mmap_threshold, _reset_peak, _status_bytes

    device = cfg["device"]
    if not device.startswith("cuda"):
        _fixed_mmap_threshold(65536)
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    from . import _demo_data as data

    batch = make_batch(data.load_tokenizer(), cfg["batch_size"], cfg["seq_len"], device)
    model, opt, trainable = build(name, cfg)
    _step(model, opt, batch)                    # warm-up: optimizer state, lazy init, caches
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _step(model, opt, batch)
        torch.cuda.synchronize()
        return dict(method=name, peak_bytes=int(torch.cuda.max_memory_allocated() - before),
                    exact_peak=True, trainable=trainable)
    _fixed_mmap_threshold(65536)                # also trims the heap
    before = _status_bytes("VmRSS")
    exact = _reset_peak()
    _step(model, opt, batch)
    peak = _status_bytes("VmHWM")
    return dict(method=name, peak_bytes=(peak - before) if (exact and peak and before) else None,
                exact_peak=exact, trainable=trainable)


def _memory_subprocess(name: str, cfg: dict) -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "circfft._bench_adapters", "--case", name, json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return dict(method=name, peak_bytes=None, error=tail[0])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _mib(v):
    return "n/a" if v is None else f"{v / 2**20:.1f}"


def format_table(rows: dict) -> str:
    """Per-method table, then the target ratios with their verdicts."""
    from ._demo import METHODS

    lines = ["| method | trainable params | step time (ms) | peak above baseline (MiB) |",
             "|---|---|---|---|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {METHODS[name].label} | failed: {r['error']} | | |")
            continue
        lines.append(f"| {METHODS[name].label} | {r['trainable']:,} | "
                     f"{1000 * r['time_s']:.1f} | {_mib(r.get('peak_bytes'))} |")
    lines += ["", "| ratio | time | time target | peak memory | memory target | verdict |",
              "|---|---|---|---|---|---|"]
    for num, den, t_target, m_target in TARGETS:
        a, b = rows.get(num), rows.get(den)
        if not a or not b or "error" in a or "error" in b:
            continue
        tr = a["time_s"] / b["time_s"]
        verdict = ["time ok" if tr <= t_target else "time MISSED"]
        pa, pb = a.get("peak_bytes"), b.get("peak_bytes")
        mr = pa / pb if (pa is not None and pb) else None
        if mr is not None:
            verdict.append("memory ok" if mr <= m_target else "memory MISSED")
        lines.append(f"| {METHODS[num].label} / {METHODS[den].label} | {tr:.3f} | "
                     f"<= {t_target:.3f} | {'n/a' if mr is None else f'{mr:.3f}'} | "
                     f"<= {m_target:g} | {', '.join(verdict)} |")
    return "\n".join(lines)


def main(argv=()) -> int:
    """Run the step benchmark with command-line options ``argv``; return the exit status."""
    try:
        cfg = _parse(argv)
    except ValueError as exc:
        print(f"bench --adapters: {exc}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("bench --adapters needs torch and the demo extra: pip install 'circfft[demo]'",
              file=sys.stderr)
        return 2
    from ._demo import _check_device

    if not cfg["devices"]:
        cfg["devices"] = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in cfg["devices"]:
        reason = _check_device(device)
        if reason:
            print(f"bench --adapters: {reason}", file=sys.stderr)
            return 2
    threads = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    try:
        return _run(cfg, torch)
    finally:
        torch.set_num_threads(threads)      # leave the caller's process as it was


def _run(cfg, torch) -> int:
    cfg["threads"] = torch.get_num_threads()
    per_device, shape = {}, None
    for device in cfg["devices"]:
        per_device[device], shape = _run_device(dict(cfg, device=device))
        print()
    if cfg["json"]:
        with open(cfg["json"], "w") as fh:
            json.dump(dict(config=cfg, batch_shape=shape, devices=per_device,
                           rows=per_device[cfg["devices"][0]]), fh, indent=1)
    return 0


def _run_device(cfg):
    """Time (and measure) every method on ``cfg["device"]``; print its tables."""
    from . import _demo_data as data

    batch = make_batch(data.load_tokenizer(), cfg["batch_size"], cfg["seq_len"], cfg["device"])
    shape = tuple(batch[0].shape)
    print(f"one training step (forward, loss, backward, AdamW step) of the demo model, float32, "
          f"{cfg['device']}, {cfg['threads']} threads; batch {shape[0]} x {shape[1]} tokens; "
          f"block size {cfg['block_size']}, n_frequency {cfg['n_frequency']}; "
          f"median of {cfg['repeat']} round-robin rounds after {cfg['warmup']} warm-up",
          flush=True)
    bar = None
    if cfg["progress"]:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cfg["methods"]) * (cfg["repeat"] + cfg["warmup"]),
                       desc="steps", file=sys.stderr, leave=False)
        except ImportError:
            pass
    rows = time_methods(cfg, batch, bar)
    if bar is not None:
        bar.close()
    if cfg["memory"]:
        for name in cfg["methods"]:
            mem = _memory_subprocess(name, cfg)
            rows[name]["peak_bytes"] = mem.get("peak_bytes")
            if "error" in mem:
                rows[name]["memory_error"] = mem["error"]
                print(f"  {name}: memory probe failed: {mem['error']}", file=sys.stderr)
    print()
    print(format_table(rows))
    print("\npeak above baseline: " + (
        "torch.cuda.max_memory_allocated during one step minus the allocation before it"
        if cfg["device"].startswith("cuda") else
        "peak RSS of one step (fresh process per method, /proc/self/clear_refs) minus the RSS "
        "before it (model, batch and optimizer state)"))
    return rows, shape


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--case":
        print(json.dumps(memory_case(sys.argv[2], json.loads(sys.argv[3]))))
    else:
        sys.exit(main(sys.argv[1:]))
