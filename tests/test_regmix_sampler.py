"""The RegMix proxy-mixture sampler: exact counts, caps, floors, rounding, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mixer.runs import load_token_counts
from mixer.sampler import (
    box_simplex_projection,
    domain_caps,
    propose_mixtures,
    round_to_grid,
    sample_dirichlet,
    tempered_prior,
)

# A Pile-like corpus: one big web domain, a few mid-size ones and one with 0.05% of the tokens.
TOKENS = {"web": 2.0e11, "papers": 1.0e11, "code": 6.0e10, "books": 3.98e10, "tiny": 2.0e8}


def weights_of(frame: pd.DataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith("h_")]].to_numpy()


def test_count_is_exact_and_rows_are_valid_mixtures() -> None:
    frame = propose_mixtures(TOKENS, 300, proxy_tokens=4e11, seed=0)
    weights = weights_of(frame)
    assert len(frame) == 300
    assert list(frame["mixture"][:2]) == ["mix-0000", "mix-0001"]
    assert frame["mixture"].is_unique
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-9)
    assert (weights >= 0).all()
    # Rounded to the 2e-4 grid; nothing between 0 and the minimum weight.
    np.testing.assert_allclose(weights / 2e-4, np.round(weights / 2e-4), atol=1e-6)
    assert not ((weights > 0) & (weights < 2e-4 - 1e-12)).any()
    # No duplicates.
    assert len(np.unique(np.round(weights, 6), axis=0)) == 300


def test_tiny_domain_cap_is_respected_and_count_stays_exact() -> None:
    # tiny has 0.05% of tokens; 15 epochs of 2e8 tokens over 1e11 training tokens caps it at 0.03.
    caps = domain_caps(TOKENS, proxy_tokens=1e11, max_epochs=15)
    assert caps["tiny"] == pytest.approx(0.03)
    frame = propose_mixtures(TOKENS, 512, proxy_tokens=1e11, seed=3)
    assert len(frame) == 512
    assert frame["h_tiny"].max() <= 0.03 + 1e-12
    assert frame["h_tiny"].max() > 0  # the cap binds, it does not zero the domain


def test_floor_on_tiny_domain_returns_every_mixture() -> None:
    # RegMix's rejection sampler accepts ~0 draws when a tiny domain must get >= 0.1% (issue #10).
    shares = np.array(list(TOKENS.values())) / sum(TOKENS.values())
    assert shares[-1] == pytest.approx(0.0005, rel=0.01)
    for floor in (0.001, 0.025):
        frame = propose_mixtures(TOKENS, 256, proxy_tokens=1e11, floors={"tiny": floor}, seed=1)
        assert len(frame) == 256
        assert frame["h_tiny"].min() >= floor - 1e-12
        assert frame["h_tiny"].max() <= 0.03 + 1e-12
    # At 2.5% (50x its share) rejection alone falls short; the rest were mapped into the bounds.
    assert frame.attrs["n_projected"] > 0


def test_caps_that_bind_often() -> None:
    caps = {"web": 0.3, "papers": 0.3, "code": 0.3, "books": 0.3, "tiny": 0.3}
    frame = propose_mixtures(TOKENS, 128, caps=caps, seed=0)
    weights = weights_of(frame)
    assert len(frame) == 128
    assert weights.max() <= 0.3 + 1e-12
    assert (weights == 0.3).any()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-9)


def test_seeded_and_deterministic() -> None:
    a = propose_mixtures(TOKENS, 64, seed=7)
    b = propose_mixtures(TOKENS, 64, seed=7)
    c = propose_mixtures(TOKENS, 64, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(weights_of(a), weights_of(c))


def test_infeasible_bounds_and_too_few_distinct_mixtures_are_errors() -> None:
    with pytest.raises(ValueError, match="caps sum to"):
        propose_mixtures({"a": 1.0, "b": 1.0}, 4, caps={"a": 0.3, "b": 0.3})
    with pytest.raises(ValueError, match="floors sum to"):
        propose_mixtures({"a": 1.0, "b": 1.0}, 4, floors={"a": 0.7, "b": 0.7}, proxy_tokens=1)
    with pytest.raises(ValueError, match="unknown domain"):
        propose_mixtures({"a": 1.0, "b": 1.0}, 4, caps={"c": 0.5})
    # Two domains on a 0.25 grid have only 5 distinct mixtures.
    assert len(propose_mixtures({"a": 1.0, "b": 1.0}, 5, min_weight=0.25, proxy_tokens=1, seed=0)) == 5
    with pytest.raises(ValueError, match="only 5 distinct"):
        propose_mixtures({"a": 1.0, "b": 1.0}, 6, min_weight=0.25, proxy_tokens=1, seed=0)


def test_box_simplex_projection_respects_bounds_and_keeps_inside_rows() -> None:
    rng = np.random.default_rng(0)
    draws = rng.dirichlet(np.full(5, 0.3), size=2000)
    lower = np.array([0.0, 0.05, 0.0, 0.0, 0.0])
    upper = np.array([0.3, 0.5, 0.4, 1.0, 0.02])
    out = box_simplex_projection(draws, lower, upper)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-9)
    assert (out >= lower - 1e-12).all() and (out <= upper + 1e-12).all()
    inside = ((draws <= upper) & (draws >= lower)).all(axis=1)
    no_floor = box_simplex_projection(draws, np.zeros(5), upper)
    np.testing.assert_allclose(no_floor[(draws <= upper).all(axis=1)], draws[(draws <= upper).all(axis=1)])
    assert inside.sum() < len(draws)  # the test exercised the projection


def test_round_to_grid_sums_to_one() -> None:
    rng = np.random.default_rng(1)
    rows = rng.dirichlet(np.ones(7), size=500)
    rounded = round_to_grid(rows, 1e-3)
    np.testing.assert_allclose(rounded.sum(axis=1), 1.0, atol=1e-12)
    assert np.abs(rounded - rows).max() <= 1e-3
    with pytest.raises(ValueError, match="must divide 1"):
        round_to_grid(rows, 0.3)


def test_dirichlet_with_tiny_concentrations_never_gives_empty_rows() -> None:
    rng = np.random.default_rng(0)
    alpha = np.full((5000, 6), 1e-4)
    draws = sample_dirichlet(alpha, rng)
    assert np.isfinite(draws).all()
    np.testing.assert_allclose(draws.sum(axis=1), 1.0)


def test_temperature_flattens_the_prior() -> None:
    prior = tempered_prior(np.array([0.9, 0.09, 0.01]), 0.5)
    assert prior.sum() == pytest.approx(1.0)
    assert prior[0] < 0.9 and prior[2] > 0.01


def test_token_tables_csv_json_and_domain_stats(tmp_path) -> None:
    pd.DataFrame({"domain": ["a", "b"], "tokens": [10, 30]}).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "t.json").write_text('{"a": 10, "b": 30}')
    pd.DataFrame(
        {"domain": ["a", "b"], "docs_in": [1, 2], "tokens_in": [50, 60], "tokens_kept": [10, 30]}
    ).to_parquet(tmp_path / "domain_stats.parquet")
    for name in ("t.csv", "t.json", "domain_stats.parquet"):
        assert load_token_counts(tmp_path / name) == {"a": 10.0, "b": 30.0}
    pd.DataFrame({"domain": ["a", "b"], "tokens": [10, -3]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"row 2 \(domain='b'\)"):
        load_token_counts(tmp_path / "bad.csv")
