"""``python -m circfft demo``: fine-tune MiniLM-L6 on the VADER lexicon with circfft's adapters.

Every method trains the same model (pretrained MiniLM-L6 encoder, mean pooling, linear head
``classifier``; :mod:`.demo_data`) on the same batch sequence for the same number of
steps, then is evaluated on the same held-out lexicon entries twice: with the adapter in place
and after merging it into the base weights (``merge_and_unload``), which must give the same
predictions (both kept in the ``--json`` rows).  The head is trainable in every method
(``modules_to_save=["classifier"]``); the baseline ``frozen`` trains only the head.

Learning rates (AdamW, no weight decay, 6% linear warm-up then linear decay, as in the LoRA and
FourierFT papers' RoBERTa recipes); the head always uses ``HEAD_LR``:

=====================  ======  ===========================================================
method                 LR      recipe
=====================  ======  ===========================================================
frozen                 -       head only
circulant              1e-1    C3A's (PEFT docs: "a LR of 1e-1 for C3A is a good starting
                               point"); ``scale="fan_in"`` is C3A's scaling exactly
c3a (PEFT)             1e-1    same; zero init as circfft's (``init_weights=True``)
circulant-diagonal     1e-2    diagonals scale a unit-norm circulant: between LoRA and C3A
fourierft              5e-2    FourierFT paper, RoBERTa-base (n=1000, scaling 150)
peft-fourierft         5e-2    same
lora (PEFT)            5e-4    LoRA paper, RoBERTa-base (r=8, alpha=8, no dropout)
=====================  ======  ===========================================================

The circfft methods use only the public adapter API: :func:`circfft.nn.inject`, the config
classes, :func:`circfft.nn.trainable_parameters`, :func:`circfft.nn.merge_and_unload` and
:func:`circfft.nn.save_adapter`.
"""
from __future__ import annotations

import functools
import gc
import json
import os
import statistics
import sys
from dataclasses import dataclass

from . import demo_data as data
from .measure import (PeakMemory, default_device, device_description, mib, progress_bar,
                      render_table, time_call, torch_threads)

__all__ = ["METHODS", "DEFAULT_METHODS", "COMPARE_METHODS", "HEAD_LR", "add_arguments", "run",
           "build_method", "parameter_counts", "make_optimizer", "train_step", "check_device",
           "format_table"]

HEAD_LR = 5e-3
WARMUP_FRACTION = 0.06


@dataclass(frozen=True)
class Method:
    """One row of the comparison: who implements it, its learning rate and why."""

    name: str
    label: str
    family: str          # "baseline", "circfft" or "peft"
    lr: float
    recipe: str


METHODS = {m.name: m for m in (
    Method("frozen", "frozen encoder, head only", "baseline", 0.0, "head only"),
    Method("circulant", "circfft CirculantAdapter", "circfft", 1e-1,
           "C3A recipe (LR 1e-1); scale fan_in = C3A's"),
    Method("circulant-diagonal", "circfft CirculantDiagonalAdapter", "circfft", 1e-2,
           "diagonals around a unit-gain circulant"),
    Method("fourierft", "circfft FourierFTAdapter", "circfft", 5e-2,
           "FourierFT paper, RoBERTa-base"),
    Method("lora", "PEFT LoRA r=8", "peft", 5e-4, "LoRA paper, RoBERTa-base"),
    Method("c3a", "PEFT C3A", "peft", 1e-1, "PEFT C3A docs (LR 1e-1)"),
    Method("peft-fourierft", "PEFT FourierFT", "peft", 5e-2, "FourierFT paper, RoBERTa-base"),
)}
DEFAULT_METHODS = ("frozen", "circulant")
COMPARE_METHODS = ("frozen", "lora", "c3a", "circulant", "circulant-diagonal",
                   "peft-fourierft", "fourierft")


