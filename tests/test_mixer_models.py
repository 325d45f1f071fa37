"""Mixer models a user can trust: new regressors, baseline, cross-scale checks, proposers, reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from mixer.families import family_target_weights
from mixer.interaction import plot_interaction
from mixer.model_selection import baseline_weights, stack_weights, target_domain
from mixer.regmix import RegMixModel, fit_regmix, optimize_regmix
from mixer.regressors import (
    GaussianProcessMixtureRegressor,
    LawBlendRegressor,
    LightGBMRegressor,
    MixingLawRegressor,
    RidgeRegressor,
    canonical_model,
    make_estimator,
)
from mixer.reuse import freeze, reduced_bounds
from mixer.sampler import propose_mixtures

DOMAINS = ["web", "code", "books", "math"]


def runs(n: int, seed: int = 0, noise: float = 0.01) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mixtures over 4 domains and two smooth losses (web and code) with a little noise."""
    tokens = {"web": 5e10, "code": 2e10, "books": 1e10, "math": 5e9}
    frame = propose_mixtures(tokens, n, proxy_tokens=2e10, seed=seed).set_index("mixture")
    h = frame.to_numpy()
    rng = np.random.default_rng(seed)
    web = 3.0 + 1.5 * np.exp(-4 * h[:, 0]) + 0.3 * np.exp(-6 * h[:, 2]) + rng.normal(0, noise, n)
    code = 2.0 + 2.0 * np.exp(-5 * h[:, 1]) + 0.2 * h[:, 0] + rng.normal(0, noise, n)
    return frame, pd.DataFrame({"loss_web": web, "loss_code": code}, index=frame.index)


# --- scikit-learn conformance -------------------------------------------------------------------


SMALL = [
    LightGBMRegressor(n_estimators=20, learning_rate=0.1),
    LawBlendRegressor(n_estimators=20, learning_rate=0.1, law_starts=8),
    MixingLawRegressor(n_starts=8, keep=1),
    GaussianProcessMixtureRegressor(),
    RidgeRegressor(),
]
# Every check applies (the only skip is scikit-learn's own array-API check, which needs
# SCIPY_ARRAY_API=1). Scores on scikit-learn's generic (non-mixture) data sets are exempt through
# the `poor_score` tag, which the estimators set because they model losses of mixtures. About a
# minute in all on 2 cores, hence slow.


@pytest.mark.slow
@parametrize_with_checks(SMALL)
def test_scikit_learn_conformance(estimator, check) -> None:
    check(estimator)


def test_not_fitted_and_feature_count_errors() -> None:
    X, losses = runs(48)
    for est in (make_estimator(m) for m in ("linear", "gp", "mixing-law")):
        with pytest.raises(NotFittedError):
            est.predict(X.to_numpy())
        est.set_params(**({"n_starts": 8} if "n_starts" in est.get_params() else {}))
        est.fit(X.to_numpy(), losses["loss_web"].to_numpy())
        with pytest.raises(ValueError, match="features"):
            est.predict(X.to_numpy()[:, :3])


def test_model_names_and_alias() -> None:
    assert canonical_model("ensemble") == "law-blend"
    assert isinstance(make_estimator("ensemble"), LawBlendRegressor)
    with pytest.raises(ValueError, match="unknown model 'forest'"):
        canonical_model("forest")


def test_gp_and_mixing_law_round_trip_and_gp_uncertainty(tmp_path: Path) -> None:
    X, losses = runs(64)
    test, test_losses = runs(200, seed=1)
    for kind in ("mixing-law", "gp"):
        model, summary = fit_regmix(
            X, losses, ["loss_web", "loss_code"], model=kind, cv_folds=3, out=tmp_path / kind
        )
        assert summary["cv"]["loss_web"]["spearman"] > 0.9
        loaded = RegMixModel.load(tmp_path / kind)
        np.testing.assert_allclose(loaded.predict(test).to_numpy(), model.predict(test).to_numpy(), rtol=1e-9)
        files = {p.name for p in (tmp_path / kind).iterdir()}
        assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in files)
    # trained where web <= 0.3: the predictive sd grows where web's weight leaves that range
    low_web = X["h_web"].to_numpy() <= 0.3
    gp = GaussianProcessMixtureRegressor().fit(X.to_numpy()[low_web], losses["loss_web"].to_numpy()[low_web])
    _, sd_near = gp.predict(X.to_numpy()[low_web][:10], return_std=True)
    _, sd_far = gp.predict(np.array([[1.0, 0.0, 0.0, 0.0]]), return_std=True)
    assert sd_far[0] > 3 * sd_near.mean()


