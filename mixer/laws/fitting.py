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
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import numpy as np
from scipy.optimize import OptimizeResult, basinhopping, least_squares, minimize
from threadpoolctl import threadpool_limits

from mixer.laws.forms import Blocks, Features

Model = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

HUBER_DELTA = 1e-3
EPS = float(np.finfo(float).eps)
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
    _advance(1)
    return result


_SEARCH_LISTENERS: list[Callable[[int], None]] = []
_ADVANCING = threading.Lock()  # searches finish in several threads (`fit_least_squares_batch`)


def _advance(n_searches: int) -> None:
    """Tell the progress listeners that `n_searches` more local searches finished (one call at a
    time, whichever thread finished them)."""
    with _ADVANCING:
        for listener in list(_SEARCH_LISTENERS):
            listener(n_searches)


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
# The full searches of the vectorised path are Levenberg-Marquardt ones (`batch_least_squares`,
# method="lm"): no eigen-decomposition per step, so 400 evaluations cost about what trf's 300 did.
# Searches that end in flat valleys (a domain's term switched off: log C -> -inf, gamma -> inf) were
# still descending after trf's 300 evaluations, so their objective moved with rounding; with these
# every RedPajama per-domain law ends at trf's objective or lower (bench/law_bench.py).
REFINE_METHOD, REFINE_NFEV = "lm", 400  # trf and 300 before (bench/law_bench.py times both)


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
    _advance(1)
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


# --- Mixture laws, vectorised: many fits in one Levenberg-Marquardt loop ----------------------

# The gradient (b, p) and Gauss-Newton curvature (b, p, p) of the fits picked by a mask (B,): a search
# needs them only where it takes the step (about 80% of the steps on RedPajama).
Derivatives = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# (thetas (B, p), targets (B, n), row weights (B, n), (n,) or None) -> summed Huber loss (B,), Derivatives
NormalEquations = Callable[[np.ndarray, np.ndarray, np.ndarray | None], tuple[np.ndarray, Derivatives]]


