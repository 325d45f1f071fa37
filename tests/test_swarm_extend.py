"""Extending a swarm: no new mixture near an existing run; GP-variance targeting; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datamixer.cli import main
from mixer.extend import default_radius, existing_matrix, gp_uncertainty, propose_swarm, select_uncertain
from mixer.sampler import box_simplex_projection, propose_mixtures
from mixer.tree import parse_tree

TOKENS = {"web": 8e9, "code": 2e9, "books": 1e9, "math": 5e8}
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "swarm_tree.yaml"


def l1_to_existing(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    return np.abs(new[:, None, :] - old[None, :, :]).sum(axis=2).min(axis=1)


def runs_from(frame: pd.DataFrame) -> pd.DataFrame:
    """A runs table for these mixtures, with a loss that depends smoothly on the weights."""
    weights = [c for c in frame if c.startswith("h_")]
    runs = frame[["mixture", *weights]].copy()
    runs["run"] = runs["mixture"] + "-1M"
    runs["loss"] = 3.0 - 0.8 * runs[weights[0]] + 0.5 * runs[weights[1]] ** 2 + 0.3 * runs[weights[-1]]
    return runs


def test_no_new_mixture_within_the_threshold() -> None:
    old = propose_mixtures(TOKENS, 64, proxy_tokens=1e9, seed=0)
    matrix, _ = existing_matrix(runs_from(old), list(TOKENS))
    radius = default_radius(matrix)
    weights = old[[f"h_{d}" for d in TOKENS]].to_numpy()
    nn = np.sort(np.abs(weights[:, None] - weights[None]).sum(axis=2), axis=1)[:, 1]
    assert radius == pytest.approx(0.5 * np.median(nn))
    new, summary = propose_swarm(32, TOKENS, existing=runs_from(old), proxy_tokens=1e9, seed=1)
    assert len(new) == 32 and summary["min_distance"] == pytest.approx(radius)
    gaps = l1_to_existing(new[[f"h_{d}" for d in TOKENS]].to_numpy(), weights)
    assert gaps.min() > radius and summary["nearest_existing_l1"] == pytest.approx(gaps.min())
    assert not set(new["mixture"]) & set(old["mixture"])  # ids continue after the old swarm's
    # Without the exclusion, the same seed does put mixtures inside that radius.
    plain = propose_mixtures(TOKENS, 32, proxy_tokens=1e9, seed=1)
    assert l1_to_existing(plain[[f"h_{d}" for d in TOKENS]].to_numpy(), weights).min() <= radius


def test_tree_extension_counts_weight_on_other_domains() -> None:
    tree = parse_tree({"domains": {"web": {"a": 1e9, "b": 1e9}, "code": 1e9}})
    # Existing runs over one more domain (`math`): their weight there counts toward the distance.
    old = pd.DataFrame(
        {"h_web:a": [0.5, 0.3], "h_web:b": [0.3, 0.3], "h_code": [0.2, 0.2], "h_math": [0.0, 0.2]}
    )
    matrix, _ = existing_matrix(old, tree.domains)
    assert matrix.shape == (2, 4) and sorted(matrix[:, -1]) == [0.0, 0.2]
    new, summary = propose_swarm(40, tree=tree, existing=old, min_distance=0.3, proxy_tokens=1e8, seed=2)
    gaps = np.abs(new[[f"h_{d}" for d in tree.domains]].to_numpy()[:, None] - matrix[None, :, :3]).sum(axis=2)
    assert ((gaps + matrix[None, :, 3]).min(axis=1) > 0.3).all() and summary["min_distance"] == 0.3


def test_uncertainty_picks_the_gp_variance_maximum_first() -> None:
    old = propose_mixtures(TOKENS, 40, proxy_tokens=1e9, seed=0)
    runs = runs_from(old)
    X = runs[[f"h_{d}" for d in TOKENS]].to_numpy()
    y = runs["loss"].to_numpy()
    pool = propose_mixtures(TOKENS, 200, proxy_tokens=1e9, seed=9)[[f"h_{d}" for d in TOKENS]].to_numpy()
    chosen, stds = select_uncertain(pool, X, y, 8, seed=0)
    _, sk_std = gp_uncertainty(X, y).predict(pool, return_std=True)
    noise = gp_uncertainty(X, y).kernel_.k2.noise_level * np.std(y) ** 2
    latent = np.sqrt(np.maximum(sk_std**2 - noise, 0))  # sklearn's std includes the noise term
    assert chosen[0] == int(np.argmax(sk_std)) and stds[0] == pytest.approx(latent[chosen[0]], rel=1e-4)
    assert len(set(chosen)) == 8 and (np.diff(stds) <= 1e-12).all()  # each pick shrinks what is left
    assert stds.mean() > np.median(latent)
    frame, summary = propose_swarm(
        8, TOKENS, existing=runs, uncertainty_target="loss", proxy_tokens=1e9, seed=3
    )
    assert len(frame) == 8 and summary["n_candidates"] == 64 and (frame["gp_std"] > 0).all()
    # Two model sizes: the GP fits the size with the most runs, and every run still repels.
    bigger = runs.iloc[:10].assign(N=6e7, loss=runs["loss"].iloc[:10] - 1.0)
    both = pd.concat([runs.assign(N=1e6), bigger], ignore_index=True)
    _, summary = propose_swarm(8, TOKENS, existing=both, uncertainty_target="loss", proxy_tokens=1e9, seed=3)
    assert summary["gp_N"] == 1e6 and summary["n_fitted"] == 40 and summary["n_existing"] == 40


def test_projection_settles_rows_independently() -> None:
    """An infeasible row (caps sum below 1) must not zero the other rows of its batch."""
    weights = np.array([[0.2, 0.8], [0.6, 0.4]])
    upper = np.array([[0.375, 1.0], [0.4, 0.4]])
    out = box_simplex_projection(weights, np.zeros((2, 2)), upper)
    np.testing.assert_allclose(out, [[0.2, 0.8], [0.4, 0.4]])


def run(args: list[str], capsys) -> dict:
    assert main(args) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_extends_a_tree_swarm(tmp_path: Path, capsys) -> None:
    first = run(
        [
            "regmix",
            "propose",
            "--tree",
            str(EXAMPLE),
            "--n",
            "24",
            "--out",
            str(tmp_path / "a"),
            "--proxy-tokens",
            "2e9",
            "--nonzero",
            "math",
        ],
        capsys,
    )
    proposals = pd.read_parquet(tmp_path / "a" / "proposals.parquet")
    assert first["n"] == 24 and (proposals["h_math"] > 0).all()
    assert (tmp_path / "a" / "tree.yaml").exists() and "max_epochs" in proposals
    runs_from(proposals).to_parquet(tmp_path / "runs.parquet")
    second = run(
        [
            "regmix",
            "propose",
            "--tree",
            str(EXAMPLE),
            "--n",
            "12",
            "--out",
            str(tmp_path / "b"),
            "--proxy-tokens",
            "2e9",
            "--existing",
            str(tmp_path / "runs.parquet"),
            "--uncertain",
            "loss",
        ],
        capsys,
    )
    assert (
        second["n"] == 12
        and second["min_distance"] > 0
        and second["nearest_existing_l1"] > second["min_distance"]
    )
    assert second["n_existing"] == 24 and second["gp_std_mean"] > 0
    new = pd.read_parquet(tmp_path / "b" / "proposals.parquet")
    assert new["mixture"].iloc[0] == "mix-0024"
    # Flat-sampler settings are not silently ignored with a tree.
    assert (
        main(
            ["regmix", "propose", "--tree", str(EXAMPLE), "--out", str(tmp_path / "c"), "--min-weight", "0.1"]
        )
        == 1
    )
    assert "--min-weight: set per level in the tree file" in capsys.readouterr().err