def test_mixing_law_alone_ranks_like_the_truth() -> None:
    X, losses = runs(128, noise=0.002)
    test, test_losses = runs(300, seed=2, noise=0.0)
    est = MixingLawRegressor().fit(X.to_numpy(), losses["loss_code"].to_numpy())
    from scipy.stats import spearmanr

    assert spearmanr(est.predict(test.to_numpy()), test_losses["loss_code"])[0] > 0.97


# --- trivial baseline, cross-scale validation, selection ---------------------------------------


def test_target_domain_matches_regmix_and_runs_table_names() -> None:
    regmix = [
        "train_the_pile_arxiv",
        "train_the_pile_pile_cc",
        "train_the_pile_pubmed_central",
        "train_the_pile_pubmed_abstracts",
        "train_the_pile_github",
    ]
    assert target_domain("metric/the_pile_pile_cc_val_loss", regmix) == "train_the_pile_pile_cc"
    assert target_domain("metric/the_pile_pubmed_central_val_loss", regmix) == "train_the_pile_pubmed_central"
    assert target_domain("loss_code", DOMAINS) == "code"
    assert target_domain("loss", DOMAINS) is None
    assert baseline_weights({"loss_web": 0.25, "loss_code": 0.75}, DOMAINS) == {"web": 0.25, "code": 0.75}
    assert baseline_weights({"loss": 1.0}, DOMAINS) is None


def two_scale_runs(n: int = 64) -> pd.DataFrame:
    """A runs table at N = 1e6 and 1e8: at the larger size the code domain matters more."""
    small, small_losses = runs(n, seed=0)
    large, _ = runs(n, seed=3)
    h = large.to_numpy()
    rng = np.random.default_rng(3)
    large_web = 2.5 + 1.0 * np.exp(-3 * h[:, 0]) + 0.4 * np.exp(-6 * h[:, 2]) + rng.normal(0, 0.01, n)
    rows = []
    for frame, web, size in ((small, small_losses["loss_web"].to_numpy(), 1e6), (large, large_web, 1e8)):
        table = frame.reset_index(drop=True)
        table["N"], table["D"], table["loss_web"] = size, 1e9, web
        rows.append(table)
    table = pd.concat(rows, ignore_index=True)
    table.insert(0, "run", [f"run-{i}" for i in range(len(table))])
    return table


