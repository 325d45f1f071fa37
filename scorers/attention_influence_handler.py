"""Beam glue for AttentionInfluence: a RunInference ModelHandler and a drop-in PTransform.

Beam gives batching (`BatchElements` bounded by estimated tokens), one model per worker process and
GPU workers on Dataflow; inside a batch the scorer regroups chunks of similar length so that little
is spent on padding. Elements are dicts (or NamedTuple / beam.Row records) with a `text` field, or
Arrow record batches with a `text` column; each comes back with `score_attention_influence` added.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.ml.inference.base import ModelHandler, RunInference

from scorers.attention_influence import AttentionInfluenceScorer, Head

SCORE_COLUMN = "score_attention_influence"
TEXT_FIELD = "text"
CHARS_PER_TOKEN = 4


def _as_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, Mapping):
        return dict(record)
    for method in ("_asdict", "as_dict"):
        if hasattr(record, method):
            return dict(getattr(record, method)())
    raise TypeError(f"expected a dict, record or pyarrow.RecordBatch with {TEXT_FIELD!r}, "
                    f"got {type(record).__name__}")


def _texts(element: Any, field: str) -> list[str]:
    if isinstance(element, pa.RecordBatch):
        if field not in element.schema.names:
            raise ValueError(f"record batch has no {field!r} column (columns: {element.schema.names})")
        return [t or "" for t in element.column(field).to_pylist()]
    return [str(_as_dict(element).get(field) or "")]


class AttentionInfluenceModelHandler(ModelHandler[Any, Any, AttentionInfluenceScorer]):
    """RunInference handler loading one `AttentionInfluenceScorer` per worker.

    Beam batches are sized in estimated tokens (characters / 4): `BatchElements` adds up
    `approximate_tokens` per element up to `max_batch_tokens`. Within a batch the scorer runs forward
    passes of at most `batch_tokens` padded tokens over chunks of similar length.
    """

    def __init__(self, model_dir: str | os.PathLike[str], heads: str | os.PathLike[str] | Sequence[Head],
                 device: str | None = None, dtype: str | None = None, max_tokens: int | None = None,
                 batch_tokens: int = 16384, max_batch_tokens: int = 65536, text_field: str = TEXT_FIELD,
                 score_field: str = SCORE_COLUMN, large_model: bool = False):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_tokens,
                         element_size_fn=self.approximate_tokens, large_model=large_model)
        self.model_dir = str(model_dir)
        self.heads: str | os.PathLike[str] | list[Head] = (
            heads if isinstance(heads, (str, os.PathLike)) else [(int(h[0]), int(h[1])) for h in heads]
        )
        self.device = device
        self.dtype = dtype
        self.max_tokens = max_tokens
        self.batch_tokens = batch_tokens
        self.text_field = text_field
        self.score_field = score_field

    def approximate_tokens(self, element: Any) -> int:
        """Cheap token estimate of an element, used to size Beam batches before tokenizing."""
        return sum(1 + len(t) // CHARS_PER_TOKEN for t in _texts(element, self.text_field))

    def load_model(self) -> AttentionInfluenceScorer:
        """Load the model once per worker process."""
        return AttentionInfluenceScorer(self.model_dir, self.heads, device=self.device, dtype=self.dtype,
                                        max_tokens=self.max_tokens, batch_tokens=self.batch_tokens).setup()

    def run_inference(self, batch: Sequence[Any], model: AttentionInfluenceScorer,
                      inference_args: dict[str, Any] | None = None) -> Iterable[Any]:
        """Score every text of the batch in one call, then attach each score to its element."""
        texts = [_texts(element, self.text_field) for element in batch]
        scores = model.score_batch([t for group in texts for t in group])
        start = 0
        for element, group in zip(batch, texts, strict=True):
            own = scores[start:start + len(group)]
            start += len(group)
            if isinstance(element, pa.RecordBatch):
                yield element.append_column(self.score_field, pa.array(own, pa.float64()))
            else:
                record = _as_dict(element)
                record[self.score_field] = float(own[0])
                yield record

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return int(sum(len(t.encode()) for element in batch for t in _texts(element, self.text_field)))

    def get_metrics_namespace(self) -> str:
        return "AttentionInfluence"


class ScoreAttentionInfluence(beam.PTransform):
    """PCollection of dicts/records (or record batches) with `text` -> the same with the score added."""

    def __init__(self, model_dir: str | os.PathLike[str], heads: str | os.PathLike[str] | Sequence[Head],
                 **handler_kwargs: Any):
        super().__init__()
        self.handler = AttentionInfluenceModelHandler(model_dir, heads, **handler_kwargs)

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "RunInference" >> RunInference(self.handler)


