"""PreSelect math (strength, correlation, labels), one model's bits per character, the Beam handler."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from scorers import preselect as P

# --- predictive strength -------------------------------------------------------------------------


def test_strength_is_kendall_tau_a_mapped_to_unit_interval() -> None:
    rng = np.random.default_rng(0)
    bpc = rng.normal(size=(200, 5))
    scores = rng.normal(size=5)
    strength = P.predictive_strength(bpc, scores)
    # lower loss should go with a higher score, so tau is taken between -bpc and the scores
    tau = np.array([stats.kendalltau(-row, scores).statistic for row in bpc])
    np.testing.assert_allclose(strength, (tau + 1) / 2, atol=1e-12)


def test_strength_counts_concordant_pairs_like_the_paper() -> None:
    scores = [1.0, 2.0, 3.0, 4.0]  # model 3 is the best
    assert P.predictive_strength([[4.0, 3.0, 2.0, 1.0]], scores)[0] == 1.0
    assert P.predictive_strength([[1.0, 2.0, 3.0, 4.0]], scores)[0] == 0.0
    # one adjacent swap: 5 of 6 pairs agree
    assert P.predictive_strength([[4.0, 3.0, 1.0, 2.0]], scores)[0] == pytest.approx(5 / 6)
    # a loss tie counts half; pairs of models with equal scores are left out
    assert P.predictive_strength([[2.0, 2.0]], [0.0, 1.0])[0] == 0.5
    assert P.predictive_strength([[3.0, 1.0, 2.0]], [0.0, 1.0, 1.0])[0] == 1.0
    assert np.isnan(P.predictive_strength([[np.nan, 1.0]], [0.0, 1.0])[0])


def test_strength_does_not_depend_on_model_order_or_score_scale() -> None:
    rng = np.random.default_rng(1)
    bpc, scores = rng.normal(size=(50, 4)), rng.normal(size=4)
    perm = [2, 0, 3, 1]
    base = P.predictive_strength(bpc, scores)
    np.testing.assert_array_equal(base, P.predictive_strength(bpc[:, perm], scores[perm]))
    np.testing.assert_array_equal(base, P.predictive_strength(bpc * 7 + 3, np.exp(scores)))


def test_correlation_matches_numpy_and_is_zero_for_flat_losses() -> None:
    rng = np.random.default_rng(2)
    bpc, scores = rng.normal(size=(20, 4)), rng.normal(size=4)
    expected = [np.corrcoef(-row, scores)[0, 1] for row in bpc]
    np.testing.assert_allclose(P.loss_score_correlation(bpc, scores), expected, atol=1e-12)
    assert P.loss_score_correlation([[2.0, 2.0, 2.0]], [1.0, 2.0, 3.0])[0] == 0.0


def test_bits_per_char() -> None:
    out = P.bits_per_char(np.array([math.log(2) * 30, 5.0]), np.array([10, 0]))
    assert out[0] == pytest.approx(3.0) and np.isnan(out[1])


# --- labels --------------------------------------------------------------------------------------


def _keys(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    strength = rng.choice([0.0, 0.5, 1.0], size=n)  # heavy ties, as with few models
    corr = np.where(rng.random(n) < 0.5, 0.0, rng.normal(size=n))
    ids = [f"doc-{i}" for i in range(n)]
    return strength, corr, P.tiebreak_keys(ids, seed=0)


@pytest.mark.parametrize("n, top", [(1000, 0.1), (997, 0.25), (7, 0.5), (3, 0.1), (1, 0.1)])
def test_labels_have_exact_sizes_despite_ties(n: int, top: float) -> None:
    strength, corr, tb = _keys(n)
    cut = P.label_cut(strength, corr, tb, top)
    labels = P.assign_labels(strength, corr, tb, cut)
    k = min(n // 2, math.ceil(top * n - 1e-9))
    assert cut.per_label == k
    assert labels.count(P.HQ_LABEL) == k and labels.count(P.LQ_LABEL) == k
    pos, neg = P.select_labels(strength, corr, tb, top)
    assert {int(i) for i in pos} == {i for i, x in enumerate(labels) if x == P.HQ_LABEL}
    assert {int(i) for i in neg} == {i for i, x in enumerate(labels) if x == P.LQ_LABEL}
    if k:
        assert strength[pos].min() >= strength[neg].max()
        assert strength[pos].min() >= np.sort(strength)[::-1][k - 1]  # the k strongest (up to ties)


def test_labels_split_across_batches_match_one_batch() -> None:
    strength, corr, tb = _keys(500, seed=3)
    cut = P.label_cut(strength, corr, tb, 0.1)
    whole = P.assign_labels(strength, corr, tb, cut)
    parts = [P.assign_labels(strength[a:b], corr[a:b], tb[a:b], cut) for a, b in ((0, 123), (123, 500))]
    assert whole == parts[0] + parts[1]


def test_tiebreak_is_seeded_and_stable() -> None:
    ids = [f"d{i}" for i in range(100)]
    a, b = P.tiebreak_keys(ids, 0), P.tiebreak_keys(ids, 0)
    np.testing.assert_array_equal(a, b)
    assert (a >= 0).all() and len(set(a.tolist())) == 100
    assert not np.array_equal(a, P.tiebreak_keys(ids, 1))


@pytest.mark.parametrize("top", [0.0, -0.1, 0.51, 1.0])
def test_top_must_leave_room_for_negatives(top: float) -> None:
    with pytest.raises(ValueError, match="--top"):
        P.labels_per_class(10, top)


def test_model_and_score_checks() -> None:
    with pytest.raises(ValueError, match="3 models but 2"):
        P.check_models_and_scores(["a", "b", "c"], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2 models"):
        P.check_models_and_scores(["a"], [1.0])
    with pytest.raises(ValueError, match="all benchmark scores are equal"):
        P.check_models_and_scores(["a", "b"], [1.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        P.check_models_and_scores(["a", "b"], [1.0, float("nan")])
    with pytest.raises(ValueError, match="'x1' is not a number"):
        P.parse_scores("0.5,x1")
    assert P.parse_scores(["1", "2.5,-3"]) == [1.0, 2.5, -3.0]
    names = P.column_names(["ck/small", "ck/big/", "a/model", "b/model"])
    assert names == ["small", "big", "model_2", "model_3"]


# --- bits per character under a model ------------------------------------------------------------

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software. " * 3,
    "x",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> Path:
    """A random 2-layer proxy Llama with a context of 32 tokens and its own BPE tokenizer."""
    return tiny_checkpoint(TEXTS * 5, tmp_path_factory.mktemp("m") / "tiny", 32)


def _reference_bpc(model_dir: Path, texts: list[str]) -> np.ndarray:
    """One document at a time, full logits, no padding: the loss each chunk's tokens get."""
    import torch

    from scorers import lm

    model, tok = lm.load_causal_lm(model_dir, "cpu")
    tok.model_max_length = 10**9
    out = []
    for text in texts:
        ids = [tok.eos_token_id, *tok(text)["input_ids"]]
        total = 0.0
        for chunk in lm.chunk_ids(ids, 32):
            x = torch.tensor([chunk])
            with torch.no_grad():
                logits = model(input_ids=x).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
        out.append(total / (math.log(2) * len(text)))
    return np.array(out)