# ---------------------------------------------------------------------------------------------
# Methods: build, count, merge, save
# ---------------------------------------------------------------------------------------------
def build_method(name: str, model, target_modules, block_size: int = 64,
                 n_frequency: int = 1000, seed: int = 0):
    """Attach method ``name``'s adapter to ``model``; return the model to train.

    Random adapter initialisations (FourierFT's spectrum) draw from ``torch.manual_seed(seed)``
    so circfft's and PEFT's FourierFT start from the same values.
    """
    import torch

    method = METHODS[name]
    torch.manual_seed(seed)
    save = ["classifier"]
    if method.family == "baseline":
        return model
    if method.family == "circfft":
        from circfft import nn as cnn

        if name == "circulant":
            cfg = cnn.CirculantConfig(target_modules=target_modules, modules_to_save=save,
                                      block_size=block_size, scale="fan_in", init="zeros")
        elif name == "circulant-diagonal":
            cfg = cnn.CirculantDiagonalConfig(target_modules=target_modules,
                                              modules_to_save=save)
        else:
            cfg = cnn.FourierFTConfig(target_modules=target_modules, modules_to_save=save,
                                      n_frequency=n_frequency, scaling=150.0)
        return cnn.inject(model, cfg)
    import peft

    if name == "lora":
        cfg = peft.LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0,
                              target_modules=target_modules, modules_to_save=save)
    elif name == "c3a":
        cfg = peft.C3AConfig(block_size=block_size, target_modules=target_modules,
                             modules_to_save=save, init_weights=True)
    else:
        cfg = peft.FourierFTConfig(n_frequency=n_frequency, scaling=150.0,
                                   target_modules=target_modules, modules_to_save=save)
    return peft.get_peft_model(model, cfg)


def parameter_counts(name: str, model) -> tuple[int, int]:
    """``(trainable, total)`` parameters, as the method's own library counts them."""
    family = METHODS[name].family
    if family == "circfft":
        from circfft import nn as cnn

        return tuple(int(v) for v in cnn.trainable_parameters(model))
    if family == "peft":
        return tuple(int(v) for v in model.get_nb_trainable_parameters())
    params = list(model.parameters())
    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def merge(name: str, model):
    """The model with the adapter merged into the base weights (modules unwrapped)."""
    family = METHODS[name].family
    if family == "circfft":
        from circfft import nn as cnn

        return cnn.merge_and_unload(model)
    if family == "peft":
        return model.merge_and_unload()
    return model


def save(name: str, model, path: str) -> None:
    """Save the trained adapter (and head) of ``model`` under directory ``path``."""
    family = METHODS[name].family
    os.makedirs(path, exist_ok=True)
    if family == "circfft":
        from circfft import nn as cnn

        cnn.save_adapter(model, path)
    elif family == "peft":
        model.save_pretrained(path)
    else:
        import torch

        torch.save(model.classifier.state_dict(), os.path.join(path, "classifier.pt"))


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------
def _lr_factor(step: int, steps: int) -> float:
    warm = max(1, int(round(WARMUP_FRACTION * steps)))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (steps - step) / max(1, steps - warm))


def make_optimizer(name, model, lr: float | None = None):
    """AdamW over the trainable parameters: the head at ``HEAD_LR``, the adapter at ``lr``
    (default: method ``name``'s LR)."""
    import torch

    head, adapter = [], []
    for pname, p in model.named_parameters():
        if p.requires_grad:
            (head if "classifier" in pname else adapter).append(p)
    groups = [dict(params=head, lr=HEAD_LR)]
    if adapter:
        groups.append(dict(params=adapter, lr=METHODS[name].lr if lr is None else lr))
    return torch.optim.AdamW(groups, weight_decay=0.0)