def test_stack_weights_blend_models_by_what_each_adds() -> None:
    """NNLS on out-of-fold predictions: a target made of 0.7 of one model and 0.3 of another gets
    those weights; a model that only adds noise, or follows the target backwards, gets none."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200), rng.normal(size=200)
    y = 0.7 * a + 0.3 * b + 5.0  # an offset the centring absorbs
    noise, backwards = rng.normal(size=200), -y
    weights = stack_weights(np.column_stack([a, b, noise, backwards]), y)
    np.testing.assert_allclose(weights, [0.7, 0.3, 0.0, 0.0], atol=1e-9)
    flat = stack_weights(np.column_stack([-a, -b]), a + b)  # nothing follows y: equal weights
    np.testing.assert_allclose(flat, [0.5, 0.5])
    with pytest.raises(ValueError, match="predictions must be"):
        stack_weights(np.ones((3, 2)), np.ones(4))


def test_cross_scale_validation_scores_every_model_and_selects(tmp_path: Path) -> None:
    table = two_scale_runs()
    params = {"n_estimators": 50, "learning_rate": 0.1, "law_starts": 8, "n_starts": 16}
    model, summary = fit_regmix(
        table,
        table,
        ["loss_web"],
        key="run",
        cv_folds=3,
        params=params,
        select="cross-scale",
        out=tmp_path / "m",
    )
    across = summary["cross_scale"]["loss_web"]
    assert set(across) == {"law-blend", "lightgbm", "law-lightgbm", "mixing-law", "gp", "linear"}
    assert summary["scale_column"] == "N" and summary["fit_scale"] == 1e6 and summary["n"] == 64
    for metrics in across.values():
        assert metrics["scale"] == 1e8 and -1 <= metrics["spearman"] <= 1
        assert metrics["baseline"] is not None and -1 <= metrics["baseline_spearman"] <= 1
    best = max(across, key=lambda m: across[m]["spearman"])
    assert summary["model"] == best == model.model
    assert summary["cv"]["loss_web"]["baseline_spearman"] > 0.3  # minus the web weight ranks web loss
    with pytest.raises(ValueError, match="two or more model sizes"):
        fit_regmix(table[table["N"] == 1e6], table, ["loss_web"], key="run", select="cross-scale")


def test_cross_scale_selects_for_a_target_that_is_no_domains_loss() -> None:
    """A target named after no domain (e.g. an overall loss) has no trivial baseline, but it still
    gets its Spearman at the larger scale, and selection by that figure works."""
    table = two_scale_runs().rename(columns={"loss_web": "loss"})
    params = {"n_estimators": 50, "learning_rate": 0.1, "law_starts": 8, "n_starts": 16}
    candidates = ["linear", "lightgbm"]
    model, summary = fit_regmix(
        table, table, ["loss"], key="run", params=params, select="cross-scale", candidates=candidates
    )
    across = summary["cross_scale"]["loss"]
    assert set(across) == set(candidates)
    for metrics in across.values():
        assert metrics["baseline"] is None and "baseline_spearman" not in metrics
        assert metrics["spearman_ci_low"] <= metrics["spearman"] <= metrics["spearman_ci_high"]
    assert model.model == max(candidates, key=lambda m: across[m]["spearman"])


def test_select_by_cv_picks_the_best_cv_model() -> None:
    X, losses = runs(64)
    params = {"n_estimators": 50, "learning_rate": 0.1, "law_starts": 8, "n_starts": 16}
    _, summary = fit_regmix(X, losses, ["loss_web", "loss_code"], cv_folds=3, params=params, select="cv")
    by_model = summary["cv_by_model"]
    mean = {m: np.mean([by_model[t][m]["spearman"] for t in by_model]) for m in by_model["loss_web"]}
    assert summary["model"] == max(mean, key=mean.get)
    assert summary["cv"]["loss_web"]["spearman"] == by_model["loss_web"][summary["model"]]["spearman"]


# --- interaction matrix --------------------------------------------------------------------------


def test_interaction_parquet_schema_and_signs(tmp_path: Path) -> None:
    X, losses = runs(96)
    fit_regmix(X, losses, ["loss_web", "loss_code"], model="mixing-law", cv_folds=0, out=tmp_path / "m")
    table = pq.read_table(tmp_path / "m" / "interaction.parquet")
    assert table.column_names == ["domain", "target", "effect"]
    assert [str(t) for t in table.schema.types] == ["string", "string", "double"]
    frame = table.to_pandas().set_index(["target", "domain"])["effect"]
    assert len(frame) == 8
    # more web lowers web loss, more code lowers code loss; the other domains raise them
    assert frame[("loss_web", "web")] < 0 and frame[("loss_code", "code")] < 0
    assert frame[("loss_web", "math")] > 0 and frame[("loss_code", "math")] > 0
    assert plot_interaction(table.to_pandas(), tmp_path / "interaction.png").stat().st_size > 1000


# --- proposers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def law_model() -> RegMixModel:
    X, losses = runs(96)
    model, _ = fit_regmix(X, losses, ["loss_web", "loss_code"], model="mixing-law", cv_folds=0)
    return model


def test_exact_proposer_beats_or_matches_simulate_within_caps(law_model: RegMixModel, tmp_path: Path) -> None:
    out = tmp_path / "mix.yaml"
    result = optimize_regmix(
        law_model, out, n_draws=20000, top_k=20, proposer="exact", caps={"web": 0.4}, floors={"math": 0.05}
    )
    exact, simulate = result["proposals"]["exact"], result["proposals"]["simulate"]
    assert exact["predicted"] <= simulate["predicted"] + 1e-6
    assert result["predicted"] == exact["predicted"] and result["weights"] == exact["weights"]
    assert result["weights"]["web"] <= 0.4 + 1e-9 and result["weights"]["math"] >= 0.05 - 1e-9
    assert sum(result["weights"].values()) == pytest.approx(1.0)
    # a grid over the feasible simplex finds nothing better than the exact answer
    grid = (
        propose_mixtures(
            {d: 1.0 for d in DOMAINS},
            3000,
            proxy_tokens=1e-9,
            caps={"web": 0.4},
            floors={"math": 0.05},
            seed=5,
        )
        .drop(columns="mixture")
        .to_numpy()
    )
    assert law_model.objective()(grid).min() >= exact["predicted"] - 1e-4
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["provenance"]["proposer"] == "exact"


def test_kl_regulariser_pulls_toward_the_prior(law_model: RegMixModel) -> None:
    free = optimize_regmix(law_model, n_draws=5000, top_k=20, proposer="exact")
    tied = optimize_regmix(law_model, n_draws=5000, top_k=20, proposer="exact", kl_reg=1.0)
    assert tied["kl_to_prior"] < 0.5 * free["kl_to_prior"]
    assert tied["predicted"] >= free["predicted"]


def test_worst_mixture_is_worse_than_every_training_mixture(law_model: RegMixModel) -> None:
    worst = optimize_regmix(law_model, n_draws=5000, top_k=20, proposer="exact", worst=True)
    best = optimize_regmix(law_model, n_draws=5000, top_k=20, proposer="exact")
    train = law_model.objective()(law_model.matrix(law_model.training_mixtures))
    assert worst["predicted"] >= train.max() - 1e-6 > best["predicted"]


def test_uncertainty_penalty_keeps_the_answer_near_training_mixtures(law_model: RegMixModel) -> None:
    free = optimize_regmix(law_model, n_draws=20000, top_k=20)
    careful = optimize_regmix(law_model, n_draws=20000, top_k=20, uncertainty_penalty=5.0)
    assert careful["uncertainty"] < free["uncertainty"]
    assert careful["uncertainty_kind"] == "L2 to nearest training mixture"


def test_exact_needs_a_smooth_model() -> None:
    X, losses = runs(64)
    trees, _ = fit_regmix(X, losses, ["loss_web"], model="lightgbm", cv_folds=0, params={"n_estimators": 20})
    with pytest.raises(ValueError, match="smooth model"):
        optimize_regmix(trees, n_draws=1000, top_k=10, proposer="exact")


def test_task_families_weight_targets() -> None:
    weights = family_target_weights(
        {"code": {"weight": 1, "targets": ["a", "b"]}, "prose": {"weight": 3, "targets": {"c": 2, "d": 1}}}
    )
    assert weights == pytest.approx({"a": 0.125, "b": 0.125, "c": 0.5, "d": 0.25})
    with pytest.raises(ValueError, match="family 'x'"):
        family_target_weights({"x": {"weight": 1}})


# --- mixture reuse -------------------------------------------------------------------------------


def test_freeze_expand_reduce_and_bounds() -> None:
    previous = {"web": 0.5, "code": 0.3, "books": 0.2}
    reuse = freeze(previous, DOMAINS, ["math", "code"])
    assert reuse.frozen == ("web", "books") and reuse.reduced_domains == ["frozen", "math", "code"]
    full = reuse.expand(np.array([[0.7, 0.1, 0.2]]))
    np.testing.assert_allclose(full, [[0.5, 0.2, 0.2, 0.1]])
    np.testing.assert_allclose(reuse.reduce(full), [[0.7, 0.1, 0.2]])
    lower, upper = reduced_bounds(reuse, np.zeros(4), np.array([0.25, 1, 1, 1]))
    assert upper[0] == pytest.approx(0.25 / (0.5 / 0.7))  # web's cap binds the virtual domain
    with pytest.raises(ValueError, match="no weight for unchanged"):
        freeze({"web": 1.0}, DOMAINS, ["math"])
    with pytest.raises(ValueError, match="unknown domain"):
        freeze(previous, DOMAINS, ["video"])


REGMIX = Path(__file__).resolve().parents[2] / "shared" / "data" / "regmix"
FOUR_TARGETS = [f"metric/the_pile_{t}_val_loss" for t in ("pile_cc", "github", "arxiv", "wikipedia_en")]


@pytest.mark.slow
def test_reuse_on_regmix_reaches_full_reoptimization_with_16_runs() -> None:
    """Olmix Sec. 5.1 on RegMix's 17 domains: three domains change (here: arrive), 14 stay frozen."""
    if not REGMIX.exists():
        pytest.skip(f"shared RegMix runs not found at {REGMIX}")
    from mixer.reuse import VIRTUAL, expand_frame
    from mixer.runs import load_mixtures, load_targets

    mixtures = load_mixtures(REGMIX / "train_mixture_1m.csv")
    losses = load_targets(REGMIX / "train_pile_loss_1m.csv", FOUR_TARGETS)
    # the oracle: a smooth model of the 512 shared runs stands in for training runs
    oracle, _ = fit_regmix(mixtures, losses, FOUR_TARGETS, model="mixing-law", cv_folds=0)
    truth = oracle.objective()
    changed = ["train_the_pile_github", "train_the_pile_arxiv", "train_the_pile_wikipedia_en"]
    previous = optimize_regmix(
        oracle, n_draws=20000, top_k=50, proposer="exact", caps=dict.fromkeys(changed, 0.0)
    )
    full = optimize_regmix(oracle, n_draws=20000, top_k=50, proposer="exact")
    reuse = freeze(previous["weights"], oracle.domains, changed)
    swarm = propose_mixtures({VIRTUAL: 1.0, **dict.fromkeys(changed, 1.0)}, 16, proxy_tokens=1e-9, seed=0)
    runs_16 = expand_frame(reuse, swarm).drop(columns="mixture")
    labels = oracle.predict(runs_16.to_numpy())
    labels.index = runs_16.index
    small, _ = fit_regmix(runs_16, labels, FOUR_TARGETS, model="mixing-law", cv_folds=0)
    reused = optimize_regmix(small, n_draws=20000, top_k=50, proposer="exact", reuse=reuse)
    got = float(truth(np.array([list(reused["weights"].values())]))[0])
    before, best = previous["predicted"], full["predicted"]
    assert got <= best * 1.005  # within 0.5% of the full re-optimisation's loss
    assert before - got > 0.5 * (before - best)  # and most of its gain, from 16 runs instead of 512
    frozen = np.array([reused["weights"][d] for d in reuse.frozen])
    np.testing.assert_allclose(frozen / frozen.sum(), reuse.ratios, rtol=1e-9)


