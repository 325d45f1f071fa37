"""The demo's three-way claim: seed noise, gains with verdicts, the optimisers' gap, the warnings."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline import comparison as C


def _final(losses: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"mixture": m, "seed": s, "loss": v} for m, values in losses.items() for s, v in enumerate(values)]
    )


def _predictions(predicted: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"mixture": m, "predicted": p, "low": p - 0.01, "high": p + 0.01} for m, p in predicted.items()]
    )


def test_seed_noise_is_the_pooled_within_mixture_deviation():
    losses = C.measured_by_seed(_final({"a": [1.0, 1.2], "b": [2.0, 2.0], "c": [3.0, 3.4]}))
    # squared deviations about each mixture's mean: 0.02 + 0 + 0.08 over 3 degrees of freedom
    assert C.seed_noise(losses) == pytest.approx(math.sqrt(0.10 / 3))
    expected = np.sqrt(np.mean([np.var([1.0, 1.2], ddof=1), 0.0, np.var([3.0, 3.4], ddof=1)]))
    assert C.seed_noise(losses) == pytest.approx(expected)
    assert math.isnan(C.seed_noise(C.measured_by_seed(_final({"a": [1.0], "b": [2.0]}))))


def test_gain_beats_only_beyond_twice_the_standard_error():
    preds = _predictions({"optimized": 3.60, "natural": 3.70, "uniform": 3.62})
    final = _final({"optimized": [3.600, 3.610], "natural": [3.700, 3.690], "uniform": [3.605, 3.615]})
    result = C.compare(preds, final)
    gains = {g["baseline"]: g for g in result["gains"]}
    noise = result["seed_noise"]
    assert gains["natural"]["measured"] == pytest.approx(3.695 - 3.605)
    assert gains["natural"]["stderr"] == pytest.approx(noise)  # sqrt(1/2 + 1/2) with two seeds each
    assert gains["natural"]["beats"] is True
    assert gains["uniform"]["measured"] == pytest.approx(0.005)
    assert gains["uniform"]["beats"] is False  # 0.005 < 2 x ~0.0071
    assert gains["natural"]["predicted"] == pytest.approx(0.10)
    natural, uniform = result["verdicts"]
    assert natural.startswith("optimized beat natural by more than the seed noise")
    assert uniform.startswith("optimized was no better than uniform beyond the seed noise")
    rows = {r["mixture"]: r for r in result["mixtures"]}
    assert rows["optimized"]["measured_seeds"] == {"0": 3.6, "1": 3.61}


def test_a_loss_is_called_worse_and_an_untrained_baseline_says_so():
    preds = _predictions({"optimized": 3.6, "natural": 3.7, "uniform": 3.5})
    final = _final({"optimized": [3.60, 3.61], "natural": [3.70, 3.71]})
    result = C.compare(preds, final)
    uniform = result["gains"][1]
    assert uniform["measured"] is None and uniform["beats"] is None
    assert "not trained" in result["verdicts"][1]
    worse = C.gain_sentence(
        {"baseline": "x", "predicted": 0.0, "measured": -0.1, "stderr": 0.01, "beats": False}
    )
    assert "was worse than x" in worse


def test_one_seed_gives_no_noise_and_still_writes_valid_json():
    preds = _predictions({"optimized": 3.6, "natural": 3.7, "uniform": 3.65})
    result = C.compare(preds, _final({"optimized": [3.60], "natural": [3.70], "uniform": [3.64]}))
    assert result["seed_noise"] is None
    assert all(g["stderr"] is None and g["beats"] is None for g in result["gains"])
    assert "one seed only" in result["verdicts"][0]
    json.dumps(result, allow_nan=False)


def test_disagreement_names_the_widest_domain_and_both_predictions():
    d = C.disagreement(
        "RegMix", {"a": 0.5, "b": 0.5}, "the law", {"a": 0.2, "b": 0.8}, {"RegMix": 3.6, "the law": 3.55}
    )
    assert d["l1"] == pytest.approx(0.6)
    assert d["largest_difference"] in ("a", "b")
    assert d["predicted_gap"] == pytest.approx(-0.05)
    assert "RegMix chose the mixture" in d["text"] and "3.5500" in d["text"]


def test_warnings_for_extrapolation_caps_and_low_spearman():
    data = {"N_range": [1e4, 5e4], "D_range": [3e4, 1.5e5], "h_range": {"a": [0.1, 0.6], "b": [0.4, 0.9]}}
    warnings = C.extrapolation_warnings(data, 1e5, 3e5, {"optimized": {"a": 0.7, "b": 0.3}})
    assert "2.0x the largest proxy in N and 2.0x in D" in warnings[0]
    assert "a 0.70 not in [0.10, 0.60]" in warnings[1] and "b 0.30" in warnings[1]
    assert C.extrapolation_warnings(data, 5e4, 1e5, {"optimized": {"a": 0.5, "b": 0.5}}) == []
    capped = C.cap_warnings({"a": 0.25, "b": 0.75}, {"a": 0.25, "b": 1.0})
    assert len(capped) == 1 and "a at its cap 0.250" in capped[0]
    assert C.cap_warnings({"a": 0.2, "b": 0.8}, {"a": 0.25}) == []
    assert "0.55" in C.spearman_warnings(0.55, 24)[0]
    assert C.spearman_warnings(0.9) == [] and C.spearman_warnings(None) == []
