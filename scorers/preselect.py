"""PreSelect (Shum et al. 2025, arXiv:2503.00808): a document's predictive strength, and its labels.

For each document, every model's loss is normalised to bits per character, so models with different
tokenizers compare. The document's predictive strength is the share of model pairs whose order by
loss on it (lower is better) agrees with their order by benchmark score (higher is better): the
concordant pairs that the paper counts, i.e. Kendall's tau-a mapped to [0, 1] (tau = 2 s - 1).
Kendall rather than Spearman because it is the paper's statistic and, with the handful of models one
has, every discordant pair costs the same, whereas Spearman makes one swap of the best and the worst
model cost as much as many swaps of neighbours.

With a few models the strength takes few values (7 for four models), so many documents tie; ties are
broken by the Pearson correlation between minus bits per character and the scores (the linear
relation between compression and ability of Huang et al. 2024, which PreSelect builds on), then by
a seeded hash of the id. This gives a total order, so the top and bottom fractions have exact sizes.

The math is numpy only; `ModelBits` computes one model's bits per character with torch, reusing the
loading, chunking, length-bucketed batching and loss functions of `scorers.lm`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

HQ_LABEL = "__label__hq"
LQ_LABEL = "__label__lq"
LN2 = math.log(2.0)


# --- inputs --------------------------------------------------------------------------------------


def check_models_and_scores(models: Sequence[str], scores: Sequence[float]) -> np.ndarray:
    """The benchmark scores as floats, after checking they fit the models; ValueError otherwise."""
    if len(models) != len(scores):
        raise ValueError(
            f"got {len(models)} models but {len(scores)} benchmark scores; "
            "give one score per model, in the same order"
        )
    if len(models) < 2:
        raise ValueError(f"PreSelect needs at least 2 models to rank, got {len(models)}")
    values = np.asarray(scores, dtype=np.float64)
    bad = [str(s) for s, v in zip(scores, values, strict=True) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"benchmark scores must be finite numbers; got {bad}")
    if np.unique(values).size < 2:
        raise ValueError(f"all benchmark scores are equal ({values[0]}): nothing to predict")
    return values


def parse_scores(text: str | Sequence[str]) -> list[float]:
    """Comma-separated (or repeated) benchmark scores as floats, naming any that is not a number."""
    parts = [p.strip() for item in ([text] if isinstance(text, str) else text) for p in item.split(",")]
    out = []
    for part in parts:
        try:
            out.append(float(part))
        except ValueError:
            raise ValueError(f"benchmark score {part!r} is not a number") from None
    return out


def column_names(models: Sequence[str]) -> list[str]:
    """One readable, unique name per model directory (its base name; the position on a clash)."""
    import re

    bases = [
        re.sub(r"[^0-9A-Za-z_]+", "_", os.path.basename(str(m).rstrip("/\\"))).strip("_") or "model"
        for m in models
    ]
    return [b if bases.count(b) == 1 else f"{b}_{i}" for i, b in enumerate(bases)]


# --- normalised loss -----------------------------------------------------------------------------


def bits_per_char(nll_nats: np.ndarray, n_chars: np.ndarray) -> np.ndarray:
    """Summed next-token loss of a document (nats) -> bits per character; NaN for empty documents."""
    nll = np.asarray(nll_nats, dtype=np.float64)
    chars = np.asarray(n_chars, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(chars > 0, nll / (LN2 * chars), np.nan)


# --- predictive strength -------------------------------------------------------------------------


def predictive_strength(bpc: np.ndarray, scores: Sequence[float]) -> np.ndarray:
    """Share of model pairs (with different scores) ordered alike by loss and by score, per document.

    `bpc` is (documents, models). A pair counts 1 when the better-scoring model has the lower bpc,
    1/2 on a bpc tie, 0 otherwise; 1.0 means the losses rank the models exactly as the benchmark
    does. Rows with a NaN give NaN.
    """
    losses = np.atleast_2d(np.asarray(bpc, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    if losses.shape[1] != s.size:
        raise ValueError(f"bpc has {losses.shape[1]} model columns but there are {s.size} scores")
    i, j = np.triu_indices(s.size, k=1)
    informative = s[i] != s[j]
    i, j = i[informative], j[informative]
    if i.size == 0:
        raise ValueError("all benchmark scores are equal: no model pair to order")
    # +1 when the pair agrees: the higher score has the lower loss
    agree = np.sign(losses[:, j] - losses[:, i]) * np.sign(s[i] - s[j])[None, :]
    return (agree.mean(axis=1) + 1.0) / 2.0


def loss_score_correlation(bpc: np.ndarray, scores: Sequence[float]) -> np.ndarray:
    """Pearson r between minus bpc and the scores, per document (0 where the losses are all equal)."""
    losses = -np.atleast_2d(np.asarray(bpc, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    x = losses - losses.mean(axis=1, keepdims=True)
    y = s - s.mean()
    denom = np.sqrt((x * x).sum(axis=1) * (y * y).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x @ y) / denom
    return np.where(denom > 0, r, np.where(np.isnan(denom), np.nan, 0.0))


def tiebreak_keys(ids: Sequence[str], seed: int = 0) -> np.ndarray:
    """A seeded 63-bit hash of each id: the last tie-break, the same on every run and worker."""
    keys = [
        int.from_bytes(
            hashlib.blake2b(f"{seed}\x00{i}".encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
        )
        >> 1
        for i in ids
    ]
    return np.asarray(keys, dtype=np.int64)


# --- labels --------------------------------------------------------------------------------------


Key = tuple[float, float, int]


@dataclass(frozen=True)
class LabelCut:
    """Where the labels start: documents with key >= `hq` are positives, key <= `lq` negatives.

    A key is (strength, loss-score correlation, id hash), compared lexicographically.
    """

    documents: int
    per_label: int
    hq: Key | None
    lq: Key | None


def labels_per_class(n_docs: int, top: float) -> int:
    """ceil(top * n) documents per label, at most half of them (so the two sets never overlap)."""
    if not 0.0 < top <= 0.5:
        raise ValueError(f"--top must be a fraction in (0, 0.5], got {top}")
    return min(n_docs // 2, math.ceil(top * n_docs - 1e-9))


def label_cut(strength: np.ndarray, corr: np.ndarray, tiebreak: np.ndarray, top: float) -> LabelCut:
    """The keys of the last positive and the last negative in the total order of all documents."""
    n = int(len(strength))
    k = labels_per_class(n, top)
    if k == 0:
        return LabelCut(n, 0, None, None)
    order = np.lexsort((tiebreak, corr, strength))  # ascending; the last key is the primary one

    def key(i: int) -> Key:
        return float(strength[i]), float(corr[i]), int(tiebreak[i])

    return LabelCut(n, k, hq=key(order[n - k]), lq=key(order[k - 1]))


def _compare(strength: np.ndarray, corr: np.ndarray, tiebreak: np.ndarray, cut: Key) -> np.ndarray:
    """-1, 0, +1 per document: its key below, equal to, above `cut` (lexicographic)."""
    out = np.zeros(len(strength), dtype=np.int8)
    undecided = np.ones(len(strength), dtype=bool)
    for values, c in ((strength, cut[0]), (corr, cut[1]), (tiebreak, cut[2])):
        above, below = undecided & (values > c), undecided & (values < c)
        out[above], out[below] = 1, -1
        undecided &= ~(above | below)
    return out


def assign_labels(
    strength: np.ndarray, corr: np.ndarray, tiebreak: np.ndarray, cut: LabelCut
) -> list[str | None]:
    """HQ_LABEL at or above `cut.hq`, LQ_LABEL at or below `cut.lq`, None in between."""
    labels: list[str | None] = [None] * len(strength)
    if cut.per_label == 0:
        return labels
    assert cut.hq is not None and cut.lq is not None  # set whenever documents are labelled
    hq = _compare(strength, corr, tiebreak, cut.hq) >= 0
    lq = _compare(strength, corr, tiebreak, cut.lq) <= 0
    for i in np.flatnonzero(hq):
        labels[i] = HQ_LABEL
    for i in np.flatnonzero(lq):
        labels[i] = LQ_LABEL
    return labels


def select_labels(
    strength: np.ndarray, corr: np.ndarray, tiebreak: np.ndarray, top: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the positives (strongest first) and negatives (weakest first), in memory."""
    k = labels_per_class(len(strength), top)
    order = np.lexsort((tiebreak, corr, strength))
    return order[::-1][:k], order[:k]


