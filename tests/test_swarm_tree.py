"""The hierarchical (tree) sampler: priors and minimums per level, caps, counts, --nonzero."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mixer.exports import read_paths, to_megatron
from mixer.sampler import propose_mixtures, tempered_prior
from mixer.tree import level_frame, parse_tree, propose_tree_mixtures, read_tree, weights_by_level

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "swarm_tree.yaml"

TREE = {
    "levels": [
        {"name": "source", "temperature": 0.5, "min_strength": 0.5, "max_strength": 5.0},
        {"name": "topic", "temperature": 1.0},
        {"name": "quality", "prior": {"top": 0.7, "rest": 0.3}},
    ],
    "domains": {
        "web": {"sci": {"top": 1e9, "rest": 9e9}, "news": {"top": 2e9, "rest": 8e9}},
        "code": 4e9,
        "books": {"fiction": 1e9, "other": 3e9},
    },
}


def conditional(frame: pd.DataFrame, child: list[str], parent: list[str]) -> np.ndarray:
    """Weight of `child` leaves over weight of `parent` leaves, on rows where the parent is > 0."""
    num = frame[[f"h_{d}" for d in child]].sum(axis=1).to_numpy()
    den = frame[[f"h_{d}" for d in parent]].sum(axis=1).to_numpy()
    return num[den > 1e-9] / den[den > 1e-9]


def test_parse_names_leaves_and_levels() -> None:
    tree = parse_tree(TREE)
    assert tree.domains == [
        "web:sci:top",
        "web:sci:rest",
        "web:news:top",
        "web:news:rest",
        "code",
        "books:fiction",
        "books:other",
    ]
    assert [lv.name for lv in tree.levels] == ["source", "topic", "quality"]
    assert tree.leaf_tokens()["web:news:rest"] == 8e9
    example = read_tree(EXAMPLE)
    assert "web:science:top10" in example.domains and example.levels[2].prior == {"top10": 0.6, "rest": 0.4}


@pytest.mark.parametrize(
    "body, message",
    [
        ({"domains": {"a:b": 1.0, "c": 1.0}}, "contain no ':'"),
        ({"domains": {"a": "lots", "c": 1.0}}, "not a number"),
        ({"domains": {"a": {}, "c": 1.0}}, "has no children"),
        ({"levels": [{"prior": {"a": 1.0}}], "domains": {"a": 1.0, "c": 1.0}}, "but not ['c']"),
        ({"levels": [{"temprature": 1.0}], "domains": {"a": 1.0}}, "unknown setting"),
        ({"levels": [{"min_weight": "lots"}], "domains": {"a": 1.0}}, "levels[0].min_weight: 'lots' is not"),
        ({"levels": [{"prior": {"a": -1}}], "domains": {"a": 1.0}}, "prior weights must be >= 0"),
        ({"levels": [{"prior": {"b": 1}}], "domains": {"a": 1.0}}, "prior names ['b'], not nodes"),
        ({"levels": [{}, {}], "domains": {"a": 1.0}}, "2 levels configured"),
    ],
)
def test_parse_errors_name_the_problem(body: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_tree(body)


def test_levels_follow_configured_priors() -> None:
    """E[conditional weight] = the level's prior (Dirichlet mean), when no cap or minimum binds."""
    tree = parse_tree(TREE)
    frame = propose_tree_mixtures(tree, 3000, proxy_tokens=1e8, seed=1)  # caps all 1: nothing binds
    assert len(frame) == 3000
    tokens = tree.leaf_tokens()
    source_tokens = np.array([20e9, 4e9, 4e9])
    expected = tempered_prior(source_tokens / source_tokens.sum(), 0.5)
    leaves = {
        "web": [d for d in tokens if d.startswith("web:")],
        "code": ["code"],
        "books": ["books:fiction", "books:other"],
    }
    means = [frame[[f"h_{d}" for d in leaves[s]]].sum(axis=1).mean() for s in ("web", "code", "books")]
    assert means == pytest.approx(expected, abs=0.03)
    # topic level, temperature 1: token shares within the source (sci 10e9 vs news 10e9).
    assert conditional(frame, ["web:sci:top", "web:sci:rest"], leaves["web"]).mean() == pytest.approx(
        0.5, abs=0.03
    )
    assert conditional(frame, ["books:other"], leaves["books"]).mean() == pytest.approx(0.75, abs=0.03)
    # quality level: the manual prior (0.7 top) overrides the token shares (0.1 and 0.2).
    for topic in ("sci", "news"):
        share = conditional(frame, [f"web:{topic}:top"], [f"web:{topic}:top", f"web:{topic}:rest"])
        assert share.mean() == pytest.approx(0.7, abs=0.03)


def test_level_minimums_are_relative_to_the_parent() -> None:
    body = yaml.safe_load(yaml.safe_dump(TREE))
    body["levels"][0]["min_weight"] = 0.05
    body["levels"][1]["min_weight"] = 0.1
    tree = parse_tree(body)
    frame = propose_tree_mixtures(tree, 800, proxy_tokens=1e8, seed=2)
    sources = {
        "web": [c for c in frame if c.startswith("h_web:")],
        "code": ["h_code"],
        "books": ["h_books:fiction", "h_books:other"],
    }
    for columns in sources.values():
        total = frame[columns].sum(axis=1)
        assert ((total == 0) | (total >= 0.05 - 1e-12)).all()
    web = frame[sources["web"]].sum(axis=1)
    for topic in ("sci", "news"):
        share = frame[[f"h_web:{topic}:top", f"h_web:{topic}:rest"]].sum(axis=1)[web > 0] / web[web > 0]
        assert ((share == 0) | (share >= 0.1 - 1e-9)).all()
        assert (share == 0).any()  # the minimum does bind sometimes
    np.testing.assert_allclose(frame.filter(like="h_").sum(axis=1), 1.0, atol=1e-9)


