"""Loss laws on synthetic runs: forms and gradients, fitting, JSON, intervals, optimisation, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import approx_fprime, minimize, minimize_scalar

from datamixer.cli import main
from mixer import laws
from mixer.laws import (
    AdditiveLaw,
    ChinchillaLaw,
    Features,
    JointLaw,
    MixingLaw,
    compute_optimal,
    load_law,
    optimize_mixture,
)
from mixer.laws.fitting import HuberObjective, hoffmann_grid, huber_terms
from mixer.mixture import read_mixture
from mixer.simplex import check_bounds, exponentiated_gradient, kl_projection

DOMAINS = ("web", "code", "books")
TRUE = {
    "E": 1.7,
    "A": 400.0,
    "alpha": 0.34,
    "B": 1500.0,
    "beta": 0.3,
    "C": np.array([3.0, 1.0, 2.0]),
    "gamma": np.array([0.5, 0.3, 0.4]),
}


def synthetic_runs(seed: int = 0, noise: float = 0.002) -> pd.DataFrame:
    """Runs from a known additive law: 3 sizes x 3 token counts x 8 mixtures."""
    rng = np.random.default_rng(seed)
    mixtures = rng.dirichlet([2.0, 2.0, 2.0], size=8)
    rows = []
    for n in (2e7, 6e7, 2e8):
        for d in (1e9, 2e9, 4e9):
            for m, h in enumerate(mixtures):
                loss = (
                    TRUE["E"]
                    + 1.0 / np.sum(TRUE["C"] * h ** TRUE["gamma"])
                    + TRUE["A"] / n ** TRUE["alpha"]
                    + TRUE["B"] / d ** TRUE["beta"]
                )
                rows.append(
                    {
                        "run": f"m{m}_N{n:g}_D{d:g}",
                        "mixture": f"m{m}",
                        "N": n,
                        "D": d,
                        **{f"h_{dom}": w for dom, w in zip(DOMAINS, h, strict=True)},
                        "loss": loss * (1.0 + noise * rng.standard_normal()),
                    }
                )
    return pd.DataFrame(rows)


FAST = {"n_starts": 32, "n_restarts": 2, "niter": 2, "n_bootstrap": 8}


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return synthetic_runs()


@pytest.fixture(scope="module")
def additive(runs: pd.DataFrame) -> AdditiveLaw:
    return AdditiveLaw(**FAST).fit(runs)


# --- forms and gradients -------------------------------------------------------------------------


def _features(k: int = 3, n: int = 12, seed: int = 1) -> Features:
    rng = np.random.default_rng(seed)
    h = rng.dirichlet(np.ones(k), size=n)
    h[0, 1] = 0.0  # a zero weight must not give NaN gradients
    h[0] /= h[0].sum()
    return Features(rng.normal(0, 1, n), rng.normal(0, 1, n), h)


@pytest.mark.parametrize("form", ["chinchilla", "additive", "joint", "mixing"])
def test_analytic_jacobian_matches_finite_differences(form: str) -> None:
    x = _features()
    spec = laws.FORMS[form]
    rng = np.random.default_rng(2)
    if form == "chinchilla":
        theta = np.array([6.0, 7.0, 0.6, 0.34, 0.37])
    else:
        theta = laws.FORMS[form].random_starts(3, np.array([3.0]), 1, rng)[0]
    value, jac = spec.model(theta, x)
    assert np.all(np.isfinite(jac))
    for row in range(3):
        numeric = approx_fprime(theta, lambda t, r=row: spec.model(t, x)[0][r], 1e-7)
        np.testing.assert_allclose(jac[row], numeric, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["additive", "joint", "mixing"])
def test_gradient_in_h_matches_finite_differences(kind: str) -> None:
    rng = np.random.default_rng(3)
    theta = laws.FORMS[kind].random_starts(3, np.array([3.0]), 1, rng)[0]
    law = laws.make_law(kind)
    h = np.array([0.5, 0.2, 0.3])
    grad = law.form.grad_h(theta, h, 0.3, -0.2)

    def value(v: np.ndarray) -> float:
        return float(
            laws.FORMS[kind].model(theta, Features(np.array([0.3]), np.array([-0.2]), v[None, :]))[0][0]
        )

    np.testing.assert_allclose(grad, approx_fprime(h, value, 1e-8), rtol=1e-4, atol=1e-7)


def test_huber_objective_gradient() -> None:
    x = _features()
    y = laws.additive_law(
        laws.FORMS["additive"].random_starts(3, np.array([3.0]), 1, np.random.default_rng(4))[0], x
    )[0]
    objective = HuberObjective(lambda t: laws.additive_law(t, x), y + 0.01 * np.sin(np.arange(y.size)))
    theta = laws.FORMS["additive"].random_starts(3, np.array([3.0]), 1, np.random.default_rng(5))[0]
    value, grad = objective(theta)
    np.testing.assert_allclose(
        grad, approx_fprime(theta, lambda t: objective(t)[0], 1e-8), rtol=1e-3, atol=1e-3
    )
    assert huber_terms(np.array([0.5e-3, -2e-3]), 1e-3).sum() == pytest.approx(0.5 * 0.25e-6 + 1e-3 * 1.5e-3)


def test_hoffmann_grid_has_4500_points() -> None:
    grid = hoffmann_grid()
    assert grid.shape == (4500, 5)
    assert len(np.unique(grid, axis=0)) == 4500


# --- fitting ---------------------------------------------------------------------------------------


def test_additive_fit_recovers_synthetic_law(additive: AdditiveLaw, runs: pd.DataFrame) -> None:
    fit = additive.fits_[0]
    predicted = additive.predict(runs)
    assert np.mean(np.abs(predicted - runs["loss"]) / runs["loss"]) < 0.004
    assert fit.params["alpha"] == pytest.approx(TRUE["alpha"], rel=0.3)
    assert fit.diagnostics["objective"] > 0
    assert fit.diagnostics["optimizer"]["lbfgs"]["ftol"] < 1e-10
    assert fit.bootstrap.shape == (8, 5 + 2 * len(DOMAINS))
    assert additive.data_["n_rows"] == len(runs) and len(additive.data_["sha256"]) == 64


def test_fit_is_deterministic_under_a_seed(runs: pd.DataFrame, additive: AdditiveLaw) -> None:
    again = AdditiveLaw(**FAST).fit(runs)
    assert json.dumps(again.to_json(), sort_keys=True) == json.dumps(additive.to_json(), sort_keys=True)


def test_json_round_trip(additive: AdditiveLaw, runs: pd.DataFrame, tmp_path) -> None:
    path = additive.save(tmp_path / "law.json")
    loaded = load_law(path)
    assert isinstance(loaded, AdditiveLaw)
    assert loaded.get_params() == additive.get_params()
    np.testing.assert_array_equal(loaded.predict(runs), additive.predict(runs))
    pd.testing.assert_frame_equal(loaded.predict_interval(runs), additive.predict_interval(runs))
    assert loaded.to_json() == json.loads(path.read_text())
    with pytest.raises(ValueError, match="JSON holds a 'additive' law"):
        ChinchillaLaw.from_json(additive.to_json())


def test_predict_interval_contains_point_estimate(additive: AdditiveLaw, runs: pd.DataFrame) -> None:
    far = additive.frame_for(1e10, 1e12, {"web": 0.6, "code": 0.1, "books": 0.3})
    table = pd.concat([additive.predict_interval(runs), additive.predict_interval(far)])
    assert (table["low"] <= table["loss"]).all() and (table["loss"] <= table["high"]).all()
    assert (table["high"] - table["low"]).iloc[-1] > 0  # bootstrap fits disagree at 50x the largest N


def test_joint_and_mixing_laws_fit(runs: pd.DataFrame) -> None:
    joint_runs = runs.copy()
    x = Features(
        np.log(runs["N"].to_numpy() / 1e8),
        np.log(runs["D"].to_numpy() / 2e9),
        runs[[f"h_{d}" for d in DOMAINS]].to_numpy(),
    )
    theta = np.concatenate(
        [
            [math.log(1.7), math.log(0.3), math.log(0.3), 0.8, 1.2],
            np.log([3.0, 1.0, 2.0]),
            np.log([0.5, 0.3, 0.4]),
            np.log([0.5, 2.0, 1.0]),
            np.log([1.0, 0.3, 2.0]),
        ]
    )
    joint_runs["loss"] = laws.joint_law(theta, x)[0]
    joint = JointLaw(**FAST).fit(joint_runs)
    assert np.mean(np.abs(joint.predict(joint_runs) - joint_runs["loss"]) / joint_runs["loss"]) < 0.005
    assert set(joint.fits_[0].params) >= {"CA", "CB", "gamma_A", "gamma_B"}
    one_size = runs[(runs["N"] == 6e7) & (runs["D"] == 2e9)]
    mixing = MixingLaw(**FAST).fit(runs[runs["N"] == 6e7])
    assert len(mixing.fits_) == 3  # one per (N, D)
    assert np.mean(np.abs(mixing.predict(one_size) - one_size["loss"]) / one_size["loss"]) < 0.01
    with pytest.raises(ValueError, match=r"row 1: the mixing law was fitted at fixed \(N, D\)"):
        mixing.predict(runs[runs["N"] == 2e8])


def test_predict_needs_the_laws_domains(additive: AdditiveLaw) -> None:
    with pytest.raises(ValueError, match="not in the mixture"):
        additive.frame_for(1e8, 1e9, {"web": 0.5, "code": 0.5})


# --- optimisation --------------------------------------------------------------------------------


def test_kl_projection_respects_floors_and_caps() -> None:
    lower = np.array([0.05, 0.05, 0.0, 0.1])
    upper = np.array([0.3, 1.0, 0.2, 1.0])
    x = kl_projection(np.array([10.0, 1.0, 5.0, 0.1]), lower, upper)
    assert x.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(x >= lower - 1e-12) and np.all(x <= upper + 1e-12)
    assert x[0] == pytest.approx(0.3) and x[2] == pytest.approx(0.2)


def test_check_bounds_rejects_infeasible_boxes() -> None:
    with pytest.raises(ValueError, match="caps sum"):
        check_bounds(np.zeros(3), np.full(3, 0.3))
    with pytest.raises(ValueError, match="floors sum"):
        check_bounds(np.full(3, 0.4), np.ones(3))
    with pytest.raises(ValueError, match="above its cap"):
        check_bounds(np.array([0.5, 0.0]), np.array([0.4, 1.0]))


def test_exponentiated_gradient_matches_slsqp_under_bounds() -> None:
    target = np.array([0.6, 0.25, 0.1, 0.05])
    scale = np.array([1.0, 2.0, 0.5, 3.0])

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        return float(np.sum(scale * (x - target) ** 2)), 2 * scale * (x - target)

    lower, upper = np.full(4, 0.08), np.array([0.4, 1.0, 1.0, 1.0])
    result = exponentiated_gradient(fun, None, lower, upper)
    reference = minimize(
        lambda x: fun(x)[0],
        np.full(4, 0.25),
        jac=lambda x: fun(x)[1],
        method="SLSQP",
        bounds=list(zip(lower, upper, strict=True)),
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
        options={"ftol": 1e-14},
    )
    assert result.converged
    np.testing.assert_allclose(result.x, reference.x, atol=1e-5)
    assert result.x[0] == pytest.approx(0.4) and result.x[3] == pytest.approx(0.08)


def test_optimize_mixture_respects_floor_and_caps(additive: AdditiveLaw) -> None:
    free = optimize_mixture(additive, 1e8, 2e9)
    capped = optimize_mixture(additive, 1e8, 2e9, floor=0.1, caps={"web": 0.3})
    w = capped.weights
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["web"] <= 0.3 + 1e-9 and min(w.values()) >= 0.1 - 1e-9
    assert capped.loss >= free.loss - 1e-12  # constraints cannot help
    # every bootstrap re-solve keeps the floor and the cap as well
    assert set(capped.spread) == set(DOMAINS)
    assert all(0.1 - 1e-9 <= s["low"] <= s["high"] <= 1 for s in capped.spread.values())
    assert capped.spread["web"]["high"] <= 0.3 + 1e-9
    grid = np.array(
        [
            [a, b, 1 - a - b]
            for a in np.linspace(0.1, 0.3, 21)
            for b in np.linspace(0.1, 0.8, 71)
            if 1 - a - b >= 0.1 - 1e-12
        ]
    )
    best_grid = min(
        additive.predict(
            pd.DataFrame({"N": 1e8, "D": 2e9, **{f"h_{d}": grid[:, j] for j, d in enumerate(DOMAINS)}})
        )
    )
    assert capped.loss <= best_grid + 1e-9
    with pytest.raises(ValueError, match="does not have"):
        optimize_mixture(additive, 1e8, 2e9, caps={"nope": 0.5})


def test_optimize_warns_outside_training_region(additive: AdditiveLaw) -> None:
    result = optimize_mixture(additive, 1e8, 2e9, floor=0.0, caps={"web": 0.02, "code": 0.02})
    assert result.outside_region and result.warnings and not result.in_hull


def test_compute_optimal_satisfies_budget_and_minimises(additive: AdditiveLaw) -> None:
    flops = 1e21
    mixture = {"web": 0.5, "code": 0.2, "books": 0.3}
    result = compute_optimal(additive, flops, mixture)
    assert 6 * result["N"] * result["D"] == pytest.approx(flops, rel=1e-12)

    def loss_at(log_n: float) -> float:
        n = math.exp(log_n)
        return float(additive.predict(additive.frame_for(n, flops / (6 * n), mixture))[0])

    numeric = minimize_scalar(
        loss_at, bounds=(math.log(1e6), math.log(1e13)), method="bounded", options={"xatol": 1e-10}
    )
    assert result["N"] == pytest.approx(math.exp(numeric.x), rel=1e-3)
    assert result["loss"] <= loss_at(math.log(result["N"] * 1.1)) and result["loss"] <= loss_at(
        math.log(result["N"] / 1.1)
    )
    assert result["N_interval"][0] <= result["N"] <= result["N_interval"][1]


# --- CLI -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.__setitem__("loss", f["loss"].where(f.index != 2, -1.0)), "row 3"),
        (lambda f: f.__setitem__("N", f["N"].where(f.index != 4, np.nan)), "row 5"),
        (lambda f: f.__setitem__("h_web", f["h_web"].where(f.index != 6, f["h_web"] + 0.2)), "row 7"),
    ],
)
def test_fit_rejects_bad_rows_naming_them(runs: pd.DataFrame, tmp_path, capsys, edit, message) -> None:
    frame = runs.copy()
    edit(frame)
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    assert (
        main(["law", "fit", "--runs", str(path), "--law", "additive", "--out", str(tmp_path / "l.json")]) == 1
    )
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:")
    assert not (tmp_path / "l.json").exists()


def test_cli_fit_evaluate_predict_optimize(runs: pd.DataFrame, tmp_path, cli) -> None:
    runs_path = tmp_path / "runs.parquet"
    runs.to_parquet(runs_path)
    out = tmp_path / "law.json"
    fitted = cli(
        [
            "law",
            "fit",
            "--runs",
            str(runs_path),
            "--law",
            "additive",
            "--out",
            str(out),
            "--restarts",
            "2",
            "--starts",
            "32",
            "--hops",
            "2",
            "--bootstrap",
            "6",
        ]
    )
    assert fitted["mre"] < 0.01 and out.exists()
    for name in ("law.params.parquet", "law.residuals.parquet", "law.png"):
        assert (tmp_path / name).stat().st_size > 0
    residuals = pd.read_parquet(tmp_path / "law.residuals.parquet")
    assert len(residuals) == len(runs) and {"observed", "predicted", "residual"} <= set(residuals.columns)
    assert "alpha" in set(pd.read_parquet(tmp_path / "law.params.parquet")["parameter"])

    metrics = cli(["law", "evaluate", "--law", str(out), "--runs", str(runs_path)])
    assert {"n", "mre", "max_re", "spearman"} <= set(metrics) and metrics["n"] == len(runs)
    assert metrics["spearman"] > 0.95

    mix = tmp_path / "mix.yaml"
    mix.write_text("weights:\n  web: 0.5\n  code: 0.2\n  books: 0.3\n")
    pred = cli(["law", "predict", "--law", str(out), "--N", "1e9", "--D", "1e11", "--mixture", str(mix)])
    assert pred["low"] <= pred["loss"] <= pred["high"]

    caps = tmp_path / "caps.yaml"
    caps.write_text("caps:\n  web: 0.4\n")
    best = tmp_path / "best.yaml"
    opt = cli(
        [
            "law",
            "optimize",
            "--law",
            str(out),
            "--N",
            "1e8",
            "--D",
            "2e9",
            "--floor",
            "0.05",
            "--caps",
            str(caps),
            "--out",
            str(best),
        ]
    )
    weights = read_mixture(best)
    assert weights["web"] <= 0.4 + 1e-9 and min(weights.values()) >= 0.05 - 1e-9
    assert opt["weights"]["web"] == pytest.approx(weights["web"]) and "spread" in opt

    co = cli(["law", "compute-optimal", "--law", str(out), "--flops", "1e21"])
    assert 6 * co["N"] * co["D"] == pytest.approx(1e21)


def test_cli_predict_needs_mixture_for_mixture_laws(additive: AdditiveLaw, tmp_path, capsys) -> None:
    path = additive.save(tmp_path / "law.json")
    assert main(["law", "predict", "--law", str(path), "--N", "1e9", "--D", "1e11"]) == 1
    assert "needs a mixture" in capsys.readouterr().err


def test_optimize_trades_off_weighted_targets(runs: pd.DataFrame) -> None:
    frame = runs.copy()
    frame["loss_code"] = 2.0 + 1.0 / (0.2 + 5.0 * frame["h_code"] ** 0.5) + 300.0 / frame["N"] ** 0.3
    law = AdditiveLaw(targets=("loss", "loss_code"), n_starts=32, n_restarts=1, niter=1, n_bootstrap=3).fit(
        frame
    )
    assert law.targets_ == ["loss", "loss_code"]
    only_loss = optimize_mixture(law, 1e8, 2e9, targets=["loss"])
    only_code = optimize_mixture(law, 1e8, 2e9, targets=["loss_code"])
    both = optimize_mixture(law, 1e8, 2e9, targets=["loss", "loss_code"], weights=[0.5, 0.5])
    assert only_code.weights["code"] > both.weights["code"] > only_loss.weights["code"]
    assert set(both.losses) == {"loss", "loss_code"}
    with pytest.raises(ValueError, match="2 target"):
        optimize_mixture(law, 1e8, 2e9, targets=["loss", "loss_code"], weights=[1.0])
