"""The AttentionInfluence scorer in the score job: Beam's RunInference with the scorer's ModelHandler
(and `score_documents_table`, the same scores and per-domain selection in memory, without a job).

RunInference gives batching by estimated tokens, one model per worker process and GPU workers on
Dataflow; a batch that fails to score goes to the dead-letter output, one row per document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import apache_beam as beam

from pipeline import schema as S
from pipeline.scoring import ScorerConfig, failed_batch_rows

STAGE = "score_attention_influence"
HANDLER_OPTIONS = {
    "device": str,
    "dtype": str,
    "max_tokens": int,
    "batch_tokens": int,
    "max_batch_tokens": int,
}


class ScoreWithAttentionInfluence(beam.PTransform):
    """Record batches -> {"scored": batches + `score_attention_influence`, "dead_letter": rows}."""

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        if not config.model:
            raise ValueError("the attention-influence scorer needs --model DIR|FILE.gguf (a local causal LM)")
        heads = config.options.get("heads")
        if not heads:
            raise ValueError(
                "the attention-influence scorer needs --heads HEADS.json "
                "(from `datamixer attention-influence heads`)"
            )
        unknown = set(config.options) - {"heads", *HANDLER_OPTIONS}
        if unknown:
            raise ValueError(
                f"unknown attention-influence option(s) {sorted(unknown)}; "
                f"known: heads, {', '.join(HANDLER_OPTIONS)}"
            )
        self._model = config.model
        self._heads = heads
        self._kwargs = {k: HANDLER_OPTIONS[k](v) for k, v in config.options.items() if k in HANDLER_OPTIONS}

    def expand(self, batches: beam.PCollection) -> dict[str, beam.PCollection]:
        from apache_beam.ml.inference.base import RunInference

        from scorers.attention_influence_handler import AttentionInfluenceModelHandler

        handler = AttentionInfluenceModelHandler(
            self._model,
            self._heads,
            text_field=S.TEXT,
            score_field=S.score_column("attention-influence"),
            **self._kwargs,
        )
        scored, errors = batches | "RunInference" >> RunInference(handler).with_exception_handling()
        dead = errors.failed_inferences | "FailedDocs" >> beam.FlatMap(failed_batch_rows, STAGE)
        return {"scored": scored, "dead_letter": dead}


def score_documents_table(
    scorer: Any,
    rows: Sequence[dict[str, str]],
    texts: Sequence[str],
    keep_top: float,
    docs_per_call: int = 512,
    track: Callable[[Iterable[int]], Iterable[int]] = iter,
) -> Any:
    """`rows` (id, domain, source) with `n_tokens`, the score, `loss_base`, `loss_masked` and `keep` (the
    top `keep_top` of each domain by score), scoring `docs_per_call` texts at a time with a set-up
    `AttentionInfluenceScorer`; `track` wraps the batch starts (a progress bar)."""
    import numpy as np
    import pandas as pd

    from pipeline.select import Selection, keep_top_per_domain

    Selection(keep_top=keep_top)  # the same check of the fraction as the job's
    parts = [
        scorer.score_documents(texts[i : i + docs_per_call])
        for i in track(range(0, len(texts), docs_per_call))
    ]
    table = pd.DataFrame(list(rows), columns=[S.ID, S.DOMAIN, "source"])
    column = S.score_column("attention-influence")
    for name, attribute, dtype in (
        (S.N_TOKENS, "n_tokens", np.int64),
        (column, "score", np.float64),
        ("loss_base", "loss_base", np.float64),
        ("loss_masked", "loss_masked", np.float64),
    ):
        table[name] = np.concatenate([getattr(p, attribute) for p in parts]) if parts else np.zeros(0, dtype)
    table[S.KEEP] = keep_top_per_domain(table[column].to_numpy(float), table[S.DOMAIN].to_numpy(), keep_top)
    return table