# --- the CLI -------------------------------------------------------------------------------------


def cli(args: list[str], capsys) -> tuple[dict, str]:
    from datamixer.cli import main

    assert main(args) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    return json.loads(captured.out.strip().splitlines()[-1]), captured.err


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mixer_models")
    X, losses = runs(96)
    X.rename(columns=lambda c: c[2:]).rename_axis("index").reset_index().to_csv(path / "mix.csv", index=False)
    losses.rename_axis("index").reset_index().to_csv(path / "loss.csv", index=False)
    # a loss that no mixture explains: the model cannot beat the baseline on it
    rng = np.random.default_rng(9)
    noise = pd.DataFrame({"index": X.index, "loss_web": 3 + rng.normal(0, 0.1, len(X))})
    noise.to_csv(path / "noise.csv", index=False)
    # web loss driven mostly by the books weight: here the model must beat "minus the web weight"
    h = X.to_numpy()
    mixed = 3 + 0.3 * np.exp(-4 * h[:, 0]) + 1.0 * np.exp(-6 * h[:, 2]) + rng.normal(0, 0.005, len(X))
    pd.DataFrame({"index": X.index, "loss_web": mixed}).to_csv(path / "mixed.csv", index=False)
    pd.DataFrame({"domain": ["web", "code", "books", "math"], "tokens": [5e10, 2e10, 1e10, 5e9]}).to_csv(
        path / "tokens.csv", index=False
    )
    return path


