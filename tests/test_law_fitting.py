"""The law package's searches and contracts: least squares vs basin-hopping, the one Huber loss,
per-domain sums for the overall loss, the mixing law on arrays, scikit-learn conformance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import least_squares
from sklearn.exceptions import NotFittedError
from test_law import DOMAINS, FAST, TRUE, synthetic_runs

from mixer.laws import (
    AdditiveLaw,
    ChinchillaLaw,
    Features,
    JointLaw,
    MixingLaw,
    additive_law,
    compute_optimal,
    fit_mixing_law,
    load_law,
    make_law,
    mixing_law_loss,
    optimize_mixture,
)
from mixer.laws.estimators import loss_components, size_weights
from mixer.laws.fitting import HuberObjective, huber_terms, weighted_huber_rho
from mixer.laws.forms import additive_grad_h


def test_huber_terms_is_the_loss_scipy_least_squares_minimises() -> None:
    """least_squares(loss="huber", f_scale=delta) reports cost = the summed huber_terms, so the
    least-squares search and the L-BFGS objective minimise one function."""
    rng = np.random.default_rng(0)
    residual = rng.normal(0, 3e-3, 50)  # both sides of delta = 1e-3
    result = least_squares(lambda t: residual + 0 * t, np.zeros(1), loss="huber", f_scale=1e-3, max_nfev=1)
    assert result.cost == pytest.approx(huber_terms(residual, 1e-3).sum(), rel=1e-12)
    objective = HuberObjective(lambda t: (residual + 0 * t[0], np.zeros((50, 1))), np.zeros(50))
    assert objective.value(np.zeros(1)) == pytest.approx(huber_terms(residual).sum(), rel=1e-12)


def test_least_squares_search_recovers_the_synthetic_law() -> None:
    runs = synthetic_runs()
    # least squares needs more than FAST's 6 searches here: this law's mixture term and E trade off
    law = AdditiveLaw(n_starts=64, n_restarts=3, niter=3, n_bootstrap=8, search="least_squares").fit(runs)
    fit = law.fits_[0]
    assert np.mean(np.abs(law.predict(runs) - runs["loss"]) / runs["loss"]) < 0.004
    assert fit.params["alpha"] == pytest.approx(TRUE["alpha"], rel=0.3)
    assert fit.diagnostics["optimizer"]["search"] == "least_squares"
    assert fit.bootstrap.shape == (8, 5 + 2 * len(DOMAINS))


def test_auto_search_picks_least_squares_only_on_large_tables() -> None:
    law = AdditiveLaw()
    assert law._search_for(216) == "basinhopping" and law._search_for(1098) == "least_squares"
    assert JointLaw()._search_for(1098) == "basinhopping"  # least squares stopped above its optimum
    with pytest.raises(ValueError, match="search must be one of"):
        AdditiveLaw(search="nope", n_starts=4, n_restarts=1, niter=0, n_bootstrap=0).fit(synthetic_runs())


def _per_domain_runs() -> pd.DataFrame:
    """Two domain losses from different additive laws (different size exponents too); the overall
    loss is their mean."""
    runs = synthetic_runs()
    h = runs[[f"h_{d}" for d in DOMAINS]].to_numpy()
    size = 400.0 / runs["N"] ** 0.34 + 1500.0 / runs["D"] ** 0.3
    runs["loss_web"] = 1.5 + 1.0 / (0.5 + 4.0 * h[:, 0] ** 0.5) + size
    code_size = 150.0 / runs["N"] ** 0.28 + 3000.0 / runs["D"] ** 0.36  # its own compute-optimal N
    runs["loss_code"] = 1.2 + 1.0 / (0.3 + 6.0 * h[:, 1] ** 0.4) + code_size
    runs["loss"] = 0.5 * (runs["loss_web"] + runs["loss_code"])
    return runs


def test_per_domain_laws_predict_the_overall_loss_as_their_weighted_sum(tmp_path) -> None:
    runs = _per_domain_runs()
    assert loss_components(runs, "loss") == pytest.approx({"loss_code": 0.5, "loss_web": 0.5})
    law = AdditiveLaw(**FAST, per_domain=True).fit(runs)
    assert (
        law.targets_[0] == "loss"
        and set(law.targets_[1:]) == {"loss_code", "loss_web"}
        and len(law.fits_) == 2
    )
    overall = law.predict_interval(runs)
    parts = 0.5 * (law.predict(runs, "loss_web") + law.predict(runs, "loss_code"))
    np.testing.assert_allclose(overall["loss"], parts, rtol=1e-12)
    assert (overall["low"] <= overall["loss"]).all() and (overall["loss"] <= overall["high"]).all()
    assert np.mean(np.abs(overall["loss"] - runs["loss"]) / runs["loss"]) < 0.004
    best = optimize_mixture(law, 1e8, 2e9, targets=["loss"])
    frame = law.frame_for(1e8, 2e9, best.weights)
    assert best.losses["loss"] == pytest.approx(float(law.predict(frame, "loss")[0]), rel=1e-9)
    loaded = load_law(law.save(tmp_path / "law.json"))
    np.testing.assert_array_equal(loaded.predict(runs), law.predict(runs))
    with pytest.raises(ValueError, match="weighted sum of per-domain laws"):
        law.fit_for("loss")


def test_compute_optimal_minimises_the_per_domain_sum() -> None:
    """A per-domain law's compute-optimal N minimises the summed prediction along N D = C/6 (checked
    on a grid of N), not the first component's closed form."""
    law = AdditiveLaw(n_starts=16, n_restarts=1, niter=1, n_bootstrap=4).fit(_per_domain_runs())
    mix = {d: 1 / len(DOMAINS) for d in DOMAINS}
    best = compute_optimal(law, 1e19, mix)
    grid = np.geomspace(best["N"] / 3, best["N"] * 3, 201)
    frames = pd.concat([law.frame_for(n, 1e19 / 6 / n, mix) for n in grid], ignore_index=True)
    losses = law.predict(frames, "loss")
    assert best["target"] == "loss" and best["N"] == pytest.approx(grid[np.argmin(losses)], rel=0.02)
    assert best["loss"] <= losses.min() + 1e-9
    first = compute_optimal(law, 1e19, mix, target=law.components("loss")[0][0])
    assert first["N"] != pytest.approx(best["N"], rel=1e-3)  # the components disagree: the sum matters
    assert best["N_interval"][0] <= best["N"] <= best["N_interval"][1]