# --- one model's bits per character (torch) ------------------------------------------------------


class ModelBits:
    """Bits per character of each text under one local causal LM (loaded once by `setup`).

    When the tokenizer adds no special tokens, its BOS (else EOS) token is put before each document,
    so the first token is predicted too and every character of the text is paid for; proxy models
    are trained on documents joined by that token. Long documents are cut into chunks of the
    model's context, overlapping by one token; batches group chunks of similar length.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        device: str | None = None,
        dtype: str | None = None,
        max_tokens: int | None = None,
        batch_tokens: int = 16384,
        max_batch_size: int = 64,
        threads: int | None = None,
    ) -> None:
        self.model_dir = str(model_dir)
        self.device = device
        self.dtype = dtype
        self.max_tokens = max_tokens
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.threads = threads

    def setup(self) -> ModelBits:
        if getattr(self, "model_", None) is not None:
            return self
        import torch
        from transformers.utils import logging as hf_logging

        from scorers import lm

        hf_logging.disable_progress_bar()
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model_, self.tokenizer_ = lm.load_causal_lm(self.model_dir, self.device, self.dtype)
        self.tokenizer_.model_max_length = int(1e30)  # documents are chunked here, not truncated
        self.context_ = lm.context_length(self.model_, self.max_tokens)
        self.prefix_id_ = _document_prefix(self.tokenizer_)
        return self

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        from scorers import lm

        ids = lm.tokenize(self.tokenizer_, texts)
        if self.prefix_id_ is not None:
            ids = [[self.prefix_id_, *doc] for doc in ids]
        return ids

    def nll(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Summed next-token loss (nats) and predicted tokens of each text."""
        import torch

        from scorers import lm

        self.setup()
        plan = lm.ChunkPlan([], [], [])
        for doc, ids in enumerate(self.token_ids(texts)):
            plan.n_tokens.append(len(ids))
            for chunk in lm.chunk_ids(ids, self.context_):
                plan.chunks.append(chunk)
                plan.doc_index.append(doc)
        sums = np.zeros(len(texts))
        counts = np.zeros(len(texts), dtype=np.int64)
        device = next(self.model_.parameters()).device
        with torch.inference_mode():
            for batch in plan.batches(self.batch_tokens, self.max_batch_size):
                chunks = [plan.chunks[i] for i in batch]
                padded, mask = lm.pad_batch(chunks, lm.pad_id(self.tokenizer_), device)
                hidden = lm.hidden_states(self.model_, padded, mask)
                nll, n = lm.token_nll_sums(self.model_, hidden, padded, mask)
                docs = np.asarray([plan.doc_index[i] for i in batch])
                np.add.at(sums, docs, nll.double().cpu().numpy())
                np.add.at(counts, docs, n.cpu().numpy())
        return sums, counts

    def score_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Bits per character of each text (NaN when no token of it could be predicted)."""
        if not texts:
            return np.zeros(0)
        sums, counts = self.nll(texts)
        bpc = bits_per_char(sums, np.asarray([len(t) for t in texts]))
        return np.where(counts > 0, bpc, np.nan)


def _document_prefix(tokenizer: Any) -> int | None:
    """BOS (else EOS) id to put before documents, or None when the tokenizer adds its own specials."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    if len(special) > len(plain):
        return None
    for value in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return None