def evaluate(model, tokenizer, entries, device, batch_size: int = 256):
    """Logits of ``entries`` (float32 tensor on CPU), in order, without gradients."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(entries), batch_size):
            ids, mask = data.tokenize(tokenizer, [e.text for e in entries[i:i + batch_size]],
                                      device)
            out.append(model(ids, mask).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def train_step(model, optimizer, batch, scheduler=None):
    """One step on ``batch = (input_ids, attention_mask, labels)``: forward, cross-entropy,
    backward, optimizer (and ``scheduler``) step; returns the loss, detached."""
    import torch

    ids, mask, labels = batch
    loss = torch.nn.functional.cross_entropy(model(ids, mask), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return loss.detach()


def train_method(name, train, test, tokenizer, cfg, progress=True, save_dir=None) -> dict:
    """Train method ``name`` for ``cfg["steps"]`` steps and evaluate it; return its row."""
    import torch

    device = cfg["device"]
    model = data.load_model(seed=cfg["seed"])
    model = build_method(name, model, cfg["target_modules"], cfg["block_size"],
                         cfg["n_frequency"], seed=cfg["seed"]).to(device)
    trainable, total = parameter_counts(name, model)
    opt = make_optimizer(name, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg["steps"]))
    batches = data.Batches(train, tokenizer, cfg["batch_size"], cfg["seed"], device)
    model.eval()        # no dropout: every method sees the same forward; merging is exact
    losses, times = [], []
    bar = progress_bar(cfg["steps"], enabled=progress, desc=f"{METHODS[name].label:<32}",
                       unit="step", leave=True)
    probe = PeakMemory.for_device(device)
    if cfg["steps"] == 1:
        probe.start()
    for step in range(cfg["steps"]):
        batch = batches.next()
        loss, seconds = time_call(functools.partial(train_step, model, opt, batch, sched),
                                  device)
        times.append(seconds)
        losses.append(float(loss))
        if step == 0 and cfg["steps"] > 1:
            # Measure from the second step on: the first one also allocates one-off state
            # (optimizer moments, JIT compilation, FFT plans) that is not the method's cost.
            del loss
            probe.start()
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{statistics.fmean(losses[-20:]):.3f}")
    peak = probe.stop()
    bar.close()
    if save_dir:
        save(name, model, os.path.join(save_dir, name))
    labels = [e.label for e in test]
    logits = evaluate(model, tokenizer, test, device)
    predictions = logits.argmax(1).tolist()
    row = dict(method=name, label=METHODS[name].label, family=METHODS[name].family,
               lr=METHODS[name].lr or None, head_lr=HEAD_LR, trainable=trainable, total=total,
               accuracy=_accuracy(predictions, labels), predictions=predictions,
               steps=cfg["steps"], losses=losses,
               final_loss=statistics.fmean(losses[-max(1, len(losses) // 10):]),
               step_time_s=_median_after_warmup(times),
               peak_bytes=peak if probe.exact else None)
    if METHODS[name].family != "baseline":
        merged_logits = evaluate(merge(name, model), tokenizer, test, device)
        merged_predictions = merged_logits.argmax(1).tolist()
        row["accuracy_merged"] = _accuracy(merged_predictions, labels)
        row["merged_predictions"] = merged_predictions
        row["merged_disagreements"] = sum(a != b for a, b in zip(merged_predictions, predictions))
        row["merged_max_logit_diff"] = float((merged_logits - logits).abs().max())
    del model, opt
    gc.collect()
    return row


def _accuracy(predictions, labels) -> float:
    """Share of ``predictions`` equal to ``labels``."""
    return sum(p == y for p, y in zip(predictions, labels)) / len(labels)


def _median_after_warmup(times):
    skip = min(3, len(times) // 4)          # first steps: lazy init, allocator growth, caches
    return statistics.median(times[skip:]) if times else float("nan")


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def format_table(rows: list[dict]) -> str:
    """Markdown table: parameters, held-out accuracy (adapter / merged), time and memory."""
    base = next((r for r in rows if r["method"] == "frozen"), None)
    headers = ["method", "LR", "trainable params", "% of model", "held-out acc", "merged acc",
               "vs frozen", "final train loss", "step time (ms)", "peak mem (MiB)"]
    lines = []
    for r in rows:
        merged = ("-" if "accuracy_merged" not in r else
                  f"{100 * r['accuracy_merged']:.2f}%"
                  + ("" if r["merged_disagreements"] == 0 else
                     f" ({r['merged_disagreements']} differ)"))
        delta = "" if base is None or r is base else \
            f"{100 * (r['accuracy'] - base['accuracy']):+.2f} pt"
        lr = "-" if not r["lr"] else f"{r['lr']:g}"
        lines.append([r["label"], lr, f"{r['trainable']:,}",
                      f"{100 * r['trainable'] / r['total']:.3f}", f"{100 * r['accuracy']:.2f}%",
                      merged, delta, f"{r['final_loss']:.3f}", f"{1000 * r['step_time_s']:.1f}",
                      mib(r["peak_bytes"], 0)])
    return render_table(headers, lines, markdown=True)


def plot(rows, path):
    """Loss curves, held-out accuracy, step time and peak memory, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0, 0]
    for r in rows:
        ax.plot(_smooth(r["losses"]), label=r["label"])
    ax.set(title="training loss (moving average, 20 steps)", xlabel="step", ylabel="loss")
    ax.legend(fontsize=7)
    names = [r["method"] for r in rows]         # short names: the legend has the labels
    for ax, key, title, scale in (
            (axes[0, 1], "accuracy", "held-out accuracy (%)", 100),
            (axes[1, 0], "step_time_s", "median step time (ms)", 1000),
            (axes[1, 1], "peak_bytes", "peak memory during training (MiB)", 2.0 ** -20)):
        vals = [(r[key] or 0) * scale for r in rows]
        ax.bar(range(len(rows)), vals, color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), names, fontsize=8, rotation=30, ha="right")
        ax.set_title(title)
        if key == "accuracy":
            lo = min(vals)
            ax.set_ylim(max(0, lo - 5), min(100, max(vals) + 2))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _smooth(values, k=20):
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    """Add ``demo``'s options to the argparse (sub)parser ``p``."""
    p.add_argument("--compare", action="store_true",
                   help="also run PEFT LoRA r=8, PEFT C3A, PEFT FourierFT, circfft's "
                        "CirculantDiagonalAdapter and FourierFTAdapter")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="M",
                   help=f"methods to run, from {', '.join(METHODS)} "
                        f"(default: {' '.join(DEFAULT_METHODS)}; --compare: all)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the head, adapter init and batch order (the train/test split "
                        "is fixed; default 0)")
    p.add_argument("--target-modules", nargs="+", default=list(data.DEFAULT_TARGET_MODULES),
                   metavar="NAME",
                   help="adapted linears, by name suffix (default: query key value dense: "
                        "every attention and FFN linear)")
    p.add_argument("--block-size", type=int, default=64,
                   help="block size of CirculantAdapter and PEFT C3A (default 64)")
    p.add_argument("--n-frequency", type=int, default=1000,
                   help="spectral entries per layer of the FourierFT methods (default 1000)")
    p.add_argument("--eval-size", type=int, default=None, metavar="N",
                   help="evaluate on the first N held-out entries (default: all)")
    p.add_argument("--device", default=None,
                   help="cpu or cuda[:k] (default: cuda when torch sees a CUDA device, else cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--plot", metavar="FILE.png", help="save loss/accuracy/time/memory plots")
    p.add_argument("--json", metavar="FILE", help="save the rows (with loss curves) as JSON")
    p.add_argument("--save-adapter", metavar="DIR",
                   help="save each trained adapter (and head) under DIR/<method>")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _check_args(args):
    for key in ("steps", "batch_size", "block_size", "n_frequency"):
        v = getattr(args, key)
        if v < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, got {v}")
    if args.eval_size is not None and args.eval_size < 1:
        raise ValueError(f"--eval-size must be a positive integer, got {args.eval_size}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")


