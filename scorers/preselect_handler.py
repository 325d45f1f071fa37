"""Beam glue for PreSelect's loss pass: a RunInference ModelHandler for one model's bits per character.

One handler per model, and one RunInference per handler, chained: each appends its model's `bpc_<name>`
column to the Arrow record batches that flow through, so no join by id is needed and every worker
loads each model once. Beam's `BatchElements` sizes batches by estimated tokens; inside a batch,
`ModelBits` regroups the chunks of all its documents by length, so little is spent on padding.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
from apache_beam.ml.inference.base import ModelHandler

from scorers.preselect import ModelBits

TEXT_FIELD = "text"
CHARS_PER_TOKEN = 4


def _texts(batch: pa.RecordBatch, field: str) -> list[str]:
    if not isinstance(batch, pa.RecordBatch):
        raise TypeError(f"expected a pyarrow.RecordBatch with a {field!r} column, got {type(batch).__name__}")
    if field not in batch.schema.names:
        raise ValueError(f"record batch has no {field!r} column (columns: {batch.schema.names})")
    return [t or "" for t in batch.column(field).to_pylist()]


class BitsPerCharModelHandler(ModelHandler[pa.RecordBatch, pa.RecordBatch, ModelBits]):
    """Loads one causal LM per worker; appends `column` (float64 bits per character) to each batch."""

    def __init__(self, model_dir: str | os.PathLike[str], column: str, device: str | None = None,
                 dtype: str | None = None, max_tokens: int | None = None, batch_tokens: int = 16384,
                 max_batch_tokens: int = 131072, threads: int | None = None, text_field: str = TEXT_FIELD,
                 large_model: bool = False):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_tokens,
                         element_size_fn=self.approximate_tokens, large_model=large_model)
        self.model_dir = str(model_dir)
        self.column = column
        self.device = device
        self.dtype = dtype
        self.max_tokens = max_tokens
        self.batch_tokens = batch_tokens
        self.threads = threads
        self.text_field = text_field

    def approximate_tokens(self, batch: pa.RecordBatch) -> int:
        """Cheap token estimate (characters / 4) used by BatchElements before tokenizing."""
        return sum(1 + len(t) // CHARS_PER_TOKEN for t in _texts(batch, self.text_field))

    def load_model(self) -> ModelBits:
        return ModelBits(self.model_dir, device=self.device, dtype=self.dtype, max_tokens=self.max_tokens,
                         batch_tokens=self.batch_tokens, threads=self.threads).setup()

    def run_inference(self, batch: Sequence[pa.RecordBatch], model: ModelBits,
                      inference_args: dict[str, Any] | None = None) -> Iterable[pa.RecordBatch]:
        """All texts of the Beam batch in one call (so chunks bucket across record batches)."""
        texts = [_texts(element, self.text_field) for element in batch]
        bpc = model.score_batch([t for group in texts for t in group])
        start = 0
        for element, group in zip(batch, texts, strict=True):
            own = bpc[start:start + len(group)]
            start += len(group)
            yield element.append_column(self.column, pa.array(own, pa.float64()))

    def get_num_bytes(self, batch: Sequence[pa.RecordBatch]) -> int:
        return int(sum(len(t.encode()) for element in batch for t in _texts(element, self.text_field)))

    def get_metrics_namespace(self) -> str:
        return "PreSelect"