def test_cli_fit_and_evaluate_print_the_baseline_and_warn(tables: Path, tmp_path: Path, capsys) -> None:
    def fit(losses: str, out: Path) -> tuple[dict, str]:
        return cli(
            [
                "regmix",
                "fit",
                "--mixtures",
                str(tables / "mix.csv"),
                "--target",
                "loss_web",
                "--cv-folds",
                "3",
                "--losses",
                str(tables / losses),
                "--model",
                "mixing-law",
                "--out",
                str(out),
            ],
            capsys,
        )

    # web loss follows the web weight almost alone: the trivial baseline is as good, and fit says so
    fitted, err = fit("loss.csv", tmp_path / "plain")
    assert "does not beat the trivial baseline" in err and fitted["cv_beats_baseline"] is False
    fitted, err = fit("mixed.csv", tmp_path / "m")
    assert "trivial baseline" in err and "warning" not in err
    assert fitted["cv_baseline_spearman"] < fitted["cv_spearman"] and fitted["cv_beats_baseline"]
    assert (tmp_path / "m" / "interaction.parquet").exists()
    evaluated, err = cli(
        [
            "regmix",
            "evaluate",
            "--model",
            str(tmp_path / "m"),
            "--mixtures",
            str(tables / "mix.csv"),
            "--losses",
            str(tables / "noise.csv"),
        ],
        capsys,
    )
    assert "trivial baseline" in err and "does not beat the trivial baseline" in err
    assert evaluated["beats_baseline"] is False and "baseline_spearman" in evaluated