def test_model_bits_match_a_plain_forward_pass(tiny_model: Path) -> None:
    scorer = P.ModelBits(tiny_model, device="cpu", batch_tokens=96, max_batch_size=3).setup()
    assert scorer.prefix_id_ == scorer.tokenizer_.eos_token_id  # the proxy tokenizer adds no BOS
    assert len(scorer.token_ids(["x"])[0]) == 2  # so a one-token text is still predicted
    batched = scorer.score_batch(TEXTS)
    assert len(scorer.token_ids([TEXTS[1]])[0]) > 64  # several chunks of the 32-token context
    np.testing.assert_allclose(batched, _reference_bpc(tiny_model, TEXTS), rtol=1e-4)
    singles = np.concatenate([scorer.score_batch([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, singles, rtol=1e-5)
    assert scorer.score_batch([]).shape == (0,)


def test_handler_in_a_beam_pipeline(tiny_model: Path) -> None:
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that

    from scorers.preselect_handler import BitsPerCharModelHandler

    expected = P.ModelBits(tiny_model, device="cpu").score_batch(TEXTS)
    batches = [
        pa.RecordBatch.from_pydict({"id": ["a", "b"], "text": TEXTS[:2]}),
        pa.RecordBatch.from_pydict({"id": ["c", "d"], "text": TEXTS[2:]}),
    ]
    handler = BitsPerCharModelHandler(tiny_model, "bpc_tiny", device="cpu", threads=1)

    def check(outputs):
        got = {
            i: v
            for b in outputs
            for i, v in zip(b.column("id").to_pylist(), b.column("bpc_tiny").to_pylist(), strict=True)
        }
        np.testing.assert_allclose([got[i] for i in "abcd"], expected, rtol=1e-5)

    with TestPipeline() as pipeline:
        out = pipeline | beam.Create(batches) | RunInference(handler)
        assert_that(out, check)
    assert handler.approximate_tokens(batches[0]) == sum(1 + len(t) // 4 for t in TEXTS[:2])