def _check_targets(target_modules) -> str | None:
    """None if every entry names a linear of the demo model (PEFT's list rule), else why not."""
    from torch import nn

    linears = [n for n, m in data.load_model().named_modules() if isinstance(m, nn.Linear)]
    missing = [t for t in target_modules
               if not any(n == t or n.endswith("." + t) for n in linears)]
    if not missing:
        return None
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in linears})
    return (f"--target-modules {' '.join(missing)}: no linear of the model has that name or "
            f"name suffix; the model's linears end in {', '.join(suffixes)}")


def check_device(device: str) -> str | None:
    """None if ``device`` is usable, else the reason it is not."""
    import torch

    if device == "cpu":
        return None
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            return (f"--device {device}: no CUDA device is available to torch "
                    f"{torch.__version__} (torch.cuda.is_available() is False); use --device cpu")
        return None
    return f"--device must be 'cpu' or 'cuda[:k]', got {device!r}"


def run(args) -> int:
    """Run the demo from parsed ``args``; print the table; return the exit status."""
    try:
        _check_args(args)
        import torch
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"demo needs torch and the demo extra: pip install 'circfft[demo]' ({exc})",
              file=sys.stderr)
        return 2
    if args.device is None:
        args.device = default_device()
    reason = check_device(args.device) or _check_targets(args.target_modules)
    if reason:
        print(f"demo: {reason}", file=sys.stderr)
        return 2
    with torch_threads(args.threads):
        return _run(args, torch)


