"""The AttentionInfluence score: (L_masked - L_base) / L_base per document, chunks weighted by tokens.

Layers below the first masked layer run once and are replayed in the masked pass (the shared prefix).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scorers import lm
from scorers.attention_influence.heads import load_heads
from scorers.attention_influence.masking import (
    ATTN_IMPLEMENTATION,
    Head,
    head_count,
    prepare_model,
    register_attention,
    uniform_heads,
)


@dataclass
class DocumentScores:
    """Per document: AttentionInfluence score, loss without and with masking (nats/token), token count."""

    score: np.ndarray
    loss_base: np.ndarray
    loss_masked: np.ndarray
    n_tokens: np.ndarray


class AttentionInfluenceScorer:
    """Scores documents with a local causal LM whose retrieval heads are masked.

    `setup()` loads the model once; `score_batch(texts)` returns one score per text (NaN for texts
    of under two tokens). Chunks of all texts in a call are batched by similar length.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None,
        heads: Sequence[Head] | str | os.PathLike[str],
        device: str | None = None,
        dtype: str | None = None,
        max_tokens: int | None = None,
        batch_tokens: int = lm.DEFAULT_BATCH_TOKENS,
        max_batch_size: int = lm.DEFAULT_MAX_BATCH_SIZE,
    ):
        self.model_dir = model_dir
        self.heads = heads
        self.device = device
        self.dtype = dtype
        self.max_tokens = max_tokens
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.model_: Any = None
        self.tokenizer_: Any = None
        self.heads_: list[Head] = []

    @classmethod
    def from_model(
        cls, model: Any, tokenizer: Any, heads: Sequence[Head], **kwargs: Any
    ) -> AttentionInfluenceScorer:
        """A scorer around an already loaded model (same weights; its attention function is switched)."""
        scorer = cls(None, heads, **kwargs)
        scorer.model_, scorer.tokenizer_ = prepare_model(model), tokenizer
        scorer.heads_ = scorer._check_heads()
        return scorer

    def setup(self) -> AttentionInfluenceScorer:
        """Load the model and tokenizer (once)."""
        if self.model_ is None:
            if self.model_dir is None:
                raise ValueError("no model_dir: give a model directory or .gguf, or use from_model")
            register_attention()
            self.model_, self.tokenizer_ = lm.load_causal_lm(
                self.model_dir, self.device, self.dtype, attn_implementation=ATTN_IMPLEMENTATION
            )
            self.heads_ = self._check_heads()
        return self

    def _check_heads(self) -> list[Head]:
        if isinstance(self.heads, (str, os.PathLike)):
            return load_heads(self.heads, self.model_)
        heads = [(int(layer), int(head)) for layer, head in self.heads]
        n_layers, n_heads = head_count(self.model_)
        if not heads or any(not (0 <= a < n_layers and 0 <= b < n_heads) for a, b in heads):
            raise ValueError(f"heads must be non-empty (layer, head) pairs within {n_layers} x {n_heads}")
        return heads

    @property
    def first_masked_layer(self) -> int:
        return min(layer for layer, _ in self.heads_)

    def score_batch(self, texts: Sequence[str]) -> np.ndarray:
        """AttentionInfluence score of each text (float64)."""
        return np.asarray(self.score_documents(texts).score, dtype=np.float64)

    @torch.inference_mode()
    def score_documents(self, texts: Sequence[str]) -> DocumentScores:
        """Scores, both losses and token counts of each text."""
        self.setup()
        model, tokenizer = self.model_, self.tokenizer_
        device = next(model.parameters()).device
        plan = lm.ChunkPlan.build(tokenizer, texts, lm.context_length(model, self.max_tokens))
        sums = np.zeros((2, len(texts)))
        counts = np.zeros(len(texts))
        for batch in plan.batches(self.batch_tokens, self.max_batch_size):
            ids, mask = lm.pad_batch([plan.chunks[i] for i in batch], lm.pad_id(tokenizer), device)
            (base, masked), n = self._two_pass(ids, mask)
            for row, chunk in enumerate(batch):
                doc = plan.doc_index[chunk]
                sums[0, doc] += float(base[row])
                sums[1, doc] += float(masked[row])
                counts[doc] += int(n[row])
        with np.errstate(invalid="ignore", divide="ignore"):
            loss_base = np.where(counts > 0, sums[0] / np.maximum(counts, 1), np.nan)
            loss_masked = np.where(counts > 0, sums[1] / np.maximum(counts, 1), np.nan)
            score = (loss_masked - loss_base) / loss_base
        return DocumentScores(score, loss_base, loss_masked, np.asarray(plan.n_tokens, dtype=np.int64))

    def _two_pass(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Summed token NLL per row unmasked and masked; layers below the first masked one run once."""
        model = self.model_
        layers = lm.decoder_layers(model)
        first = self.first_masked_layer
        store: dict[str, Any] = {}
        capture = lm.capture_output(layers[first - 1], store) if first > 0 else contextlib.nullcontext()
        with capture:
            hidden = lm.hidden_states(model, ids, mask)
        base, n = lm.token_nll_sums(model, hidden, ids, mask)
        replay = (
            lm.replay_layers(layers[:first], store.get("output")) if first > 0 else contextlib.nullcontext()
        )
        with uniform_heads(model, self.heads_, right_padded=True), replay:
            hidden = lm.hidden_states(model, ids, mask)
        masked, _ = lm.token_nll_sums(model, hidden, ids, mask)
        return (base, masked), n
