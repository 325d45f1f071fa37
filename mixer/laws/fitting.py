"""Robust, reproducible fitting of loss laws: summed Huber objectives, Hoffmann's grid, multi-start
basin-hopping with L-BFGS, and bootstrap refits.

Everything here works on a parameter vector `theta` and a `model(theta) -> (prediction, jacobian)`
closure; `mixer.laws.forms` supplies the law forms. Two habits from the Chinchilla replications matter:

* the objective is the *summed* Huber loss (delta 1e-3) of the residuals, which is tiny (~1e-3), so
  scipy's default L-BFGS-B tolerances (`ftol` relative to max(|f|, 1)) stop long before the optimum
  and land on Hoffmann et al.'s biased fit. We minimise the objective divided by delta^2 with
  `ftol=0` and a tight gradient tolerance instead;
* one local search is never believed: the optimum is the best of many starts, and the spread of the
  other starts is reported beside it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from scipy.optimize import OptimizeResult, basinhopping, least_squares, minimize
from threadpoolctl import threadpool_limits

Model = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
F = TypeVar("F", bound=Callable[..., Any])

HUBER_DELTA = 1e-3
# On the objective / delta^2 (see the module docstring): relative decrease 1e-14, gradient 1e-8.
LBFGS_OPTIONS: dict[str, float | int] = {
    "maxiter": 20_000,
    "maxfun": 40_000,
    "ftol": 1e-14,
    "gtol": 1e-8,
    "maxcor": 30,
}


def single_threaded(function: F) -> F:
    """Run with one BLAS thread: scipy's L-BFGS-B calls BLAS on vectors of ~20 numbers, and a
    multi-threaded OpenBLAS made each iteration ~10x slower on a busy 2-core machine."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with threadpool_limits(limits=1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def huber_terms(residual: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """The Huber loss of each residual: r^2/2 within delta, delta (|r| - delta/2) beyond (the one
    Huber loss of the project; scipy's least_squares(loss="huber", f_scale=delta) minimises its sum)."""
    absolute = np.abs(residual)
    small = np.minimum(absolute, delta)  # the square is only taken where it is used, so never overflows
    return np.where(absolute <= delta, 0.5 * small**2, delta * (absolute - 0.5 * delta))


@dataclass
class HuberObjective:
    """Summed Huber loss of `model(theta) - target`, with its gradient, for scipy.

    `scale` divides the objective the optimizer sees (not the reported value), so that relative
    tolerances mean something for these tiny objectives.
    """

    model: Model
    target: np.ndarray
    delta: float = HUBER_DELTA
    weights: np.ndarray | None = None
    scale: float = 0.0
    n_evaluations: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.scale:
            self.scale = self.delta**2

    def value(self, theta: np.ndarray) -> float:
        """The summed Huber loss (unscaled), +inf where the model is not finite."""
        with np.errstate(all="ignore"):
            prediction, _ = self.model(theta)
            terms = huber_terms(prediction - self.target, self.delta)
            value = float(np.sum(terms if self.weights is None else self.weights * terms))
        return value if np.isfinite(value) else float("inf")

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        self.n_evaluations += 1
        with np.errstate(all="ignore"):
            prediction, jacobian = self.model(theta)
        residual = prediction - self.target
        if not (np.all(np.isfinite(residual)) and np.all(np.isfinite(jacobian))):
            return 1e300, np.zeros_like(theta)
        terms = huber_terms(residual, self.delta)
        psi = np.clip(residual, -self.delta, self.delta)
        if self.weights is not None:
            terms, psi = terms * self.weights, psi * self.weights
        return float(terms.sum()) / self.scale, (jacobian.T @ psi) / self.scale


def local_fit(
    objective: HuberObjective, theta0: np.ndarray, options: dict[str, float | int] | None = None
) -> OptimizeResult:
    """One L-BFGS-B search from `theta0` with the tight default options."""
    result = minimize(
        objective,
        np.asarray(theta0, dtype=float),
        jac=True,
        method="L-BFGS-B",
        options={**LBFGS_OPTIONS, **(options or {})},
    )
    for listener in list(_SEARCH_LISTENERS):
        listener(1)
    return result


_SEARCH_LISTENERS: list[Callable[[int], None]] = []


@contextlib.contextmanager
def counting_searches(advance: Callable[[int], None]) -> Iterator[None]:
    """Call `advance(1)` after each local search (starts, polishes, bootstrap refits) while the block
    runs: progress for a caller that shows it."""
    _SEARCH_LISTENERS.append(advance)
    try:
        yield
    finally:
        _SEARCH_LISTENERS.remove(advance)


@dataclass
class MultiStartResult:
    """The best of several local searches, and what the others reached."""

    theta: np.ndarray
    objective: float  # summed Huber loss at `theta`, unscaled
    objectives: np.ndarray  # every search's final objective, sorted
    thetas: np.ndarray  # every search's final theta, in the order of `objectives`
    n_evaluations: int
    converged: bool
    message: str

    def diagnostics(self, rtol: float = 1e-6) -> dict[str, Any]:
        """JSON-ready summary: objective, how many searches reached it, spread of the others."""
        best = self.objective
        at_best = np.abs(self.objectives - best) <= rtol * max(abs(best), 1e-300)
        return {
            "objective": best,
            "n_searches": int(self.objectives.size),
            "n_at_best": int(at_best.sum()),
            "objective_median": float(np.median(self.objectives)),
            "objective_worst": float(self.objectives[-1]),
            "objectives_top": [float(v) for v in self.objectives[:10]],
            "n_evaluations": int(self.n_evaluations),
            "converged": bool(self.converged),
            "message": self.message,
        }


def _collect(objective: HuberObjective, results: Sequence[OptimizeResult]) -> MultiStartResult:
    values = np.array([objective.value(r.x) for r in results])
    order = np.argsort(values, kind="stable")
    best = results[int(order[0])]
    return MultiStartResult(
        theta=np.asarray(best.x, dtype=float),
        objective=float(values[order[0]]),
        objectives=values[order],
        thetas=np.array([results[i].x for i in order]),
        n_evaluations=objective.n_evaluations,
        converged=bool(getattr(best, "success", True)),
        message=str(getattr(best, "message", "")),
    )


# --- Chinchilla: Hoffmann's grid, and the same optimum faster --------------------------------


def hoffmann_grid() -> np.ndarray:
    """Hoffmann et al.'s 4,500 starts for (a, b, e, alpha, beta) = (log A, log B, log E, alpha, beta)."""
    alphas = np.arange(0.0, 2.5, 0.5)
    betas = np.arange(0.0, 2.5, 0.5)
    es = np.arange(-1.0, 1.5, 0.5)
    As = np.arange(0.0, 30.0, 5.0)
    Bs = np.arange(0.0, 30.0, 5.0)
    return np.array(
        [(a, b, e, alpha, beta) for a, b, e, alpha, beta in itertools.product(As, Bs, es, alphas, betas)]
    )


@single_threaded
def fit_from_starts(
    objective: HuberObjective, starts: np.ndarray, options: dict[str, float | int] | None = None
) -> MultiStartResult:
    """L-BFGS from every row of `starts`; the best result and the spread of all of them."""
    return _collect(objective, [local_fit(objective, start, options) for start in starts])


def screen_starts(
    objective: HuberObjective,
    starts: np.ndarray,
    keep: int,
    batch_value: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """The `keep` starts with the lowest objective (evaluated without any search)."""
    if batch_value is not None:
        values = batch_value(starts)
    else:
        values = np.array([objective(start)[0] for start in starts])
    values = np.where(np.isfinite(values), values, np.inf)
    return starts[np.argsort(values, kind="stable")[:keep]]


def fit_screened(
    objective: HuberObjective,
    starts: np.ndarray,
    keep: int = 8,
    batch_value: Callable[[np.ndarray], np.ndarray] | None = None,
    options: dict[str, float | int] | None = None,
) -> MultiStartResult:
    """Evaluate the objective on every start (cheap, vectorised when `batch_value` is given), then
    run L-BFGS only from the `keep` best: Hoffmann's grid reaches the same optimum this way at a
    small fraction of the cost of 4,500 searches."""
    return fit_from_starts(objective, screen_starts(objective, starts, keep, batch_value), options)


# --- Mixture laws: random starts + basin-hopping ----------------------------------------------


@single_threaded
def fit_basinhopping(
    objective: HuberObjective,
    starts: np.ndarray,
    keep: int = 4,
    niter: int = 8,
    stepsize: float = 0.5,
    seed: int = 0,
    options: dict[str, float | int] | None = None,
) -> MultiStartResult:
    """Screen random `starts`, then run scipy's basin-hopping (L-BFGS-B local searches) from the
    `keep` best, each with its own seeded generator."""
    chosen = screen_starts(objective, starts, keep)
    kwargs = {"method": "L-BFGS-B", "jac": True, "options": {**LBFGS_OPTIONS, **(options or {})}}
    results = []
    for i, start in enumerate(chosen):
        rng = np.random.default_rng([seed, i])
        hop = basinhopping(
            objective, start, niter=niter, T=1.0, stepsize=stepsize, minimizer_kwargs=kwargs, rng=rng
        )
        # polish: basin-hopping's last local search may have stopped on maxiter
        results.append(local_fit(objective, hop.x, options))
    return _collect(objective, results)


# --- Mixture laws, fast: screened starts + Gauss-Newton (trust-region) least squares ----------

# Gauss-Newton steps converge fast near an optimum, so tight tolerances cost few evaluations (an
# L-BFGS polish afterwards changed the RedPajama objective in the 12th digit, and crawled for
# thousands of iterations along flat valleys elsewhere). A start still wandering after max_nfev
# evaluations is on its way to a far, worse basin: cut it short.
LEAST_SQUARES_OPTIONS: dict[str, float | int] = {"ftol": 1e-12, "xtol": 1e-12, "gtol": 1e-12, "max_nfev": 300}
# The exploring searches only rank basins: a short budget, in evaluations per fitted parameter (60
# in all was enough for the additive law's 19 parameters but left the joint law's 33 in worse basins).
EXPLORE_OPTIONS: dict[str, float | int] = {**LEAST_SQUARES_OPTIONS}
EXPLORE_NFEV_PER_PARAM = 3


def weighted_huber_rho(weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """scipy least_squares' `loss` callable for sum_i w_i huber(r_i): its rho(z), rho'(z), rho''(z)
    with z = (r / f_scale)^2, each times w_i (the "huber" rho is z below 1, 2 sqrt(z) - 1 above)."""

    def rho(z: np.ndarray) -> np.ndarray:
        inside = z <= 1
        root = np.sqrt(np.where(inside, 1.0, z))
        out = np.empty((3, z.size))
        out[0] = np.where(inside, z, 2 * root - 1)
        out[1] = np.where(inside, 1.0, 1 / root)
        out[2] = np.where(inside, 0.0, -0.5 / root**3)
        return out * weights

    return rho


def least_squares_fit(
    objective: HuberObjective,
    theta0: np.ndarray,
    options: dict[str, float | int] | None = None,
    polish: bool = True,
) -> OptimizeResult:
    """scipy's trust-region least squares on the residuals with loss="huber" and f_scale=delta (the
    same summed Huber objective) and the model's analytic Jacobian, then (`polish`) L-BFGS."""
    loss = "huber" if objective.weights is None else weighted_huber_rho(objective.weights)

    def residual(theta: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return objective.model(theta)[0] - objective.target

    def jacobian(theta: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return objective.model(theta)[1]

    settings = {**LEAST_SQUARES_OPTIONS, **(options or {})}
    try:
        with np.errstate(all="ignore"):
            result = least_squares(
                residual,
                np.asarray(theta0, dtype=float),
                jac=jacobian,
                method="trf",
                loss=loss,
                f_scale=objective.delta,
                x_scale="jac",
                **settings,
            )
    except (ValueError, np.linalg.LinAlgError):  # a step into overflow (non-finite Jacobian): L-BFGS alone
        return local_fit(objective, theta0) if polish else OptimizeResult(x=np.asarray(theta0, dtype=float))
    objective.n_evaluations += int(result.nfev)
    if polish:
        return local_fit(objective, result.x)
    for listener in list(_SEARCH_LISTENERS):
        listener(1)
    return result


@single_threaded
def fit_least_squares(
    objective: HuberObjective,
    starts: np.ndarray,
    keep: int = 6,
    n_searches: int = 54,
    explore: HuberObjective | None = None,
) -> MultiStartResult:
    """Screen `starts` by their objective value (no search); short least-squares searches from the
    `n_searches` best on `explore` (the same law on a subsample of the rows; default: all rows);
    then full least squares and an L-BFGS polish on every row from the `keep` best end points."""
    explore = explore or objective
    chosen = [s for s in screen_starts(explore, starts, n_searches) if np.isfinite(explore.value(s))]
    if not chosen:
        raise ValueError("no starting point gives a finite objective; check the runs table's losses")
    options = {**EXPLORE_OPTIONS, "max_nfev": EXPLORE_NFEV_PER_PARAM * starts.shape[1]}
    ends = [least_squares_fit(explore, s, options, polish=False).x for s in chosen]
    values = np.array([explore.value(e) for e in ends])
    best = [ends[i] for i in np.argsort(np.where(np.isfinite(values), values, np.inf), kind="stable")[:keep]]
    result = _collect(objective, [least_squares_fit(objective, e, polish=False) for e in best])
    result.n_evaluations += explore.n_evaluations if explore is not objective else 0
    return result


# --- Bootstrap ---------------------------------------------------------------------------------


def bootstrap_weights(groups: np.ndarray, n_bootstrap: int, seed: int) -> list[np.ndarray]:
    """Per-row multiplicities of `n_bootstrap` resamples that draw whole groups (e.g. training
    runs, whose checkpoints are correlated) with replacement."""
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(inverse.max()) + 1
    samples = []
    for _ in range(n_bootstrap):
        counts = np.bincount(rng.integers(0, n_groups, size=n_groups), minlength=n_groups)
        samples.append(counts[inverse].astype(float))
    return samples


@single_threaded
def bootstrap_fits(
    objective: HuberObjective,
    theta: np.ndarray,
    groups: np.ndarray,
    n_bootstrap: int,
    seed: int,
    options: dict[str, float | int] | None = None,
) -> np.ndarray:
    """Refit on `n_bootstrap` group resamples (as row weights), each warm-started from `theta`.

    Returns an (n, len(theta)) array; refits that end non-finite are dropped.
    """
    thetas = []
    for weights in bootstrap_weights(groups, n_bootstrap, seed):
        if objective.weights is not None:
            weights = weights * objective.weights
        resampled = HuberObjective(
            objective.model, objective.target, objective.delta, weights, objective.scale
        )
        result = local_fit(resampled, theta, options)
        if np.all(np.isfinite(result.x)):
            thetas.append(result.x)
    return np.array(thetas).reshape(len(thetas), theta.size)


@single_threaded
def bootstrap_least_squares(
    objective: HuberObjective, theta: np.ndarray, groups: np.ndarray, n_bootstrap: int, seed: int
) -> np.ndarray:
    """`bootstrap_fits` with least squares: the same resamples (as row weights, times the
    objective's own), each refit warm-started from `theta`."""
    thetas = []
    for weights in bootstrap_weights(groups, n_bootstrap, seed):
        if objective.weights is not None:
            weights = weights * objective.weights
        resampled = HuberObjective(
            objective.model, objective.target, objective.delta, weights, objective.scale
        )
        result = least_squares_fit(resampled, theta, polish=False)
        if np.all(np.isfinite(result.x)):
            thetas.append(result.x)
    return np.array(thetas).reshape(len(thetas), theta.size)