def test_tight_caps_still_return_the_count_and_hold() -> None:
    """Caps so tight RegMix's rejection accepts almost nothing: projection fills the count."""
    tree = parse_tree(TREE)
    tokens = tree.leaf_tokens()
    proxy = 4e11  # caps = 15 x tokens / 4e11: web:sci:top 0.0375, code 0.15, ... (sum 1.05)
    frame = propose_tree_mixtures(tree, 200, proxy_tokens=proxy, seed=3)
    assert len(frame) == 200 and frame["mixture"].is_unique and frame.attrs["n_projected"] > 100
    for domain, count in tokens.items():
        assert (frame[f"h_{domain}"] <= 15 * count / proxy + 1e-9).all()


def test_nonzero_and_same_seed_same_output() -> None:
    tree = parse_tree({**TREE, "levels": [{"min_weight": 0.2}, {"min_weight": 0.3}, {"min_weight": 0.3}]})
    frame = propose_tree_mixtures(tree, 300, proxy_tokens=1e8, nonzero=["books:other"], seed=4)
    assert (frame["h_books:other"] > 0).all()
    free = propose_tree_mixtures(tree, 300, proxy_tokens=1e8, seed=4)
    assert (free["h_books:other"] == 0).any()  # without --nonzero the minimums do zero it
    pd.testing.assert_frame_equal(free, propose_tree_mixtures(tree, 300, proxy_tokens=1e8, seed=4))
    with pytest.raises(ValueError, match="matches 2 nodes"):
        propose_tree_mixtures(tree, 5, nonzero=["top"])
    flat = propose_mixtures(
        {"a": 1e9, "b": 1e7, "c": 1e9},
        300,
        proxy_tokens=1e8,
        min_weight=0.05,
        round_to=0,
        nonzero=["b"],
        seed=5,
    )
    assert (flat["h_b"] >= 0.05 - 1e-12).all()


def test_weights_by_level_sums_leaves_per_level() -> None:
    weights = {"web:sci:top": 0.1, "web:sci:rest": 0.2, "web:news": 0.3, "code": 0.4}
    levels = weights_by_level(weights, ["source", "topic"])
    assert levels["source"] == pytest.approx({"web": 0.6, "code": 0.4})
    assert levels["topic"] == pytest.approx({"web:sci": 0.3, "web:news": 0.3, "code": 0.4})
    assert levels["level2"] == pytest.approx(weights)
    assert weights_by_level({"a": 0.5, "b": 0.5}) == {"level0": {"a": 0.5, "b": 0.5}}


def test_level_frame_and_tree_paths_for_exports(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "run": ["a", "b"],
            "h_web:sci:top": [0.1, 0.2],
            "h_web:news": [0.3, 0.2],
            "h_code": [0.6, 0.6],
            "loss": [3.0, 2.9],
        }
    )
    sources = level_frame(frame, 0)
    assert list(sources.columns) == ["run", "loss", "h_web", "h_code"]
    assert sources["h_web"].tolist() == pytest.approx([0.4, 0.4])
    assert list(level_frame(frame, 5).columns) == ["run", "loss", "h_web:sci:top", "h_web:news", "h_code"]
    # A tree whose leaves give paths doubles as the paths map of `datamixer export`.
    tree = {
        "domains": {
            "web": {"top": {"paths": ["data/web_top.idx"]}, "rest": {"paths": "data/web_rest"}},
            "code": 1e9,
        }
    }
    (tmp_path / "tree.yaml").write_text(yaml.safe_dump(tree))
    paths = read_paths(tmp_path / "tree.yaml")
    assert paths == {"web:top": ["data/web_top.idx"], "web:rest": ["data/web_rest"]}
    text = to_megatron({"web:top": 0.25, "web:rest": 0.75}, paths=paths)
    assert text == "0.75 data/web_rest\n0.25 data/web_top\n"  # Megatron takes the prefix, not the .idx


def test_one_level_tree_matches_the_flat_sampler() -> None:
    """A tree of one level is RegMix's flat sampler: the same mean and spread per domain."""
    tokens = {"web": 8e9, "code": 2e9, "books": 1e9, "math": 5e8}
    tree = parse_tree(
        {"levels": [{"temperature": 0.5, "min_strength": 0.1, "max_strength": 5.0}], "domains": tokens}
    )
    nested = propose_tree_mixtures(tree, 4000, proxy_tokens=1e8, seed=6).filter(like="h_")
    flat = propose_mixtures(tokens, 4000, proxy_tokens=1e8, min_weight=0, round_to=0, seed=7).filter(
        like="h_"
    )
    assert nested.mean().to_numpy() == pytest.approx(flat.mean().to_numpy(), abs=0.02)
    assert nested.std().to_numpy() == pytest.approx(flat.std().to_numpy(), abs=0.02)
