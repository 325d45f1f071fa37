"""RegMix regressors, the model directory, the optimiser, and the accuracy floors on real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from mixer import optimize as opt
from mixer.metrics import regression_metrics, spearman_ci
from mixer.mixture import read_mixture
from mixer.regmix import (
    LawBlendRegressor,
    LightGBMRegressor,
    RegMixModel,
    RidgeRegressor,
    fit_regmix,
    optimize_regmix,
)
from mixer.runs import load_mixtures, load_targets
from mixer.sampler import propose_mixtures

REGMIX = Path(__file__).resolve().parents[2] / "shared" / "data" / "regmix"
PILE_CC = "metric/the_pile_pile_cc_val_loss"
needs_regmix = pytest.mark.skipif(not REGMIX.exists(), reason="shared RegMix runs not found")


def synthetic_runs(n: int, seed: int = 0, caps: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mixtures over 4 domains and two smooth losses with a little noise."""
    tokens = {"web": 5e10, "code": 2e10, "books": 1e10, "math": 5e9}
    frame = propose_mixtures(tokens, n, proxy_tokens=2e10, caps=caps, seed=seed).set_index("mixture")
    h = frame.to_numpy()
    rng = np.random.default_rng(seed)
    web = 3.0 + 1.5 * np.exp(-4 * h[:, 0]) + 0.3 * np.exp(-6 * h[:, 2]) + rng.normal(0, 0.01, n)
    code = 2.0 + 2.0 * np.exp(-5 * h[:, 1]) + 0.2 * h[:, 0] + rng.normal(0, 0.01, n)
    losses = pd.DataFrame({"loss_web": web, "loss_code": code}, index=frame.index)
    return frame, losses


def test_lightgbm_learns_from_32_runs_where_default_hyperparameters_are_constant() -> None:
    train, losses = synthetic_runs(32, seed=0)
    test, test_losses = synthetic_runs(200, seed=1)
    import lightgbm as lgb

    default = lgb.LGBMRegressor(n_estimators=200, n_jobs=1, verbosity=-1)
    default.fit(train.to_numpy(), losses["loss_web"])
    assert np.ptp(default.predict(test.to_numpy())) == 0  # RegMix's recipe at 32 runs: constant
    model = LightGBMRegressor(n_estimators=200, learning_rate=0.05).fit(train, losses["loss_web"])
    pred = model.predict(test)
    assert np.ptp(pred) > 0
    assert spearmanr(pred, test_losses["loss_web"])[0] > 0.7


def test_estimators_are_scikit_learn_compatible() -> None:
    X, losses = synthetic_runs(80)
    for est in (LightGBMRegressor(n_estimators=50, learning_rate=0.1), RidgeRegressor()):
        assert clone(est).get_params() == est.get_params()
        scores = cross_val_score(est, X.to_numpy(), losses["loss_web"].to_numpy(), cv=3, scoring="r2")
        assert np.isfinite(scores).all() and scores.mean() > 0.5


def test_model_directory_round_trip_without_pickle(tmp_path: Path) -> None:
    X, losses = synthetic_runs(64)
    for kind in ("lightgbm", "ensemble", "linear"):
        model, summary = fit_regmix(
            X,
            losses,
            ["loss_web", "loss_code"],
            model=kind,
            cv_folds=2,
            params={"n_estimators": 50} if kind != "linear" else None,
            out=tmp_path / kind,
        )
        loaded = RegMixModel.load(tmp_path / kind)
        np.testing.assert_allclose(loaded.predict(X).to_numpy(), model.predict(X).to_numpy(), rtol=1e-12)
        files = {p.name for p in (tmp_path / kind).iterdir()}
        assert "manifest.json" in files and "training_mixtures.parquet" in files
        assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in files)
        manifest = json.loads((tmp_path / kind / "manifest.json").read_text())
        assert manifest["domains"] == ["web", "code", "books", "math"]
        assert manifest["model"] == {"ensemble": "law-blend"}.get(kind, kind)  # one name per model
        cv = pd.read_parquet(tmp_path / kind / "cv_report.parquet")
        assert set(cv["target"]) == {"loss_web", "loss_code"}
        assert summary["cv"]["loss_web"]["spearman_ci_low"] <= summary["cv"]["loss_web"]["spearman"]
    assert (tmp_path / "lightgbm" / "target_00.lightgbm.txt").read_text().startswith("tree")