def test_cli_optimize_exact_families_and_reuse(tables: Path, tmp_path: Path, capsys) -> None:
    model = str(tmp_path / "m")
    cli(
        [
            "regmix",
            "fit",
            "--mixtures",
            str(tables / "mix.csv"),
            "--losses",
            str(tables / "loss.csv"),
            "--target",
            "loss_web",
            "--target",
            "loss_code",
            "--model",
            "mixing-law",
            "--cv-folds",
            "0",
            "--out",
            model,
        ],
        capsys,
    )
    scored, err = cli(
        [
            "regmix",
            "evaluate",
            "--model",
            model,
            "--mixtures",
            str(tables / "mix.csv"),
            "--losses",
            str(tables / "loss.csv"),
            "--target-weights",
            "loss_web=1,loss_code=3",
        ],
        capsys,
    )
    assert scored["combined"]["target_weights"] == {"loss_web": 0.25, "loss_code": 0.75}
    assert scored["combined"]["baseline"] is not None and "weighted targets: spearman" in err
    families = tmp_path / "families.yaml"
    families.write_text(
        "families:\n  prose: {weight: 3, targets: [loss_web]}\n  code: {weight: 1, targets: [loss_code]}\n"
    )
    out = tmp_path / "best.yaml"
    result, err = cli(
        [
            "regmix",
            "optimize",
            "--model",
            model,
            "--out",
            str(out),
            "--draws",
            "5000",
            "--top-k",
            "20",
            "--proposer",
            "exact",
            "--kl-reg",
            "0.01",
            "--families",
            str(families),
        ],
        capsys,
    )
    assert result["targets"] == {"loss_web": 0.75, "loss_code": 0.25}
    assert set(result["proposals"]) == {"simulate", "exact"} and "exact: predicted" in err
    worst, _ = cli(
        [
            "regmix",
            "optimize",
            "--model",
            model,
            "--out",
            str(tmp_path / "worst.yaml"),
            "--draws",
            "5000",
            "--top-k",
            "20",
            "--worst",
        ],
        capsys,
    )
    assert worst["predicted"] > result["predicted"]
    reused, _ = cli(
        [
            "regmix",
            "optimize",
            "--model",
            model,
            "--out",
            str(tmp_path / "reuse.yaml"),
            "--draws",
            "5000",
            "--top-k",
            "20",
            "--reuse",
            str(out),
            "--changed",
            "math",
        ],
        capsys,
    )
    frozen = {d: reused["weights"][d] for d in ("web", "code", "books")}
    before = {d: result["weights"][d] for d in frozen}
    for d in frozen:
        assert frozen[d] / sum(frozen.values()) == pytest.approx(before[d] / sum(before.values()), rel=1e-6)
    proposed, _ = cli(
        [
            "regmix",
            "propose",
            "--tokens",
            str(tables / "tokens.csv"),
            "--out",
            str(tmp_path / "swarm"),
            "--n",
            "12",
            "--reuse",
            str(out),
            "--changed",
            "math,books",
        ],
        capsys,
    )
    swarm = pd.read_parquet(tmp_path / "swarm" / "proposals.parquet")
    weights = ["h_web", "h_code", "h_books", "h_math"]
    assert proposed["n"] == 12 and list(swarm.columns)[:5] == ["mixture", *weights]
    assert list(swarm.columns)[5:] == [f"epochs_{c[2:]}" for c in weights] + ["max_epochs"]
    live = swarm["h_code"] > 0.01  # the rounding grid (2e-4) blurs the ratio of tiny weights
    assert live.sum() >= 6
    ratio = swarm["h_web"][live] / swarm["h_code"][live]
    assert np.allclose(ratio, result["weights"]["web"] / result["weights"]["code"], rtol=0.05)