def test_loss_components_needs_an_exact_weighted_sum() -> None:
    runs = _per_domain_runs()
    runs["loss"] = runs["loss"] * (1 + 0.01 * np.sin(np.arange(len(runs))))
    assert loss_components(runs, "loss") is None
    assert loss_components(runs.drop(columns=["loss_web", "loss_code"]), "loss") is None
    exact = _per_domain_runs().head(2)  # 2 rows, 2 columns: some weighted sum always fits exactly
    assert loss_components(exact, "loss") is None
    quick = {"n_starts": 8, "n_restarts": 1, "niter": 0, "n_bootstrap": 0}
    law = AdditiveLaw(**quick, per_domain=True).fit(runs)  # no exact sum: one law on the loss itself
    assert law.targets_ == ["loss"] and law.components("loss") == [("loss", 1.0)]


def test_mixing_law_on_arrays_recovers_its_parameters() -> None:
    rng = np.random.default_rng(1)
    h = rng.dirichlet(np.ones(3), 40)
    theta = np.array([np.log(2.0), np.log(0.5), 1.0, -0.5, 0.3])
    y = mixing_law_loss(theta, h)
    fitted = fit_mixing_law(h, y, n_starts=16, n_restarts=2, seed=0)
    np.testing.assert_allclose(mixing_law_loss(fitted, h), y, rtol=1e-6)
    x = Features(np.zeros(40), np.zeros(40), h)
    np.testing.assert_allclose(MixingLaw().form.loss(fitted, x), y, rtol=1e-6)
    with pytest.raises(ValueError, match="h must be"):
        fit_mixing_law(h[:5], y)


