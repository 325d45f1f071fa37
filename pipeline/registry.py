"""The scorer catalog: a scorer name -> a function building its scoring PTransform from a `ScorerConfig`.

The contract those PTransforms follow (and `ScoreBatches`, `failed_batch_rows`) is in
`pipeline.scoring`; its names are re-exported here for older importers. Adding a scorer is one entry:

    SCORERS["attention-influence"] = build_attention_influence   # (ScorerConfig) -> PTransform
"""

from __future__ import annotations

from collections.abc import Callable

import apache_beam as beam

from pipeline.scoring import BatchScorer, ScoreBatches, ScorerConfig, batch_failure_rows, failed_batch_rows

__all__ = [
    "SCORERS",
    "BatchScorer",
    "ScoreBatches",
    "ScorerConfig",
    "batch_failure_rows",
    "build_attention_influence",
    "build_fasttext",
    "failed_batch_rows",
    "scoring_transform",
]


def build_fasttext(config: ScorerConfig) -> beam.PTransform:
    """fastText quality classifier: probability of `config.label`, clamped to [0, 1]."""
    from pipeline.remote import local_copy
    from scorers.fasttext import FastTextScorer

    if not config.model:
        raise ValueError("the fasttext scorer needs --model PATH (a fastText .bin)")
    FastTextScorer(local_copy(config.model), config.label).check()  # fail at submission, not on workers
    model, label = config.model, config.label
    return ScoreBatches(lambda: FastTextScorer(local_copy(model), label), config.name)


def build_attention_influence(config: ScorerConfig) -> beam.PTransform:
    """AttentionInfluence through RunInference (torch is imported only when the job runs)."""
    from pipeline.attention_influence import ScoreWithAttentionInfluence

    return ScoreWithAttentionInfluence(config)


SCORERS: dict[str, Callable[[ScorerConfig], beam.PTransform]] = {
    "fasttext": build_fasttext,
    "attention-influence": build_attention_influence,
}


def scoring_transform(config: ScorerConfig) -> beam.PTransform:
    """The scoring PTransform of a registered scorer; an unknown name lists the known ones."""
    try:
        builder = SCORERS[config.name]
    except KeyError:
        raise ValueError(f"unknown scorer {config.name!r}; known scorers: {sorted(SCORERS)}") from None
    return builder(config)
