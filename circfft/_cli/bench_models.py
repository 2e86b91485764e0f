"""The models and the extra method of ``bench --adapters``: the demo's MiniLM classifier or a
BERT of a given shape with random weights, their batches, and the scalar-gate lower bound.

BERT shapes (``--model``) are built from a ``transformers.BertConfig`` with random weights
(nothing is downloaded), dropout off, no pooler, the demo's mean pooling and linear head, and
adapt the attention query and value linears (``BERT_TARGET_MODULES``).  Their batch is random
token ids (seeded), every position attended.

The ``gate`` method multiplies the output of every adapted linear by a trainable scalar
(initialised to 1).  It is the cheapest thing an adapter on those layers can be: the backward
pass must reach every adapted layer, and each layer reduces one tensor of its output's size to
its gradient; every adapter costs at least that.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from . import demo
from . import demo_data as data

__all__ = ["BertShape", "MODELS", "BERT_TARGET_MODULES", "GATE_LR", "GATE_LABEL", "is_bert",
           "load", "target_modules", "make_random_batch", "add_gates", "build_method",
           "make_optimizer", "label", "trainable_count"]


@dataclass(frozen=True)
class BertShape:
    """Encoder geometry and the default batch (rows x tokens) of one ``--model`` choice."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    batch_size: int
    seq_len: int
    vocab: int = 30522          # bert-base-uncased's vocabulary size (BertConfig's default)


#: ``--model`` choices: the demo's pretrained MiniLM (None) and BERT shapes with random weights.
MODELS = {
    "demo": None,
    "bert-384": BertShape(hidden=384, layers=6, heads=12, intermediate=1536, batch_size=32,
                          seq_len=128),
    "bert-1024": BertShape(hidden=1024, layers=4, heads=16, intermediate=4096, batch_size=16,
                           seq_len=512),
}
BERT_TARGET_MODULES = ["query", "value"]
#: The gate's learning rate (AdamW; its value does not change the step's cost).
GATE_LR = 1e-3
GATE_LABEL = "scalar gate per layer (lower bound)"


def is_bert(model: str) -> bool:
    return MODELS[model] is not None


def target_modules(model: str) -> list[str]:
    """The linears adapted on ``model``: q and v for BERT shapes, the demo's otherwise."""
    return list(BERT_TARGET_MODULES if is_bert(model) else data.DEFAULT_TARGET_MODULES)


def load(model: str, seed: int = 0):
    """A fresh classifier for ``model``: frozen encoder (pretrained, or random from ``seed``)
    and a trainable head."""
    shape = MODELS[model]
    if shape is None:
        return data.load_model(seed=seed)
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=shape.vocab, hidden_size=shape.hidden,
                        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                        intermediate_size=shape.intermediate, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0,
                        max_position_embeddings=max(512, shape.seq_len))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = BertModel(config, add_pooling_layer=False)
    return data.with_head(encoder, seed)


def make_random_batch(model: str, batch_size: int, seq_len: int, device="cpu", seed: int = 0):
    """``(input_ids, attention_mask, labels)`` of random tokens for a BERT shape."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(MODELS[model].vocab, (batch_size, seq_len), generator=gen)
    labels = torch.randint(2, (batch_size,), generator=gen)
    return ids.to(device), torch.ones_like(ids).to(device), labels.to(device)


@functools.lru_cache(maxsize=None)
def _gate_class():
    """The gate module class, built on first use so that importing this module needs no torch."""
    import torch
    from torch import nn

    class ScalarGate(nn.Module):
        """``base(x) * gate``: a frozen linear whose output a trainable scalar scales."""

        def __init__(self, base):
            super().__init__()
            self.base = base
            self.gate = nn.Parameter(torch.ones((), dtype=base.weight.dtype,
                                                device=base.weight.device))

        def forward(self, x):
            return self.base(x) * self.gate

    return ScalarGate


def add_gates(model, targets):
    """Wrap every ``nn.Linear`` of ``model`` whose name is or ends with a ``targets`` entry in
    a scalar gate (in place); returns ``model``."""
    from torch import nn

    gate = _gate_class()
    chosen = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)
              and any(name == t or name.endswith("." + t) for t in targets)]
    if not chosen:
        raise ValueError(f"no linear of the model is named {targets}")
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, gate(getattr(parent, child)))
    return model


def build_method(name: str, model, targets, block_size: int, n_frequency: int, seed: int = 0):
    """``model`` with method ``name`` attached: :func:`.demo.build_method`, or the gates."""
    if name == "gate":
        import torch

        torch.manual_seed(seed)
        return add_gates(model, targets)
    return demo.build_method(name, model, targets, block_size, n_frequency, seed=seed)


def make_optimizer(name: str, model):
    """:func:`.demo.make_optimizer`, the gates at ``GATE_LR``."""
    if name == "gate":
        return demo.make_optimizer("frozen", model, lr=GATE_LR)
    return demo.make_optimizer(name, model)


def trainable_count(name: str, model) -> int:
    """Trainable parameters, as the method's own library counts them (the gates: plainly)."""
    if name == "gate":
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    return demo.parameter_counts(name, model)[0]


def label(name: str) -> str:
    """The method's label in the tables."""
    return GATE_LABEL if name == "gate" else demo.METHODS[name].label