def test_laws_follow_scikit_learn_contracts() -> None:
    runs = synthetic_runs()
    with pytest.raises(NotFittedError):
        AdditiveLaw().predict(runs)
    with pytest.raises(TypeError, match="load_runs"):
        AdditiveLaw().fit("runs.csv")
    law = ChinchillaLaw(n_bootstrap=0).fit(runs.drop(columns=[f"h_{d}" for d in DOMAINS]))
    assert law.predict(runs.head(2)).shape == (2,)  # a size law ignores h columns
    x = Features(np.zeros(3), np.zeros(3), np.full((3, 3), 1 / 3))
    value, jac = additive_law(np.zeros(11), x)
    assert value.shape == (3,) and jac.shape == (3, 11)


def test_weighted_least_squares_minimises_the_weighted_huber_objective() -> None:
    rng = np.random.default_rng(2)
    residual, weights = rng.normal(0, 3e-3, 40), rng.uniform(0.1, 3.0, 40)
    rho = weighted_huber_rho(weights)
    result = least_squares(lambda t: residual + 0 * t, np.zeros(1), loss=rho, f_scale=1e-3, max_nfev=1)
    assert result.cost == pytest.approx(float(np.sum(weights * huber_terms(residual, 1e-3))), rel=1e-12)


def test_size_weight_counts_larger_proxies_more(tmp_path) -> None:
    runs = synthetic_runs()
    log_n = np.log(runs["N"].to_numpy())
    weights = size_weights(log_n, 1.0)
    assert weights.mean() == pytest.approx(1.0)
    ratio = weights[runs["N"].to_numpy() == 2e8][0] / weights[runs["N"].to_numpy() == 2e7][0]
    assert ratio == pytest.approx(10.0)
    assert size_weights(log_n, 0.0) is None
    quick = {"n_starts": 8, "n_restarts": 1, "niter": 0, "n_bootstrap": 0}
    fitted = AdditiveLaw(**quick).fit(runs)  # weighted by default
    assert fitted.size_weight_ == 1.0 and fitted.fits_[0].diagnostics["size_weight"] == 1.0
    assert np.mean(np.abs(fitted.predict(runs) - runs["loss"]) / runs["loss"]) < 0.01
    loaded = load_law(fitted.save(tmp_path / "law.json"))
    assert (loaded.size_weight_, loaded.per_domain_) == (1.0, True)
    unweighted = AdditiveLaw(**quick, size_weight=0.0).fit(runs)
    assert (
        unweighted.size_weight_ == 0.0
        and unweighted.fits_[0].theta.tolist() != fitted.fits_[0].theta.tolist()
    )
    with pytest.raises(ValueError, match="size_weight must be a number >= 0"):
        AdditiveLaw(**quick, size_weight=-1.0).fit(runs)


def test_defaults_per_form_are_the_extrapolation_settings() -> None:
    """Per-domain sums and size weighting are on where they lowered the error at a held-out larger
    size (docs/laws.md): size weighting for every law in N and D, per-domain sums for the additive
    and mixing laws; None means the law's default, an explicit value wins."""
    settings = {kind: make_law(kind)._settings() for kind in ("chinchilla", "additive", "joint", "mixing")}
    assert settings == {
        "chinchilla": (False, 1.0),
        "additive": (True, 1.0),
        "joint": (False, 1.0),
        "mixing": (True, 0.0),
    }
    assert AdditiveLaw(per_domain=False, size_weight=0.5)._settings() == (False, 0.5)
    runs = _per_domain_runs()
    quick = {"n_starts": 8, "n_restarts": 1, "niter": 0, "n_bootstrap": 0}
    assert AdditiveLaw(**quick).fit(runs).components("loss") != [("loss", 1.0)]  # per-domain by default
    assert AdditiveLaw(**quick, per_domain=False).fit(runs).components("loss") == [("loss", 1.0)]


