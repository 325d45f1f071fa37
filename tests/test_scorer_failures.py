"""Every scorer's failure path: a scorer (or model handler) that raises dead-letters each document of the
batch with the exception's repr as the error text, never the traceback tuple."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that

from pipeline import schema as S
from pipeline.scoring import ScoreBatches, ScorerConfig, failed_batch_rows

MESSAGE = "model exploded on purpose"


def _batch(n: int = 3) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [
            {
                S.ID: f"d{i}",
                S.DOMAIN: "web",
                S.SOURCE: "a.jsonl",
                S.RECORD: i + 1,
                S.N_CHARS: 9,
                S.TEXT: f"text {i}",
                S.N_TOKENS: 2,
            }
            for i in range(n)
        ]
    )


class _Raising:
    """The BatchScorer contract, failing in `score_batch`."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def setup(self) -> _Raising:
        return self

    def score_batch(self, texts):
        raise RuntimeError(MESSAGE)


def _check_dead_letters(stage: str, n: int):
    def check(rows):
        assert sorted(r[S.ID] for r in rows) == [f"d{i}" for i in range(n)]
        for row in rows:
            assert row[S.STAGE] == stage
            assert row[S.ERROR] == f"{stage} failed: RuntimeError({MESSAGE!r})"
            assert row[S.DOMAIN] == "web" and row[S.RECORD] >= 1 and row[S.RAW].startswith("text")

    return check


def _run(transform: beam.PTransform, stage: str, scored_key: str = "scored") -> None:
    with beam.Pipeline("DirectRunner") as pipeline:
        out = pipeline | beam.Create([_batch()]) | transform
        assert_that(out["dead_letter"], _check_dead_letters(stage, 3), label="Dead")
        assert_that(out[scored_key], lambda batches: len(batches) == 0 or _fail(batches), label="NoneScored")


def _fail(batches):
    raise AssertionError(f"expected no scored batch, got {batches}")


def test_failed_batch_rows_takes_one_batch_or_a_list():
    failure = (_batch(2), (RuntimeError, repr(RuntimeError(MESSAGE)), ["Traceback ..."]))
    rows = failed_batch_rows(failure, "score_x")
    assert [r[S.ERROR] for r in rows] == [f"score_x failed: RuntimeError({MESSAGE!r})"] * 2
    assert len(failed_batch_rows(([_batch(2), _batch(3)], failure[1]), "score_x")) == 5


def test_batch_scorer_that_raises():  # the fasttext path
    _run(ScoreBatches(_Raising, "fasttext"), "score_fasttext")


def test_attention_influence_handler_that_raises(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    from pipeline.attention_influence import ScoreWithAttentionInfluence
    from scorers.attention_influence.scorer import AttentionInfluenceScorer

    monkeypatch.setattr(AttentionInfluenceScorer, "setup", _Raising.setup)
    monkeypatch.setattr(AttentionInfluenceScorer, "score_batch", _Raising.score_batch)
    config = ScorerConfig("attention-influence", str(tmp_path), options={"heads": str(tmp_path / "h.json")})
    _run(ScoreWithAttentionInfluence(config), "score_attention_influence")


def test_preselect_handler_that_raises(monkeypatch):
    pytest.importorskip("torch")
    from pipeline.preselect import BitsPerChar
    from scorers.preselect import ModelBits
    from scorers.preselect_handler import BitsPerCharModelHandler

    monkeypatch.setattr(ModelBits, "setup", _Raising.setup)
    monkeypatch.setattr(ModelBits, "score_batch", _Raising.score_batch)
    handler = BitsPerCharModelHandler("unused-model-dir", "bpc_a")
    _run(BitsPerChar(handler, "loss_a"), "loss_a", scored_key="docs")