def _run(args, torch) -> int:
    names = list(args.methods or (COMPARE_METHODS if args.compare else DEFAULT_METHODS))
    cfg = dict(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
               target_modules=list(args.target_modules), block_size=args.block_size,
               n_frequency=args.n_frequency, device=args.device)
    entries = data.load_lexicon()
    train, test = data.split_lexicon(entries)
    if args.eval_size:
        test = test[:args.eval_size]
    tokenizer = data.load_tokenizer()
    n_pos = sum(e.label for e in test)
    majority = 100 * max(n_pos, len(test) - n_pos) / len(test)
    print(f"VADER lexicon: {len(entries)} entries with |mean rating| >= {data.NEUTRAL_MARGIN} "
          f"(near-neutral dropped); fixed split: {len(train)} train, {len(test)} held out "
          f"({n_pos} positive, majority class {majority:.1f}%)")
    print(f"device: {device_description(args.device)}")
    print(f"model: MiniLM-L6 ({data.model_path()}), mean pooling, linear head; "
          f"targets {cfg['target_modules']}; {args.steps} steps of batch {args.batch_size}, "
          f"seed {args.seed}, {args.device}, {torch.get_num_threads()} threads, float32; "
          f"AdamW, head LR {HEAD_LR:g}", flush=True)
    rows = []
    for name in names:
        rows.append(train_method(name, train, test, tokenizer, cfg,
                                 progress=not args.no_progress, save_dir=args.save_adapter))
    print()
    print(format_table(rows))
    print("\nLR per method: " + "; ".join(
        f"{METHODS[r['method']].name} {r['lr'] or '-'} ({METHODS[r['method']].recipe})"
        for r in rows))
    print("merged acc: the same model evaluated after merge_and_unload (adapter folded into "
          "the weights); step time: median over steps after warm-up; peak mem: "
          + ("torch.cuda.max_memory_allocated of steps 2.. above the allocation after step 1" if
             args.device.startswith("cuda") else
             "peak RSS of steps 2.. above the RSS after step 1 (one process for all methods: see "
             "`python -m circfft bench --adapters` for fresh-process figures)"))
    bad = [r["method"] for r in rows if r.get("merged_disagreements")]
    if bad:
        print(f"note: merged and unmerged predictions differ for {bad} "
              "(float32 rounding on near-tied logits; see merged_max_logit_diff in --json)")
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(config=cfg, eval_size=len(test), train_size=len(train), rows=rows),
                      fh, indent=1)
    return 0
