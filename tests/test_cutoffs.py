"""The keep-top cut-off: a radix select in bounded memory that gives exactly `top_fraction_cutoff`."""

from __future__ import annotations

import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline.select import DomainCutoffs, key_score, order_keys, top_fraction_cutoff


def test_order_keys_sort_like_the_scores_and_invert():
    scores = np.array([-np.inf, -1e300, -2.5, -1e-310, -0.0, 0.0, 1e-310, 0.3, 0.30000000000000004, np.inf])
    keys = order_keys(scores)
    assert np.all(np.diff(keys.astype(object)) >= 0) and keys[4] == keys[5]  # -0.0 is 0.0
    assert [key_score(int(k)) for k in keys] == [*scores[:4], 0.0, *scores[5:]]
    assert order_keys(np.array([np.nan]))[0] > order_keys(np.array([np.inf]))[0]  # as np.partition


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.3, 0.5, 1.0])
def test_radix_cutoffs_equal_the_exact_cutoff_with_ties_and_removals(fraction):
    rng = np.random.default_rng(7)
    web = np.concatenate([rng.random(3000), np.full(500, 0.75), -rng.exponential(5, 200)])
    code = np.round(rng.random(2000), 2)  # many ties
    web_gone, code_gone = web[:100], code[-1500:]
    elements = [("web", part) for part in np.array_split(web, 7)] + [("web", ("remove", web_gone))]
    elements += [("code", part) for part in np.array_split(code, 3)] + [("code", ("remove", code_gone))]
    elements += [("tiny", np.array([0.2])), ("gone", np.array([0.4, 0.1])), ("gone", ("remove", [0.1, 0.4]))]
    expected = [
        ("web", top_fraction_cutoff(web[100:], fraction)),
        ("code", top_fraction_cutoff(code[:-1500], fraction)),
        ("tiny", top_fraction_cutoff(np.array([0.2]), fraction)),
        ("gone", math.inf),
    ]
    with beam.Pipeline("DirectRunner") as p:
        out = p | beam.Create(elements, reshuffle=False) | DomainCutoffs(fraction)
        assert_that(out, equal_to(expected))


def test_removing_a_score_never_added_is_an_error():
    with pytest.raises(Exception, match="never added"):
        with beam.Pipeline("DirectRunner") as p:
            _ = p | beam.Create([("web", np.array([0.5])), ("web", ("remove", [0.7]))]) | DomainCutoffs(0.5)