@pytest.mark.slow
def test_regmix_cross_scale_fit_on_1m_scored_at_60m(tmp_path: Path) -> None:
    """RegMix's shared runs as one runs table: 512 train runs at 1M, 256 test mixtures at 60M."""
    if not REGMIX.exists():
        pytest.skip(f"shared RegMix runs not found at {REGMIX}")
    from mixer.runs import load_mixtures, load_targets

    target = "metric/the_pile_pile_cc_val_loss"
    tables = []
    for mixtures, losses, size in (
        ("train_mixture_1m", "train_pile_loss_1m", 1e6),
        ("test_mixture_60m", "test_pile_loss_60m", 6e7),
    ):
        weights = load_mixtures(REGMIX / f"{mixtures}.csv")
        table = weights.add_prefix("h_").reset_index(drop=True)
        table[target] = load_targets(REGMIX / f"{losses}.csv", [target]).loc[weights.index, target].to_numpy()
        table["N"] = size
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    table.insert(0, "run", np.arange(len(table)))
    model, summary = fit_regmix(
        table,
        table,
        [target],
        key="run",
        cv_folds=0,
        select="cross-scale",
        candidates=["law-blend", "lightgbm", "mixing-law", "linear"],
    )
    across = summary["cross_scale"][target]
    assert summary["n"] == 512 and summary["fit_scale"] == 1e6
    assert across["lightgbm"]["spearman"] > 0.98 and across["linear"]["spearman"] < 0.9
    assert across["lightgbm"]["baseline_spearman"] == pytest.approx(0.814, abs=0.01)
    assert all(m["beats_baseline"] for m in across.values())
    assert summary["model"] == "law-blend" and across["law-blend"]["spearman"] > 0.985


def test_cli_fit_select_cross_scale_with_candidates(tmp_path: Path, capsys) -> None:
    table = two_scale_runs(48)
    table.to_parquet(tmp_path / "runs.parquet", index=False)
    runs_path = str(tmp_path / "runs.parquet")
    fitted, err = cli(
        [
            "regmix",
            "fit",
            "--mixtures",
            runs_path,
            "--losses",
            runs_path,
            "--key",
            "run",
            "--target",
            "loss_web",
            "--select",
            "cross-scale",
            "--candidates",
            "linear,mixing-law",
            "--cv-folds",
            "0",
            "--out",
            str(tmp_path / "m"),
        ],
        capsys,
    )
    across = fitted["cross_scale"]["loss_web"]
    assert set(across) == {"linear", "mixing-law"} and fitted["model"] in across
    assert fitted["model"] == max(across, key=lambda m: across[m]["spearman"])
    assert "fitted at N=1e+06, spearman at 1e+08" in err
    assert RegMixModel.load(tmp_path / "m").model == fitted["model"]


def test_cross_scale_keeps_each_sizes_final_checkpoint() -> None:
    table = two_scale_runs(40)
    early = table.assign(D=5e8, loss_web=table["loss_web"] + 0.5, run=table["run"] + "@early")
    both = pd.concat([table, early], ignore_index=True)
    _, summary = fit_regmix(
        both, both, ["loss_web"], key="run", cv_folds=0, candidates=["linear"], model="linear"
    )
    assert summary["n"] == 40 and summary["earlier_checkpoints_left_out"] == 80
    _, alone = fit_regmix(
        table, table, ["loss_web"], key="run", cv_folds=0, candidates=["linear"], model="linear"
    )
    assert (
        summary["cross_scale"]["loss_web"]["linear"]["spearman"]
        == alone["cross_scale"]["loss_web"]["linear"]["spearman"]
    )


def test_gp_uncertainty_penalty_uses_the_predictive_sd() -> None:
    X, losses = runs(64)
    low_web = X["h_web"].to_numpy() <= 0.3  # the optimum (more web) lies outside the training region
    gp, _ = fit_regmix(X[low_web], losses[low_web], ["loss_web"], model="gp", cv_folds=0)
    free = optimize_regmix(gp, n_draws=5000, top_k=20, proposer="exact")
    careful = optimize_regmix(gp, n_draws=5000, top_k=20, proposer="exact", uncertainty_penalty=20.0)
    assert free["uncertainty_kind"] == careful["uncertainty_kind"] == "gp sd"
    assert careful["uncertainty"] < free["uncertainty"] and careful["weights"]["web"] < free["weights"]["web"]
