"""What the selection stages share: the `drop_reason` a stage sets (an earlier stage's reason
stands), and batches brought to one column layout before they are staged for writing."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as S


def merge_reasons(batch: pa.RecordBatch, reasons: list[str | None]) -> pa.RecordBatch:
    """Set `drop_reason` where it is still null (an earlier stage's reason stands)."""
    new = pa.array(reasons, pa.string())
    if S.DROP_REASON in batch.schema.names:
        index = batch.schema.get_field_index(S.DROP_REASON)
        merged = pc.coalesce(batch.column(index), new)
        return batch.set_column(index, S.DROP_REASON, merged)
    return batch.append_column(S.DROP_REASON, new)


def pending(batch: pa.RecordBatch) -> list[bool]:
    """Which documents no earlier stage has dropped."""
    if S.DROP_REASON not in batch.schema.names:
        return [True] * batch.num_rows
    return [r is None for r in batch.column(S.DROP_REASON).to_pylist()]


def conform(batch: pa.RecordBatch, columns: list[str], schema: pa.Schema) -> pa.RecordBatch:
    """`batch` with exactly `columns` in order; a column no step added is all nulls of its type."""
    n = batch.num_rows
    names = batch.schema.names
    arrays = [batch.column(c) if c in names else pa.nulls(n, schema.field(c).type) for c in columns]
    return pa.RecordBatch.from_arrays(arrays, names=columns)