def huber_normal_equations(
    blocks: Callable[[np.ndarray, Features], Blocks], x: Features, delta: float = HUBER_DELTA
) -> NormalEquations:
    """The summed Huber loss of B fits of a law given by its Jacobian `blocks`, and on demand its
    gradient and Gauss-Newton curvature J^T diag(c) J (c = the row weight within delta, machine
    epsilon beyond it: scipy least_squares' robust-loss scaling) for the fits asked. Built from the
    blocks: the residual's weights are summed per size cell and per mixture (`_Cells`), never the
    Jacobian expanded to every row. A fit whose prediction or Jacobian is not finite gets the value
    +inf (and zero derivatives)."""
    cells: dict[str, _Cells] = {}

    def equations(thetas: np.ndarray, targets: np.ndarray, weights: np.ndarray | None):
        with np.errstate(all="ignore"):
            b = blocks(thetas, x)
            if "cells" not in cells:
                cells["cells"] = _Cells(x, b.row_index)
            value, curvature, psi = _huber_weights(b.prediction - targets, weights, delta)
            finite = np.isfinite(value + b.rows.sum(axis=(-2, -1)) + b.mixtures.sum(axis=(-2, -1)))

        def derivatives(fits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            ok = finite[fits]
            rows, mixtures, c, p = b.rows[fits], b.mixtures[fits], curvature[fits], psi[fits]
            if not ok.all():
                rows = np.where(ok[:, None, None], rows, 0.0)
                mixtures = np.where(ok[:, None, None], mixtures, 0.0)
                c, p = np.where(ok[:, None], c, EPS), np.where(ok[:, None], p, 0.0)
            with np.errstate(all="ignore"):
                gradient, hessian = cells["cells"].normal_equations(rows, mixtures, c, p)
            order = np.concatenate([b.row_columns, b.mixture_columns])
            if not np.array_equal(order, np.arange(order.size)):
                gradient[:, order] = gradient.copy()
                hessian[:, order[:, None], order[None, :]] = hessian.copy()
            return gradient, hessian

        return np.where(finite, value, np.inf), derivatives

    return equations


def _huber_weights(
    residual: np.ndarray, weights: np.ndarray | None, delta: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per fit, the summed (weighted) Huber loss; per row, the Gauss-Newton weight (the row weight
    within delta, EPS beyond: scipy's floor on the robust loss's scaling) and psi (the clipped
    residual times the row weight)."""
    absolute = np.abs(residual)
    clipped = np.minimum(absolute, delta)
    terms = clipped * (absolute - 0.5 * clipped)  # huber_terms: r^2/2 within delta, linear beyond
    psi = np.copysign(clipped, residual)
    inside = absolute <= delta
    if weights is None:
        return terms.sum(axis=-1), np.where(inside, 1.0, EPS), psi
    psi *= weights
    curvature = np.where(inside, np.maximum(weights, EPS), EPS)
    value = np.einsum("bn,n->b" if weights.ndim == 1 else "bn,bn->b", terms, weights)
    return value, curvature, psi


class _Cells:
    """Where each table row falls: its size cell (or the row itself when the law's row block varies
    by row) and its mixture; sums a row quantity per cell and per mixture (`np.add.reduceat` over
    rows sorted once), and places it on the (cell x mixture) grid."""

    def __init__(self, x: Features, row_index: np.ndarray | None) -> None:
        n_rows = x.log_n.size
        self.by_row = row_index is None
        self.cell = np.arange(n_rows) if row_index is None else np.asarray(row_index)
        self.mixture = x.mixture_index
        self.n_cells, self.n_mixtures = int(self.cell.max()) + 1, x.unique_h.shape[0]
        self.cell_order, self.cell_starts = self._sorted(self.cell)
        self.mixture_order, self.mixture_starts = self._sorted(self.mixture)
        self.grid = self.cell * self.n_mixtures + self.mixture
        self.unique = np.unique(self.grid).size == n_rows

    @staticmethod
    def _sorted(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(index, kind="stable")
        return order, np.flatnonzero(np.diff(index[order], prepend=-1))

    def per_cell(self, values: np.ndarray) -> np.ndarray:
        if self.by_row:
            return values
        return np.add.reduceat(values[:, self.cell_order], self.cell_starts, axis=1)

    def per_mixture(self, values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values[:, self.mixture_order], self.mixture_starts, axis=1)

    def on_grid(self, values: np.ndarray) -> np.ndarray:
        """(B, cells, mixtures): each row's value in its (cell, mixture) entry (summed if repeated)."""
        n_fits = values.shape[0]
        grid = np.zeros((n_fits, self.n_cells * self.n_mixtures))
        if self.unique:
            grid[:, self.grid] = values
        else:
            for i in range(n_fits):
                grid[i] = np.bincount(self.grid, values[i], minlength=grid.shape[1])
        return grid.reshape(n_fits, self.n_cells, self.n_mixtures)

    def normal_equations(
        self, rows: np.ndarray, mixtures: np.ndarray, curvature: np.ndarray, psi: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """J^T psi and J^T diag(curvature) J from the row block (B, cells, r) and the mixture block
        (B, mixtures, s), in the blocks' column order (row columns first)."""
        n_fits, r, s = rows.shape[0], rows.shape[-1], mixtures.shape[-1]
        rows_t, mixtures_t = rows.transpose(0, 2, 1), mixtures.transpose(0, 2, 1)
        curvature_m = self.per_mixture(curvature)
        gradient = np.empty((n_fits, r + s))
        gradient[:, :r] = np.matmul(rows_t, self.per_cell(psi)[..., None])[..., 0]
        gradient[:, r:] = np.matmul(mixtures_t, self.per_mixture(psi)[..., None])[..., 0]
        hessian = np.empty((n_fits, r + s, r + s))
        hessian[:, :r, :r] = np.matmul(rows_t * self.per_cell(curvature)[:, None, :], rows)
        if self.by_row:  # the row block is per table row: sum it per mixture first
            h_rm = np.matmul(self._rows_per_mixture(rows_t * curvature[:, None, :]), mixtures)
        else:
            h_rm = np.matmul(np.matmul(rows_t, self.on_grid(curvature)), mixtures)
        hessian[:, :r, r:] = h_rm
        hessian[:, r:, :r] = h_rm.transpose(0, 2, 1)
        hessian[:, r:, r:] = np.matmul(mixtures_t * curvature_m[:, None, :], mixtures)
        return gradient, hessian

    def _rows_per_mixture(self, weighted_rows_t: np.ndarray) -> np.ndarray:
        """(B, r, n) -> (B, r, mixtures): each row's columns summed per mixture."""
        ordered = weighted_rows_t[:, :, self.mixture_order]
        return np.add.reduceat(ordered, self.mixture_starts, axis=2)


@dataclass
class BatchFit:
    """The end points of B vectorised fits."""

    thetas: np.ndarray  # (B, p)
    values: np.ndarray  # (B,) summed Huber loss, unscaled
    n_evaluations: np.ndarray  # (B,)


def _eigen(hessian: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the trust-region steps need of the Gauss-Newton matrix J^T J = V s^2 V^T (scaled
    variables): s^2 and V in descending order, as svd's, and V^T g = s (U^T f)."""
    eigenvalues, vectors = np.linalg.eigh(hessian)
    vectors = vectors[:, :, ::-1]
    return np.maximum(eigenvalues[:, ::-1], 0.0), vectors, np.einsum("bpq,bp->bq", vectors, gradient)


def _trust_region_steps(
    s2: np.ndarray, vectors: np.ndarray, suf: np.ndarray, radius: np.ndarray, alpha: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """scipy's `solve_lsq_trust_region` (Moré's method) for a batch, in scaled variables, from the
    eigen-decomposition of J^T J (`_eigen`: U^T f = V^T g / s): the Gauss-Newton step where J has
    full rank and the step fits in `radius`, else the step of norm `radius` of the
    Levenberg-Marquardt parameter found by 10 Newton iterations at most."""
    s = np.sqrt(s2)
    full_rank = s[:, -1] > EPS * n_rows * s[:, 0]
    with np.errstate(all="ignore"):
        gauss_newton = -np.einsum("bpq,bq->bp", vectors, np.where(s2 > 0, suf / s2, 0.0))
    fits = full_rank & (np.linalg.norm(gauss_newton, axis=1) <= radius)

    step, out_alpha = gauss_newton, np.zeros_like(alpha)
    m = np.flatnonzero(~fits)  # Moré's search for the rest
    if m.size:
        with np.errstate(all="ignore"):
            out_alpha[m] = _more_alpha(s2[m], suf[m], radius[m], alpha[m], full_rank[m])
            limited = -np.einsum("bpq,bq->bp", vectors[m], suf[m] / (s2[m] + out_alpha[m, None]))
            step[m] = limited * (radius[m] / np.linalg.norm(limited, axis=1))[:, None]
    return step, out_alpha


def _more_alpha(
    s2: np.ndarray, suf: np.ndarray, radius: np.ndarray, alpha: np.ndarray, full_rank: np.ndarray
) -> np.ndarray:
    """The Levenberg-Marquardt parameter whose step has norm `radius` (to 1%), by scipy's Newton
    iteration on phi(alpha) = |p(alpha)| - radius, started from the last step's `alpha`; each
    iteration evaluates only the systems still searching."""

    def phi(a: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        denom = s2[s] + a[:, None]
        p_norm = np.linalg.norm(suf[s] / denom, axis=1)
        return p_norm - radius[s], -np.sum(suf[s] ** 2 / denom**3, axis=1) / p_norm

    everyone = np.arange(alpha.size)
    upper = np.linalg.norm(suf, axis=1) / radius
    phi0, dphi0 = phi(np.zeros_like(radius), everyone)
    lower = np.where(full_rank, -phi0 / dphi0, 0.0)
    fresh = (alpha == 0) & ~full_rank
    alpha = np.where(fresh, np.maximum(0.001 * upper, np.sqrt(lower * upper)), alpha)
    s = everyone  # the systems still searching
    for _ in range(10):
        a, low, up = alpha[s], lower[s], upper[s]
        a = np.where((a < low) | (a > up), np.maximum(0.001 * up, np.sqrt(low * up)), a)
        value, derivative = phi(a, s)
        upper[s] = np.where(value < 0, a, up)
        ratio = value / derivative
        lower[s] = np.maximum(low, a - ratio)
        alpha[s] = a - (value + radius[s]) * ratio / radius[s]
        s = s[~(np.abs(value) < 0.01 * radius[s])]
        if not s.size:
            break
    return alpha


@dataclass
class _Searches:
    """The state of B local searches (one row per fit) that every method shares."""

    x: np.ndarray
    cost: np.ndarray
    gradient: np.ndarray
    hessian: np.ndarray  # J^T diag(c) J
    scale_inv: np.ndarray  # x_scale="jac": the largest column norms of J seen so far
    nfev: np.ndarray
    active: np.ndarray

    @classmethod
    def start(cls, x: np.ndarray, cost: np.ndarray, gradient: np.ndarray, hessian: np.ndarray, gtol: float):
        scale_inv = np.sqrt(np.diagonal(hessian, axis1=-2, axis2=-1)).copy()
        scale_inv[~(scale_inv > 0) | ~np.isfinite(scale_inv)] = 1.0
        active = np.isfinite(cost) & (np.abs(gradient).max(axis=1) >= gtol)
        state = cls(x, cost, gradient, hessian, scale_inv, np.ones(x.shape[0], dtype=int), active)
        state.reset()
        return state

    def reset(self) -> None:
        """Set the method's own variables for the start."""

    def accept(self, a: np.ndarray, accept: np.ndarray, step: np.ndarray, new) -> np.ndarray:
        """Move the fits `a[accept]` by their step to the new point `new` (the cost at every fit of
        `a`, and its `Derivatives`); returns the indices of the moved fits."""
        ok = a[accept]
        self.x[ok] += step[accept]
        self.cost[ok] = new[0][accept]
        self.gradient[ok], self.hessian[ok] = new[1](accept)
        column_norms = np.sqrt(np.diagonal(self.hessian[ok], axis1=-2, axis2=-1))
        self.scale_inv[ok] = np.maximum(self.scale_inv[ok], column_norms)
        return ok


@dataclass
class _TrustRegions(_Searches):
    """B trust-region searches: scipy trf's variables."""

    radius: np.ndarray = field(default_factory=lambda: np.zeros(0))
    alpha: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the last step's damping
    # eigen-decomposition of the scaled J^T J, redone only after an accepted step
    s2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    vectors: np.ndarray = field(default_factory=lambda: np.zeros(0))
    suf: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stale: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def reset(self) -> None:
        self.radius = np.linalg.norm(self.x * self.scale_inv, axis=1)
        self.radius[self.radius == 0] = 1.0
        self.alpha = np.zeros(self.x.shape[0])
        self.s2, self.suf = np.zeros_like(self.x), np.zeros_like(self.x)
        self.vectors = np.zeros(self.hessian.shape)
        self.stale = np.ones(self.x.shape[0], dtype=bool)

    def steps(self, a: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The active fits' steps in scaled variables, their predicted reductions, and the scale."""
        d = 1.0 / self.scale_inv[a]
        redo = a[self.stale[a]]
        if redo.size:
            scale = 1.0 / self.scale_inv[redo]
            scaled = self.hessian[redo] * scale[:, :, None] * scale[:, None, :]
            self.s2[redo], self.vectors[redo], self.suf[redo] = _eigen(scaled, self.gradient[redo] * scale)
            self.stale[redo] = False
        vectors = self.vectors[a]
        step_h, self.alpha[a] = _trust_region_steps(
            self.s2[a], vectors, self.suf[a], self.radius[a], self.alpha[a], n_rows
        )
        rotated = np.einsum("bpq,bp->bq", vectors, step_h)
        predicted = -0.5 * np.einsum("bq,bq->b", self.s2[a], rotated**2)
        predicted -= np.einsum("bp,bp->b", self.gradient[a] * d, step_h)
        return step_h, predicted, d

    def update(self, a, step_h, step, predicted, new, ftol, xtol, gtol, max_nfev) -> None:
        """scipy trf's radius update, stopping tests and acceptance for the active fits `a`."""
        new_cost = new[0]
        self.nfev[a] += 1
        step_h_norm = np.linalg.norm(step_h, axis=1)
        finite = np.isfinite(new_cost)
        reduction = self.cost[a] - new_cost
        ratio = np.where(predicted > 0, reduction / predicted, np.where(reduction == 0, 1.0, 0.0))
        radius = self.radius[a]
        new_radius = np.where(ratio < 0.25, 0.25 * step_h_norm, radius)
        new_radius = np.where((ratio > 0.75) & (step_h_norm > 0.95 * radius), 2 * radius, new_radius)
        ftol_met = (reduction < ftol * self.cost[a]) & (ratio > 0.25)
        xtol_met = np.linalg.norm(step, axis=1) < xtol * (xtol + np.linalg.norm(self.x[a], axis=1))
        stop = finite & (ftol_met | xtol_met)
        going = finite & ~stop
        self.alpha[a[going]] *= radius[going] / new_radius[going]
        self.radius[a] = np.where(going, new_radius, np.where(finite, radius, 0.25 * step_h_norm))
        accept = finite & (reduction > 0)
        ok = self.accept(a, accept, step, new)
        self.stale[ok] = True
        done = stop | (self.nfev[a] >= max_nfev)
        done[accept] |= np.abs(self.gradient[ok]).max(axis=1) < gtol
        self.active[a[done]] = False


@dataclass
class _Damped(_Searches):
    """B Levenberg-Marquardt searches: the step solves (J^T J + mu D^2) step = -g with D the same
    column scaling as trf's x_scale="jac", one batched linear solve per iteration and no
    eigen-decomposition; mu follows the gain ratio (Nielsen's rule)."""

    mu: np.ndarray = field(default_factory=lambda: np.zeros(0))
    nu: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def reset(self) -> None:
        self.mu, self.nu = np.full(self.x.shape[0], 1e-3), np.full(self.x.shape[0], 2.0)

    def steps(self, a: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The active fits' damped Gauss-Newton steps in scaled variables, their predicted
        reductions, and the scale."""
        d = 1.0 / self.scale_inv[a]
        scaled = self.hessian[a] * d[:, :, None] * d[:, None, :]
        gradient = self.gradient[a] * d
        damped = scaled + np.maximum(self.mu[a], 1e-12)[:, None, None] * np.eye(d.shape[1])
        step_h = -_solve(damped, gradient)
        predicted = -np.einsum("bp,bp->b", gradient, step_h)
        predicted -= 0.5 * np.einsum("bp,bpq,bq->b", step_h, scaled, step_h)
        return step_h, predicted, d

    def update(self, a, step_h, step, predicted, new, ftol, xtol, gtol, max_nfev) -> None:
        """Nielsen's damping update, the stopping tests of trf (`_TrustRegions.update`), acceptance."""
        new_cost = new[0]
        self.nfev[a] += 1
        finite = np.isfinite(new_cost) & np.isfinite(predicted)
        reduction = self.cost[a] - new_cost
        ratio = np.where(finite & (predicted > 0), reduction / predicted, -1.0)
        good = ratio > 0
        self.mu[a] = np.where(
            good, self.mu[a] * np.maximum(1 / 3, 1 - (2 * ratio - 1) ** 3), self.mu[a] * self.nu[a]
        )
        self.nu[a] = np.where(good, 2.0, 2 * self.nu[a])
        ftol_met = (reduction < ftol * self.cost[a]) & (ratio > 0.25)
        xtol_met = np.linalg.norm(step, axis=1) < xtol * (xtol + np.linalg.norm(self.x[a], axis=1))
        accept = finite & (reduction > 0)
        ok = self.accept(a, accept, step, new)
        done = (finite & (ftol_met | xtol_met)) | (self.nfev[a] >= max_nfev) | ~(self.mu[a] < 1e300)
        done[accept] |= np.abs(self.gradient[ok]).max(axis=1) < gtol
        self.active[a[done]] = False


def _solve(matrices: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Batched solve of symmetric positive (semi)definite systems; a system with non-finite entries
    gets the zero step, a singular one its least-squares solution."""
    bad = ~(np.isfinite(matrices).all(axis=(1, 2)) & np.isfinite(vectors).all(axis=1))
    if bad.any():
        matrices = np.where(bad[:, None, None], np.eye(matrices.shape[1]), matrices)
        vectors = np.where(bad[:, None], 0.0, vectors)
    try:
        return np.linalg.solve(matrices, vectors[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.array(
            [np.linalg.lstsq(m, v, rcond=None)[0] for m, v in zip(matrices, vectors, strict=True)]
        )


METHODS: dict[str, type[_TrustRegions] | type[_Damped]] = {"trf": _TrustRegions, "lm": _Damped}


# Fits a thread gets at least when one batch is split (several targets are split by target instead,
# `fit_least_squares_batch`): the 132 full searches of the per-domain additive fit took 2.7 CPU-s on
# two threads against 1.8 on one, in no less wall time (each thread steps until its slowest search,
# crawling along a flat valley, ends); the 1,188 short searches ran 1.9x faster on two.
FITS_PER_THREAD = 256


def batch_least_squares(
    equations: NormalEquations,
    thetas: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray | None = None,
    options: dict[str, float | int] | None = None,
    method: str = "trf",
    n_jobs: int = 1,
) -> BatchFit:
    """B independent Huber fits in one vectorised loop. method="trf" is scipy's
    `least_squares(method="trf", loss="huber", x_scale="jac")` without bounds, step for step
    (`least_squares_fit` runs it on one start), on the normal equations instead of the Jacobian's SVD;
    method="lm" is Levenberg-Marquardt with the same scaling and stopping tests (`_Damped`): no
    eigen-decomposition, so each step costs a fraction of trf's, and it converges further in the
    flat valleys where trf's trust region crawls.

    Fit b starts at `thetas[b]` and fits `targets[b]` with row weights `weights[b]` (or `weights`
    (n,) for every fit); `options` are least_squares' ftol, xtol, gtol and max_nfev (default
    `LEAST_SQUARES_OPTIONS`). A fit whose start is not finite stays there (value +inf); a step onto
    a point where the prediction or Jacobian is not finite is refused (a smaller trust region, or
    more damping). `n_jobs` > 1 splits the fits into that many parts run in threads (`_in_threads`:
    the same results)."""
    if n_jobs > 1 and thetas.shape[0] >= 2 * FITS_PER_THREAD:
        fits = _in_threads(
            lambda rows: batch_least_squares(
                equations, thetas[rows], targets[rows], _of_fits(weights, rows), options, method
            ),
            thetas.shape[0],
            n_jobs,
        )
        return BatchFit(
            *(np.concatenate([getattr(f, k) for f in fits]) for k in ("thetas", "values", "n_evaluations"))
        )
    settings = {**LEAST_SQUARES_OPTIONS, **(options or {})}
    ftol, xtol, gtol, max_nfev = (settings[key] for key in ("ftol", "xtol", "gtol", "max_nfev"))
    x = np.array(thetas, dtype=float)
    with np.errstate(all="ignore"):  # diverging starts overflow: their steps are refused
        cost, derivatives = equations(x, targets, weights)
        state = METHODS[method].start(x, cost, *derivatives(np.ones(x.shape[0], dtype=bool)), gtol)
        while state.active.any():
            a = np.flatnonzero(state.active)
            step_h, predicted, d = state.steps(a, targets.shape[1])
            step = d * step_h
            new = equations(state.x[a] + step, _of_fits(targets, a), _of_fits(weights, a))
            state.update(a, step_h, step, predicted, new, ftol, xtol, gtol, max_nfev)
    return BatchFit(state.x, state.cost, state.nfev)


def _in_threads(
    run: Callable[[np.ndarray], T], n_fits: int, n_jobs: int, at_least: int | None = None
) -> list[T]:
    """`run` on `n_jobs` consecutive parts of the fits (or targets; index arrays, `at_least` a part,
    default `FITS_PER_THREAD`), in threads: numpy releases the GIL in its array loops, and every fit
    is independent of the others, so the results, in the parts' order, are the same as one call's."""
    parts = np.array_split(np.arange(n_fits), max(1, min(n_jobs, n_fits // (at_least or FITS_PER_THREAD))))
    if len(parts) == 1:
        return [run(parts[0])]
    with ThreadPoolExecutor(len(parts)) as pool:
        return list(pool.map(run, parts))


@overload
def _of_fits(values: np.ndarray, a: np.ndarray) -> np.ndarray: ...
@overload
def _of_fits(values: None, a: np.ndarray) -> None: ...
@overload
def _of_fits(values: np.ndarray | None, a: np.ndarray) -> np.ndarray | None: ...
def _of_fits(values: np.ndarray | None, a: np.ndarray) -> np.ndarray | None:
    """The rows of the fits `a` of a per-fit (B, n) array (itself when `a` is every fit); None and
    row weights shared by every fit ((n,)) as they are."""
    if values is None or values.ndim == 1 or a.size == values.shape[0]:
        return values
    return values[a]


def batch_values(
    blocks: Callable[[np.ndarray, Features], Blocks],
    x: Features,
    thetas: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray | None,
    delta: float = HUBER_DELTA,
    n_jobs: int = 1,
) -> np.ndarray:
    """The summed Huber loss of each row of `thetas` (B, p) against its row of `targets` (B, n); +inf
    where the prediction is not finite. `weights` (B, n), (n,) or None; `n_jobs` threads."""

    def values_of(rows: np.ndarray) -> np.ndarray:
        w = _of_fits(weights, rows)
        with np.errstate(all="ignore"):
            terms = huber_terms(blocks(thetas[rows], x).prediction - targets[rows], delta)
            return (terms if w is None else terms * w).sum(axis=-1)

    values = np.concatenate(_in_threads(values_of, thetas.shape[0], n_jobs))
    return np.where(np.isfinite(values), values, np.inf)


def _best_per_group(values: np.ndarray, group: np.ndarray, n_groups: int, keep: int) -> list[np.ndarray]:
    """For each group, the indices of its `keep` lowest finite values, lowest first (stable)."""
    values = np.where(np.isfinite(values), values, np.inf)
    out = []
    for g in range(n_groups):
        members = np.flatnonzero(group == g)
        out.append(members[np.argsort(values[members], kind="stable")[:keep]])
    return out


@single_threaded
def fit_least_squares_batch(
    blocks: Callable[[np.ndarray, Features], Blocks],
    x: Features,
    targets: np.ndarray,
    starts: np.ndarray,
    weights: np.ndarray | None = None,
    keep: int = 6,
    n_searches: int = 54,
    explore_rows: np.ndarray | None = None,
    delta: float = HUBER_DELTA,
    n_jobs: int = 1,
) -> list[MultiStartResult]:
    """`fit_least_squares` for T targets at once (e.g. 22 per-domain losses on the same runs), every
    search of every target in one vectorised loop (`batch_least_squares`), one loop per thread.

    `targets` (T, n); `starts` (T, m, p), each target's random starts; `weights` (n,) row weights or
    None; `explore_rows` the row subsample of the short searches (default: all rows). Per target:
    the `n_searches` starts with the lowest objective on the subsample, short trf searches from each
    (they rank the basins: scipy's trf step for step, as `fit_least_squares`), then Levenberg-Marquardt
    searches of up to `REFINE_NFEV` evaluations on every row from the `keep` best end points; one
    result per target. `n_jobs` threads share the targets, each thread all the searches of its own
    (the same results; with one target, the fits)."""
    if n_jobs > 1 and targets.shape[0] > 1:
        parts = _in_threads(
            lambda t: fit_least_squares_batch(
                blocks, x, targets[t], starts[t], weights, keep, n_searches, explore_rows, delta
            ),
            targets.shape[0],
            n_jobs,
            at_least=1,
        )
        return [result for part in parts for result in part]
    n_targets, p = targets.shape[0], starts.shape[-1]
    rows = np.arange(targets.shape[1]) if explore_rows is None else explore_rows
    x_explore = x.subset(rows)
    y_explore = targets[:, rows]
    w_explore = None if weights is None else weights[rows]
    flat = starts.reshape(-1, p)
    owner = np.repeat(np.arange(n_targets), starts.shape[1])
    values = batch_values(blocks, x_explore, flat, y_explore[owner], w_explore, delta, n_jobs)
    chosen = np.concatenate(_best_per_group(values, owner, n_targets, n_searches))
    chosen = chosen[np.isfinite(values[chosen])]
    missing = sorted(set(range(n_targets)) - set(owner[chosen].tolist()))
    if missing:
        raise ValueError("no starting point gives a finite objective; check the runs table's losses")

    def search(
        x_rows: Features, y: np.ndarray, w: np.ndarray | None, thetas, who, options, method
    ) -> BatchFit:
        equations = huber_normal_equations(blocks, x_rows, delta)
        return batch_least_squares(equations, thetas, y[who], w, options, method, n_jobs)

    explore_nfev = {"max_nfev": EXPLORE_NFEV_PER_PARAM * p}
    explore = search(x_explore, y_explore, w_explore, flat[chosen], owner[chosen], explore_nfev, "trf")
    _advance(chosen.size)
    best = np.concatenate(_best_per_group(explore.values, owner[chosen], n_targets, keep))
    refine = {"max_nfev": REFINE_NFEV}
    refined = search(x, targets, weights, explore.thetas[best], owner[chosen][best], refine, REFINE_METHOD)
    _advance(best.size)
    results = []
    for t in range(n_targets):
        mine = np.flatnonzero(owner[chosen][best] == t)
        order = mine[np.argsort(refined.values[mine], kind="stable")]
        evaluations = explore.n_evaluations[owner[chosen] == t].sum() + refined.n_evaluations[mine].sum()
        results.append(
            MultiStartResult(
                theta=refined.thetas[order[0]].copy(),
                objective=float(refined.values[order[0]]),
                objectives=refined.values[order],
                thetas=refined.thetas[order],
                n_evaluations=int(evaluations),
                converged=True,
                message="vectorised least squares (trf short searches, Levenberg-Marquardt on all rows)",
            )
        )
    return results


@single_threaded
def bootstrap_least_squares_batch(
    blocks: Callable[[np.ndarray, Features], Blocks],
    x: Features,
    targets: np.ndarray,
    thetas: np.ndarray,
    weights: np.ndarray | None,
    groups: np.ndarray,
    n_bootstrap: int,
    seed: int,
    delta: float = HUBER_DELTA,
    n_jobs: int = 1,
) -> list[np.ndarray]:
    """`bootstrap_least_squares` for T targets (`targets` (T, n), fitted `thetas` (T, p)) in one
    vectorised loop: the same resamples for every target (as row weights, times `weights`), each
    refit warm-started from its target's theta. One (n_finite, p) array per target."""
    n_targets = targets.shape[0]
    if not n_bootstrap:
        return [np.empty((0, thetas.shape[1])) for _ in range(n_targets)]
    samples = np.array(bootstrap_weights(groups, n_bootstrap, seed))
    if weights is not None:
        samples = samples * weights
    owner = np.repeat(np.arange(n_targets), n_bootstrap)
    equations = huber_normal_equations(blocks, x, delta)
    refits = batch_least_squares(
        equations, thetas[owner], targets[owner], np.tile(samples, (n_targets, 1)), n_jobs=n_jobs
    )
    _advance(owner.size)
    finite = np.isfinite(refits.thetas).all(axis=1)
    return [refits.thetas[(owner == t) & finite] for t in range(n_targets)]
