"""Beam glue for AttentionInfluence: the text-column ModelHandler around `AttentionInfluenceScorer`.

Beam gives batching (`BatchElements` bounded by estimated tokens), one model per worker process and
GPU workers on Dataflow (`device="cuda"`); inside a batch the scorer regroups chunks of similar length
so that little is spent on padding. Elements are dicts (or NamedTuple / beam.Row records) with a `text`
field, or Arrow record batches with a `text` column; each comes back with `score_attention_influence`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from scorers.attention_influence.masking import Head
from scorers.attention_influence.scorer import AttentionInfluenceScorer
from scorers.handler import TEXT_FIELD, TextColumnModelHandler

SCORE_COLUMN = "score_attention_influence"


class AttentionInfluenceModelHandler(TextColumnModelHandler):
    """RunInference handler loading one `AttentionInfluenceScorer` per worker (`model_dir`: dir or .gguf).

    Within a Beam batch the scorer runs forward passes of at most `batch_tokens` padded tokens.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        heads: str | os.PathLike[str] | Sequence[Head],
        device: str | None = None,
        dtype: str | None = None,
        max_tokens: int | None = None,
        batch_tokens: int = 16384,
        max_batch_tokens: int = 65536,
        text_field: str = TEXT_FIELD,
        score_field: str = SCORE_COLUMN,
        large_model: bool = False,
    ):
        heads = heads if isinstance(heads, (str, os.PathLike)) else [(int(a), int(b)) for a, b in heads]
        load = functools.partial(
            AttentionInfluenceScorer,
            str(model_dir),
            heads,
            device=device,
            dtype=dtype,
            max_tokens=max_tokens,
            batch_tokens=batch_tokens,
        )
        super().__init__(
            load,
            score_field,
            text_field=text_field,
            max_batch_tokens=max_batch_tokens,
            large_model=large_model,
            namespace="AttentionInfluence",
        )


class ScoreAttentionInfluence(beam.PTransform):
    """PCollection of dicts/records (or record batches) with `text` -> the same with the score added."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        heads: str | os.PathLike[str] | Sequence[Head],
        **handler_kwargs: Any,
    ):
        super().__init__()
        self.handler = AttentionInfluenceModelHandler(model_dir, heads, **handler_kwargs)

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "RunInference" >> RunInference(self.handler)