def test_mixture_gradient_is_finite_where_a_per_domain_fit_diverged() -> None:
    """A per-domain fit can send a domain that does not matter to C = exp(3.5e5), gamma = exp(20.6):
    its term C h^gamma is 0 at any h < 1, and the gradient in h must stay finite (the optimiser
    stopped at its first step on a nan)."""
    theta = np.zeros(5 + 2 * 3)
    theta[5:8] = [0.3, 0.4, 3.5e5]
    theta[8:11] = [0.1, -0.2, 20.6]
    h = np.array([0.5, 0.3, 0.2])
    grad = additive_grad_h(theta, h)
    assert np.all(np.isfinite(grad)) and grad[2] == 0.0
    step = 1e-7 * np.array([1.0, -1.0, 0.0])
    x = Features(np.zeros(2), np.zeros(2), np.vstack([h + step, h - step]))
    loss = additive_law(theta, x)[0]
    assert (loss[0] - loss[1]) / 2 == pytest.approx(grad @ step, rel=1e-5)


@pytest.mark.parametrize("kind", ["additive", "joint"])
def test_normal_equations_match_the_dense_jacobian(kind: str) -> None:
    """The vectorised search's loss, gradient and Gauss-Newton matrix, built from the Jacobian blocks
    (per size cell and per mixture), equal J^T diag(c) J and J^T psi from the full Jacobian, for a
    batch of thetas, with row weights, a repeated row and a diverged theta; the derivatives of some of
    the fits are those fits' rows of everyone's, bit for bit."""
    from mixer.laws.fitting import EPS, huber_normal_equations
    from mixer.laws.forms import FORMS

    runs = synthetic_runs()
    runs = pd.concat([runs, runs.iloc[:1]], ignore_index=True)  # one (size cell, mixture) twice
    h = runs[[f"h_{d}" for d in DOMAINS]].to_numpy()
    x = Features(np.log(runs["N"].to_numpy() / 1e7), np.log(runs["D"].to_numpy() / 1e9), h)
    form = FORMS[kind]
    rng = np.random.default_rng(0)
    thetas = form.random_starts(len(DOMAINS), runs["loss"].to_numpy(), 4, rng)
    thetas[3, 0] = 800.0  # exp overflows: this fit's value is +inf
    with np.errstate(all="ignore"):
        prediction, jacobian = form.model(thetas, x)
    targets = prediction + rng.normal(0, 2e-3, prediction.shape)  # residuals on both sides of delta
    weights = rng.uniform(0.5, 2.0, prediction.shape)
    value, derivatives = huber_normal_equations(form.blocks, x)(thetas, targets, weights)
    gradient, hessian = derivatives(np.ones(4, dtype=bool))
    some = np.array([False, True, False, True])
    np.testing.assert_array_equal(derivatives(some)[0], gradient[some])
    np.testing.assert_array_equal(derivatives(some)[1], hessian[some])
    assert np.isinf(value[3]) and np.all(np.isfinite(gradient)) and np.all(np.isfinite(hessian))
    for i in range(3):
        residual = prediction[i] - targets[i]
        curvature = np.where(np.abs(residual) <= 1e-3, weights[i], EPS)
        expected = jacobian[i].T @ (curvature[:, None] * jacobian[i])
        assert value[i] == pytest.approx(float((weights[i] * huber_terms(residual)).sum()), rel=1e-12)
        np.testing.assert_allclose(gradient[i], jacobian[i].T @ (weights[i] * np.clip(residual, -1e-3, 1e-3)))
        np.testing.assert_allclose(hessian[i], expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


def test_vectorised_least_squares_follows_scipy_step_for_step() -> None:
    """batch_least_squares is scipy's least_squares(trf, huber, x_scale="jac") on many starts at once:
    the same number of evaluations and the same end points from each start."""
    from mixer.laws.fitting import batch_least_squares, huber_normal_equations, least_squares_fit
    from mixer.laws.forms import FORMS, additive_blocks

    runs = synthetic_runs()
    h = runs[[f"h_{d}" for d in DOMAINS]].to_numpy()
    x = Features(np.log(runs["N"].to_numpy() / 1e7), np.log(runs["D"].to_numpy() / 1e9), h)
    y = runs["loss"].to_numpy()
    weights = size_weights(x.log_n, 1.0)
    starts = FORMS["additive"].random_starts(len(DOMAINS), y, 8, np.random.default_rng(1))
    objective = HuberObjective(lambda theta: additive_law(theta, x), y, weights=weights)
    options = {"max_nfev": 40}
    batch = batch_least_squares(
        huber_normal_equations(additive_blocks, x),
        starts,
        np.tile(y, (8, 1)),
        np.tile(weights, (8, 1)),
        options,
    )
    again = batch_least_squares(
        huber_normal_equations(additive_blocks, x),
        starts[::-1],
        np.tile(y, (8, 1)),
        np.tile(weights, (8, 1)),
        options,
    )
    np.testing.assert_array_equal(again.thetas[::-1], batch.thetas)  # deterministic, whatever the batch order
    for method in ("trf", "lm"):  # row weights shared by every fit as one (n,) vector: the same fits
        tiled = batch_least_squares(
            huber_normal_equations(additive_blocks, x), starts, np.tile(y, (8, 1)), np.tile(weights, (8, 1)),
            options, method,
        )  # fmt: skip
        shared = batch_least_squares(
            huber_normal_equations(additive_blocks, x), starts, np.tile(y, (8, 1)), weights, options, method
        )
        np.testing.assert_array_equal(shared.thetas, tiled.thetas)
        np.testing.assert_array_equal(shared.values, tiled.values)
    for i, start in enumerate(starts):
        single = least_squares_fit(objective, start, options, polish=False)
        assert batch.n_evaluations[i] == single.nfev
        assert batch.values[i] == pytest.approx(objective.value(single.x), rel=1e-6)


def test_several_targets_fit_in_threads_as_in_one() -> None:
    """`fit_least_squares_batch` on several targets gives each thread whole targets: the same
    results, bit for bit, as one thread, and every search counted once by the progress listeners."""
    from mixer.laws.fitting import counting_searches, fit_least_squares_batch
    from mixer.laws.forms import FORMS, additive_blocks

    runs = synthetic_runs()
    h = runs[[f"h_{d}" for d in DOMAINS]].to_numpy()
    x = Features(np.log(runs["N"].to_numpy() / 1e7), np.log(runs["D"].to_numpy() / 1e9), h)
    y = runs["loss"].to_numpy()
    targets = np.stack([y, y * 1.01 + 0.02, y * 0.98])
    starts = np.stack(
        [FORMS["additive"].random_starts(len(DOMAINS), t, 12, np.random.default_rng(0)) for t in targets]
    )
    fits = {}
    for n_jobs in (1, 2):
        seen: list[int] = []
        with counting_searches(seen.append):
            fits[n_jobs] = fit_least_squares_batch(
                additive_blocks, x, targets, starts, keep=2, n_searches=4, n_jobs=n_jobs
            )
        assert sum(seen) == 3 * (4 + 2)
    for one, two in zip(fits[1], fits[2], strict=True):
        np.testing.assert_array_equal(one.thetas, two.thetas)
        np.testing.assert_array_equal(one.objectives, two.objectives)
    assert len({f.objective for f in fits[1]}) == 3  # three different targets, three different fits
