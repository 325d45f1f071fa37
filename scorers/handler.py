"""One Beam RunInference ModelHandler for every torch text scorer: a load function and an output column.

`load()` returns an object with `setup()` (loads weights, returns itself) and `score_batch(texts)` (one
float per text): the `pipeline.scoring.BatchScorer` contract. The handler calls `load().setup()` once
per worker process, scores all texts of a Beam batch in one call (so the scorer can regroup chunks of
similar length across elements) and appends the scores. Elements are Arrow record batches with a text
column, or dicts / NamedTuples / beam.Row records with a text field (each comes back as a dict).
Beam sizes batches by estimated tokens (characters / 4) up to `max_batch_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
from apache_beam.ml.inference.base import ModelHandler

TEXT_FIELD = "text"
CHARS_PER_TOKEN = 4


def _as_dict(record: Any, field: str) -> dict[str, Any]:
    if isinstance(record, Mapping):
        return dict(record)
    for method in ("_asdict", "as_dict"):
        if hasattr(record, method):
            return dict(getattr(record, method)())
    raise TypeError(
        f"expected a dict, record or pyarrow.RecordBatch with {field!r}, got {type(record).__name__}"
    )


def element_texts(element: Any, field: str) -> list[str]:
    """The texts of one element: a record batch's column (None -> ""), or a record's field."""
    if isinstance(element, pa.RecordBatch):
        if field not in element.schema.names:
            raise ValueError(f"record batch has no {field!r} column (columns: {element.schema.names})")
        return [t or "" for t in element.column(field).to_pylist()]
    return [str(_as_dict(element, field).get(field) or "")]


class TextColumnModelHandler(ModelHandler[Any, Any, Any]):
    """RunInference handler: `load().setup()` once per worker; appends `column` (float64) to elements."""

    def __init__(
        self,
        load: Callable[[], Any],
        column: str,
        text_field: str = TEXT_FIELD,
        max_batch_tokens: int = 65536,
        large_model: bool = False,
        namespace: str = "datamixer",
    ):
        super().__init__(
            min_batch_size=1,
            max_batch_size=max_batch_tokens,
            element_size_fn=self.approximate_tokens,
            large_model=large_model,
        )
        self.load = load
        self.column = column
        self.text_field = text_field
        self.namespace = namespace

    def approximate_tokens(self, element: Any) -> int:
        """Cheap token estimate of an element, used to size Beam batches before tokenizing."""
        return sum(1 + len(t) // CHARS_PER_TOKEN for t in element_texts(element, self.text_field))

    def load_model(self) -> Any:
        """Build and set up the scorer once per worker process."""
        return self.load().setup()

    def run_inference(
        self, batch: Sequence[Any], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[Any]:
        """Score every text of the batch in one call, then attach each score to its element."""
        texts = [element_texts(element, self.text_field) for element in batch]
        scores = model.score_batch([t for group in texts for t in group])
        if len(scores) != sum(len(group) for group in texts):
            raise ValueError(f"scorer returned {len(scores)} scores for {sum(map(len, texts))} texts")
        start = 0
        for element, group in zip(batch, texts, strict=True):
            own = scores[start : start + len(group)]
            start += len(group)
            if isinstance(element, pa.RecordBatch):
                yield element.append_column(self.column, pa.array(own, pa.float64()))
            else:
                record = _as_dict(element, self.text_field)
                record[self.column] = float(own[0])
                yield record

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return int(sum(len(t.encode()) for element in batch for t in element_texts(element, self.text_field)))

    def get_metrics_namespace(self) -> str:
        return self.namespace
