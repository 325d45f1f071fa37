"""Retrieval heads: every head's retrieval score on probes (Wu et al. 2024) and the top fraction kept.

The score of a head is the fraction of answer tokens for which its argmax attention, at the position that
predicts the token, lands inside the needle on a token with the same copy key. Only the answer positions'
argmax is recorded (`masking.recording_argmax`), and probes are batched by length.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scorers import lm
from scorers.attention_influence.masking import Head, head_count, prepare_model, recording_argmax
from scorers.attention_influence.probes import Probe, build_probes, copy_ceiling

DEFAULT_TOP_FRACTION = 0.05
SCORE_METHOD = (
    "Wu et al. 2024 retrieval score, teacher-forced on the gold value: the fraction of answer "
    "tokens for which the head's argmax attention, at the position predicting the token, lands "
    "on the needle (the gold value inside the JSON context) at a token with the same text once a "
    "leading space and quotes are stripped"
)


@torch.inference_mode()
def answer_argmax(
    model: Any,
    probes: Sequence[Probe],
    pad_id: int = 0,
    batch_tokens: int = lm.DEFAULT_BATCH_TOKENS,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[Probe, np.ndarray, np.ndarray]]:
    """Per probe with an answer: (probe, every head's argmax key [L, H, A], the A answer token positions).

    Probes run in batches of similar length; the step predicting answer token p is query position p - 1.
    `on_batch(n)` is called after each batch of `n` probes (progress).
    """
    prepare_model(model)
    device = next(model.parameters()).device
    lengths = [len(p.input_ids) for p in probes]
    for batch in lm.length_buckets(lengths, batch_tokens, lm.DEFAULT_MAX_BATCH_SIZE):
        chosen = [probes[i] for i in batch]
        targets = [np.arange(max(p.answer[0], 1), p.answer[1]) for p in chosen]
        positions = torch.zeros((len(chosen), max(1, max(len(t) for t in targets))), dtype=torch.long)
        for row, t in enumerate(targets):
            positions[row, : len(t)] = torch.from_numpy(t - 1)
        ids, mask = lm.pad_batch([p.input_ids for p in chosen], pad_id, device)
        with recording_argmax(model, positions.to(device)) as records:
            lm.hidden_states(model, ids, mask)
        argmax = torch.stack([r["argmax"] for r in records], dim=1).cpu().numpy()  # [B, L, H, A]
        for row, (probe, t) in enumerate(zip(chosen, targets, strict=True)):
            if len(t):
                yield probe, argmax[row, :, :, : len(t)], t
        if on_batch is not None:
            on_batch(len(chosen))


def copy_hits(probe: Probe, argmax: np.ndarray, targets: np.ndarray, keys: Sequence[int]) -> np.ndarray:
    """Per head [L, H]: fraction of answer tokens whose argmax lands in the needle on a same-key token."""
    key = np.asarray(keys)
    in_needle = (argmax >= probe.needle[0]) & (argmax < probe.needle[1])
    return (in_needle & (key[argmax] == key[targets])).mean(axis=-1)


def retrieval_head_scores(
    model: Any,
    probes: Sequence[Probe],
    pad_id: int = 0,
    batch_tokens: int = lm.DEFAULT_BATCH_TOKENS,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Mean retrieval score of every head over the probes: array [layers, heads] in [0, 1].
    `on_batch(n)` is called after each batch of `n` probes (progress)."""
    found = answer_argmax(model, probes, pad_id, batch_tokens, on_batch)
    hits = [copy_hits(p, where, t, p.keys()) for p, where, t in found]
    if not hits:
        raise ValueError("no probe has an answer token to score")
    return np.mean(hits, axis=0)


def select_heads(scores: np.ndarray, top_fraction: float = DEFAULT_TOP_FRACTION) -> list[Head]:
    """The top `top_fraction` of heads by score (at least one); ties go to the lower (layer, head)."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    flat = np.asarray(scores, dtype=float).ravel()
    k = max(1, int(round(top_fraction * flat.size)))
    order = np.lexsort((np.arange(flat.size), -flat))[:k]
    n_heads = scores.shape[1]
    return sorted((int(i // n_heads), int(i % n_heads)) for i in order)


def heads_document(scores: np.ndarray, heads: Sequence[Head], provenance: dict[str, Any]) -> dict[str, Any]:
    """The HEADS.json content: selected heads, every head's score, and how they were computed."""
    return {
        "selected": [list(h) for h in heads],
        "scores": np.round(np.asarray(scores, dtype=float), 6).tolist(),
        "n_layers": int(scores.shape[0]),
        "n_heads": int(scores.shape[1]),
        "method": SCORE_METHOD,
        "provenance": provenance,
    }


def load_heads(path: str | os.PathLike[str], model: Any | None = None) -> list[Head]:
    """Selected (layer, head) pairs from a HEADS.json; checked against `model` when given."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such heads file")
    try:
        data = json.loads(path.read_text())
        heads = [(int(layer), int(head)) for layer, head in data["selected"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: expected JSON with 'selected': [[layer, head], ...]") from exc
    if not heads:
        raise ValueError(f"{path}: 'selected' is empty")
    if model is not None:
        n_layers, n_heads = head_count(model)
        for layer, head in heads:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise ValueError(
                    f"{path}: head ({layer}, {head}) is outside the model's "
                    f"{n_layers} layers x {n_heads} heads"
                )
    return heads


@dataclass
class Detection:
    """Result of `detect_heads`: every head's score, the selected heads and how they were found."""

    scores: np.ndarray
    selected: list[Head]
    provenance: dict[str, Any]

    def document(self) -> dict[str, Any]:
        return heads_document(self.scores, self.selected, self.provenance)


def detect_heads(
    model: Any,
    tokenizer: Any,
    sentences: Sequence[str],
    n_probes: int,
    max_tokens: int,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    seed: int = 0,
    normalize: bool = True,
    batch_tokens: int = lm.DEFAULT_BATCH_TOKENS,
    on_batch: Callable[[int], None] | None = None,
) -> Detection:
    """Build probes of at most `max_tokens` (capped at the model's context), score every head, keep the top.

    Provenance records the probe settings, the copy ceiling (`probes.copy_ceiling`) and probes per second.
    """
    if n_probes < 1:
        raise ValueError(f"need at least one probe, got {n_probes}")
    limit = lm.context_length(model, max_tokens)
    probes = build_probes(
        tokenizer, sentences, n_probes=n_probes, max_tokens=limit, seed=seed, normalize=normalize
    )
    start = time.perf_counter()
    scores = retrieval_head_scores(model, probes, lm.pad_id(tokenizer), batch_tokens, on_batch)
    seconds = time.perf_counter() - start
    tokens = sum(len(p.input_ids) for p in probes)
    provenance = {
        "probes": n_probes,
        "max_tokens": limit,
        "top_fraction": top_fraction,
        "seed": seed,
        "copy_match": "normalised token text" if normalize else "token id",
        "copy_ceiling": round(copy_ceiling(probes), 4),
        "mean_probe_tokens": tokens / len(probes),
        "seconds": round(seconds, 2),
        "probes_per_s": round(len(probes) / seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
    }
    return Detection(scores, select_heads(scores, top_fraction), provenance)
