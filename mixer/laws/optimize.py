"""Budget questions a fitted law answers: the best mixture at (N, D) and the compute-optimal
(N, D) at a FLOP budget, each with its spread over the bootstrap fits."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mixer.laws.estimators import LawEstimator, percentile_interval
from mixer.laws.forms import Features, LawForm
from mixer.mixture import check_domains, check_known
from mixer.simplex import exponentiated_gradient, outside_range


@dataclass
class MixtureOptimum:
    """The best mixture for a budget and how much to trust it."""

    weights: dict[str, float]
    loss: float  # weighted objective at the optimum
    losses: dict[str, float]  # per target
    converged: bool
    n_iter: int
    spread: dict[str, dict[str, float]]  # domain -> std, low, high over bootstrap fits
    outside_region: dict[str, list[float]]  # domain -> [min, max] of the training mixtures it leaves
    in_hull: bool  # inside the convex hull of the training mixtures
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bounds(
    domains: Sequence[str], floor: float | Mapping[str, float], caps: Mapping[str, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    caps = dict(caps or {})
    check_known(caps, domains, "caps", "law")
    if isinstance(floor, Mapping):
        check_known(floor, domains, "floor", "law")
        lower = np.array([float(floor.get(d, 0.0)) for d in domains])
    else:
        lower = np.full(len(domains), float(floor))
    upper = np.array([float(caps.get(d, 1.0)) for d in domains])
    return lower, upper


def in_convex_hull(point: np.ndarray, points: np.ndarray) -> bool:
    """Whether `point` is a convex combination of the rows of `points` (a small LP)."""
    from scipy.optimize import linprog

    if points.shape[0] == 0:
        return False
    m = points.shape[0]
    a_eq = np.vstack([points.T, np.ones((1, m))])
    b_eq = np.concatenate([point, [1.0]])
    result = linprog(np.zeros(m), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    return bool(result.status == 0)


def _target_weights(law: LawEstimator, targets: Sequence[str] | None, weights: Sequence[float] | None):
    targets = list(targets or law.targets_[:1])
    if weights is None:
        weights = [1.0 / len(targets)] * len(targets)
    if len(weights) != len(targets):
        raise ValueError(f"{len(targets)} target(s) but {len(weights)} weight(s)")
    w = np.asarray(weights, dtype=float)
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"target weights must be non-negative and not all zero, got {list(weights)}")
    return targets, w


def _component_fits(law: LawEstimator, targets: Sequence[str], weights: Any, N: float, D: float):
    """The weights and fits of the laws behind `targets` (a per-domain target: its components')."""
    parts = [
        (wt * wc, law.fit_for(c, N, D))
        for t, wt in zip(targets, weights, strict=True)
        for c, wc in law.components(t)
    ]
    return np.array([w for w, _ in parts]), [fit for _, fit in parts]


def _target_loss(law: LawEstimator, target: str, N: float, D: float, x: Features) -> float:
    """The predicted loss of one target at features `x` (a per-domain target: its weighted sum)."""
    weights, fits = _component_fits(law, [target], np.ones(1), N, D)
    return float(sum(w * law.form.loss(f.theta, x)[0] for w, f in zip(weights, fits, strict=True)))


def _spread(boot_h: np.ndarray, h: np.ndarray, domains: Sequence[str]) -> dict[str, dict[str, float]]:
    spread = {}
    for j, dom in enumerate(domains):
        col = boot_h[:, j] if boot_h.size else np.array([h[j]])
        spread[dom] = {
            "std": float(np.std(col)),
            "low": float(np.percentile(col, 5)),
            "high": float(np.percentile(col, 95)),
        }
    return spread


def _region_warnings(law: LawEstimator, h: np.ndarray) -> tuple[dict[str, list[float]], bool, list[str]]:
    """Domains whose optimal weight leaves the training range; convex-hull membership; warnings."""
    domains = law.domains_
    h_range = law.data_.get("h_range", {})
    known = [j for j, d in enumerate(domains) if d in h_range]
    names = [domains[j] for j in known]
    low, high = (np.array([h_range[d][k] for d in names], dtype=float) for k in (0, 1))
    outside = {d: h_range[d] for d in outside_range(h[known], low, high, names)}
    hull = in_convex_hull(h, law.training_mixtures())
    warnings = []
    if outside:
        warnings.append(
            "the optimum leaves the range of the training mixtures for "
            + ", ".join(
                f"{d} ({h[domains.index(d)]:.3f} not in [{lo:.3f}, {hi:.3f}])"
                for d, (lo, hi) in outside.items()
            )
            + "; the law extrapolates there"
        )
    elif not hull:
        warnings.append(
            "the optimum is outside the convex hull of the training mixtures; the law extrapolates"
        )
    return outside, hull, warnings


def _weighted_loss(form: LawForm, weighted: list[tuple[float, np.ndarray]], log_n: float, log_d: float):
    """h -> (sum_t w_t L_t(N, D, h), its gradient in h) for (w_t, theta_t) pairs."""

    def fun(h: np.ndarray) -> tuple[float, np.ndarray]:
        x = Features.at(log_n, log_d, h)
        value, grad = 0.0, np.zeros_like(h)
        for weight, theta in weighted:
            value += weight * float(form.loss(theta, x)[0])
            grad += weight * form.grad_h(theta, h, log_n, log_d)
        return value, grad

    return fun


def optimize_mixture(
    law: LawEstimator,
    N: float,
    D: float,
    *,
    floor: float | Mapping[str, float] = 0.0,
    caps: dict[str, float] | None = None,
    targets: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    start: Mapping[str, float] | None = None,
    max_iter: int = 5000,
    tol: float = 1e-9,
) -> MixtureOptimum:
    """The mixture h minimising sum_t w_t L_t(N, D, h) by exponentiated gradient on the simplex,
    with per-domain `floor` and `caps` (domain -> max weight; absent domains are capped at 1).

    The same search runs for every bootstrap fit to give the spread of h; the result says which
    domains leave the range the training mixtures covered and whether h is in their convex hull.
    """
    _check_optimizable(law, N, D)
    targets, target_w = _target_weights(law, targets, weights)
    domains = law.domains_
    lower, upper = _bounds(domains, floor, caps)
    w, fits = _component_fits(law, targets, target_w, N, D)
    log_n, log_d = math.log(N / law.n_scale_), math.log(D / law.d_scale_)
    x0 = np.array([start[d] for d in domains], dtype=float) if start else None

    def solve(thetas: Sequence[np.ndarray]):
        fun = _weighted_loss(law.form, list(zip(w, thetas, strict=True)), log_n, log_d)
        return exponentiated_gradient(fun, x0, lower, upper, max_iter=max_iter, tol=tol)

    best = solve([f.theta for f in fits])
    h = best.x
    x_best = Features.at(log_n, log_d, h)
    per_target = {t: _target_loss(law, t, N, D, x_best) for t in targets}
    n_boot = min(f.bootstrap.shape[0] for f in fits)
    boot_h = np.array([solve([f.bootstrap[b] for f in fits]).x for b in range(n_boot)])
    outside, hull, warnings = _region_warnings(law, h)
    if not best.converged:
        warnings.append(f"mirror descent stopped after {best.n_iter} iterations without converging")
    return MixtureOptimum(
        weights={d: float(v) for d, v in zip(domains, h, strict=True)},
        loss=float(best.fun),
        losses=per_target,
        converged=best.converged,
        n_iter=best.n_iter,
        spread=_spread(boot_h, h, domains),
        outside_region=outside,
        in_hull=hull,
        warnings=warnings,
    )


def _check_optimizable(law: LawEstimator, N: float, D: float) -> None:
    if not law.form.uses_mixture:
        raise ValueError(
            f"the {law.kind} law has no mixture to optimise; fit an additive, joint or mixing law"
        )
    for name, value in (("N", N), ("D", D)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be a positive number; got {value}")


def compute_optimal_size(
    a: float, alpha: float, b: float, beta: float, flops_scaled: float
) -> tuple[float, float]:
    """argmin_N A/N^alpha + B/D^beta subject to N D = flops_scaled (= C/6 in the law's units)."""
    n = (alpha * a / (beta * b)) ** (1.0 / (alpha + beta)) * flops_scaled ** (beta / (alpha + beta))
    return n, flops_scaled / n


def compute_optimal_size_sum(
    terms: Sequence[tuple[float, float, float, float, float]], flops_scaled: float
) -> tuple[float, float]:
    """argmin_N sum_j w_j (A_j/N^alpha_j + B_j/D^beta_j) subject to N D = flops_scaled, for terms
    (w_j, A_j, alpha_j, B_j, beta_j): a law predicted as a weighted sum of per-domain laws. Each
    term is convex in log N, so the optimum lies between the terms' own optima (bounded Brent)."""
    if len(terms) == 1:
        return compute_optimal_size(*terms[0][1:], flops_scaled)
    from scipy.optimize import minimize_scalar

    own = [math.log(compute_optimal_size(a, al, b, be, flops_scaled)[0]) for _, a, al, b, be in terms]
    log_c = math.log(flops_scaled)

    def size_loss(u: float) -> float:
        return sum(w * (a * math.exp(-al * u) + b * math.exp(-be * (log_c - u))) for w, a, al, b, be in terms)

    low, high = min(own), max(own)
    if high - low < 1e-12:
        return math.exp(low), flops_scaled / math.exp(low)
    u = minimize_scalar(size_loss, bounds=(low, high), method="bounded", options={"xatol": 1e-10}).x
    return math.exp(u), flops_scaled / math.exp(u)


def _mixture_for(law: LawEstimator, mixture: Mapping[str, float] | None):
    """(h, mixture): the given mixture, or the mean training mixture; (None, None) without h."""
    if not law.form.uses_mixture:
        return None, mixture
    if mixture is None:
        h = law.training_mixtures().mean(axis=0)
        return h, {d: float(v) for d, v in zip(law.domains_, h, strict=True)}
    check_domains(mixture, law.domains_, "law")
    return np.array([mixture[d] for d in law.domains_], dtype=float), mixture


def compute_optimal(
    law: LawEstimator,
    flops: float,
    mixture: Mapping[str, float] | None = None,
    target: str | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """The N and D minimising the law's loss at C = 6 N D (with a bootstrap interval); a target
    predicted as a sum of per-domain laws is minimised as that sum.

    Mixture laws need a mixture; without one the mean of the training mixtures is used.
    """
    if not (flops > 0 and math.isfinite(flops)):
        raise ValueError(f"flops must be a positive number, got {flops}")
    target = target or law.targets_[0]
    weights = [w for _, w in law.components(target)]
    fits = [law.fit_for(name) for name, _ in law.components(target)]
    h, mixture = _mixture_for(law, mixture)
    scaled = flops / 6.0 / (law.n_scale_ * law.d_scale_)

    def solve(thetas: Sequence[np.ndarray]) -> tuple[float, float]:
        terms = [(w, *law.form.size_terms(t, h)) for w, t in zip(weights, thetas, strict=True)]
        n_hat, _ = compute_optimal_size_sum(terms, scaled)
        n = n_hat * law.n_scale_
        return n, flops / (6.0 * n)

    n_opt, d_opt = solve([f.theta for f in fits])
    pred = law.predict_interval(law.frame_for(n_opt, d_opt, mixture), target, level)
    n_boot = min(f.bootstrap.shape[0] for f in fits)
    boot = np.array([solve([f.bootstrap[b] for f in fits]) for b in range(n_boot)]).reshape(-1, 2)
    n_low, n_high = percentile_interval(boot[:, :1], np.array([n_opt]), level)
    d_low, d_high = percentile_interval(boot[:, 1:], np.array([d_opt]), level)
    return {
        "flops": float(flops),
        "N": n_opt,
        "D": d_opt,
        "tokens_per_param": d_opt / n_opt,
        "loss": float(pred["loss"].iloc[0]),
        "low": float(pred["low"].iloc[0]),
        "high": float(pred["high"].iloc[0]),
        "N_interval": [float(np.ravel(n_low)[0]), float(np.ravel(n_high)[0])],
        "D_interval": [float(np.ravel(d_low)[0]), float(np.ravel(d_high)[0])],
        "mixture": mixture,
        "target": target,
    }
