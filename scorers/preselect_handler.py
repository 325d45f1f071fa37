"""Beam glue for PreSelect's loss pass: the text-column ModelHandler around one model's `ModelBits`.

One handler per model, and one RunInference per handler, chained: each appends its model's `bpc_<name>`
column to the Arrow record batches that flow through, so no join by id is needed and every worker
loads each model once. Beam's `BatchElements` sizes batches by estimated tokens; inside a batch,
`ModelBits` regroups the chunks of all its documents by length, so little is spent on padding.
"""

from __future__ import annotations

import functools
import os

from scorers.handler import TEXT_FIELD, TextColumnModelHandler
from scorers.preselect import ModelBits


class BitsPerCharModelHandler(TextColumnModelHandler):
    """Loads one causal LM (directory or .gguf) per worker; appends `column` (float64 bits per character)."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        column: str,
        device: str | None = None,
        dtype: str | None = None,
        max_tokens: int | None = None,
        batch_tokens: int = 16384,
        max_batch_tokens: int = 131072,
        threads: int | None = None,
        text_field: str = TEXT_FIELD,
        large_model: bool = False,
    ):
        load = functools.partial(
            ModelBits,
            str(model_dir),
            device=device,
            dtype=dtype,
            max_tokens=max_tokens,
            batch_tokens=batch_tokens,
            threads=threads,
        )
        super().__init__(
            load,
            column,
            text_field=text_field,
            max_batch_tokens=max_batch_tokens,
            large_model=large_model,
            namespace="PreSelect",
        )