def test_metrics_and_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    pred = y + rng.normal(scale=0.5, size=200)
    metrics = regression_metrics(y, pred)
    assert metrics["n"] == 200
    assert metrics["spearman_ci_low"] < metrics["spearman"] < metrics["spearman_ci_high"]
    assert metrics["mse"] == pytest.approx(np.mean((y - pred) ** 2))
    assert regression_metrics(y, np.zeros(200), n_boot=0)["spearman"] == 0.0
    lo, hi = spearman_ci(y, y)
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_optimizer_respects_caps_floors_and_combines_targets() -> None:
    X, losses = synthetic_runs(96, caps={"math": 0.2})
    model, _ = fit_regmix(X, losses, ["loss_web", "loss_code"], cv_folds=0, params={"n_estimators": 200})
    web_only = optimize_regmix(model, n_draws=20_000, top_k=50, target_weights={"loss_web": 1.0})
    both = optimize_regmix(model, n_draws=20_000, top_k=50)
    assert web_only["weights"]["web"] > both["weights"]["web"]
    assert both["weights"]["code"] > web_only["weights"]["code"]
    capped = optimize_regmix(
        model,
        n_draws=20_000,
        top_k=50,
        caps={"web": 0.3},
        floors={"math": 0.05},
        target_weights={"loss_web": 1.0},
    )
    assert capped["weights"]["web"] <= 0.3 + 1e-6
    assert capped["weights"]["math"] >= 0.05 - 1e-6
    assert sum(capped["weights"].values()) == pytest.approx(1.0)
    again = optimize_regmix(
        model,
        n_draws=20_000,
        top_k=50,
        caps={"web": 0.3},
        floors={"math": 0.05},
        target_weights={"loss_web": 1.0},
    )
    assert again == capped  # seeded: the same inputs give the same mixture
    forced = optimize_regmix(model, n_draws=5_000, top_k=20, floors={"math": 0.5})
    assert forced["outside_training"] and "math" in forced["outside_range"]
    with pytest.raises(ValueError, match="unknown domain"):
        optimize_regmix(model, n_draws=1000, top_k=10, caps={"nope": 0.5})


def test_refine_search_finds_the_brute_force_top_k() -> None:
    X, losses = synthetic_runs(128)
    est = LightGBMRegressor(n_estimators=100, learning_rate=0.05).fit(X, losses["loss_web"])
    draws = opt.draw_mixtures(np.full(4, 0.25), 60_000, seed=0)
    brute, _, _ = opt.top_k_brute(est.predict, draws, 50)
    refined, _, evaluated, _ = opt.top_k_refine(est.predict, draws, 50, batch=2000)
    assert evaluated < len(draws) / 2
    assert len(set(brute) & set(refined)) >= 45


@needs_regmix
def test_accuracy_floors_on_regmix_runs() -> None:
    train = load_mixtures(REGMIX / "train_mixture_1m.csv")
    y = load_targets(REGMIX / "train_pile_loss_1m.csv", [PILE_CC]).loc[train.index, PILE_CC]
    lgbm = LightGBMRegressor().fit(train, y)  # RegMix's recipe: 1,000 trees, lr 0.01
    linear = RidgeRegressor().fit(train, y)
    blend = LawBlendRegressor().fit(train, y)  # `--model law-blend` (alias ensemble)
    test = load_mixtures(REGMIX / "test_mixture_1m.csv")
    for size, floor in (("1m", 0.985), ("60m", 0.982)):
        truth = load_targets(REGMIX / f"test_pile_loss_{size}.csv", [PILE_CC]).loc[test.index, PILE_CC]
        rho = spearmanr(lgbm.predict(test), truth)[0]
        rho_linear = spearmanr(linear.predict(test), truth)[0]
        rho_blend = spearmanr(blend.predict(test), truth)[0]
        baseline = spearmanr(-test["train_the_pile_pile_cc"], truth)[0]
        print(
            f"{size}: lightgbm {rho:.4f} ensemble {rho_blend:.4f} linear {rho_linear:.4f} "
            f"minus-pile-cc {baseline:.4f}"
        )
        assert rho >= floor
        assert rho_blend > rho
        assert 0.87 <= rho_linear <= 0.93
        assert rho > baseline + 0.1


@needs_regmix
@pytest.mark.slow  # ~30 s: fits on RegMix's released runs and searches the mixture
def test_fit_and_optimize_lands_near_regmix_released_mixture(tmp_path: Path) -> None:
    fit_regmix(
        REGMIX / "train_mixture_1m.csv",
        REGMIX / "train_pile_loss_1m.csv",
        PILE_CC,
        out=tmp_path / "model",
        cv_folds=0,
    )
    summary = optimize_regmix(tmp_path / "model", tmp_path / "regmix.yaml", seed=0)
    ours = read_mixture(tmp_path / "regmix.yaml")
    released = read_mixture(REGMIX / "mixture_config_1b" / "regmix.yaml")
    l1 = sum(abs(ours[d] - released[d]) for d in released)
    print(f"Pile-CC {ours['train_the_pile_pile_cc']:.3f} (released 0.870), L1 to released {l1:.3f}")
    assert abs(ours["train_the_pile_pile_cc"] - 0.870) < 0.04
    assert l1 < 0.15
    assert not summary["outside_training"]
    provenance = yaml.safe_load((tmp_path / "regmix.yaml").read_text())["provenance"]
    assert provenance["seed"] == 0 and provenance["targets"] == {PILE_CC: 1.0}
    assert read_mixture(tmp_path / "regmix.json") == pytest.approx(ours)
    topk = pd.read_parquet(tmp_path / "regmix.topk.parquet")
    assert len(topk) == 100 and topk["predicted"].is_monotonic_increasing
