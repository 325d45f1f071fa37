"""Optimisation on the probability simplex with per-coordinate floors and caps.

Pure functions, no knowledge of laws or domains:

* `kl_projection(y, lower, upper)`: the closest point to y in KL divergence within
  {x : sum x = 1, lower <= x <= upper}, which is clip(lambda * y, lower, upper) for the one lambda
  that makes it sum to 1;
* `exponentiated_gradient(fun, x0, lower, upper)`: mirror descent with the entropy mirror map
  (x <- x * exp(-eta * grad), then the KL projection), with a backtracking step size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


def outside_range(
    weights: np.ndarray, low: np.ndarray, high: np.ndarray, domains: Sequence[str], tol: float = 1e-9
) -> list[str]:
    """The domains whose weight lies outside [low, high] (e.g. the training mixtures' range)."""
    return [d for d, w, a, b in zip(domains, weights, low, high, strict=True) if w < a - tol or w > b + tol]


def check_bounds(
    lower: np.ndarray, upper: np.ndarray, domains: Sequence[str] | None = None, tol: float = 1e-12
) -> None:
    """Raise ValueError unless 0 <= lower <= upper <= 1 and sum(lower) <= 1 <= sum(upper); errors
    name the domain (`domains`, else the coordinate's index)."""
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    if lower.shape != upper.shape:
        raise ValueError(f"floors and caps differ in length ({lower.size} vs {upper.size})")
    names = list(domains) if domains is not None else [str(i) for i in range(lower.size)]
    for name, lo, hi in zip(names, lower, upper, strict=True):
        if not (0 <= lo and hi <= 1 + tol):  # also rejects NaN
            raise ValueError(f"domain {name!r}: floor ({lo:g}) and cap ({hi:g}) must lie in [0, 1]")
        if lo > hi + tol:
            raise ValueError(f"domain {name!r}: floor ({lo:g}) is above its cap ({hi:g})")
    if lower.sum() > 1 + tol:
        raise ValueError(f"floors sum to {lower.sum():.4f} > 1: no mixture satisfies them")
    if upper.sum() < 1 - tol:
        raise ValueError(
            f"caps sum to {upper.sum():.4f} < 1: no mixture satisfies them; "
            "raise the caps or max_epochs, or lower the training tokens"
        )


def kl_projection(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """argmin_x KL(x || y) over the capped simplex: clip(lambda y, lower, upper) summing to 1.

    The sum is piecewise linear in lambda with breakpoints lower_i / y_i and upper_i / y_i, so lambda
    is found exactly by locating its segment. Coordinates with y = 0 stay at their floor.
    `lower`/`upper` must pass `check_bounds`.
    """
    y = np.asarray(y, dtype=float)
    positive = y > 0
    if not positive.any() or np.sum(np.where(positive, upper, lower)) < 1 - 1e-12:
        raise ValueError(
            "cannot project: the positive coordinates cannot reach a total of 1 under their caps"
        )
    if lower.sum() >= 1.0 - 1e-15:
        return lower / lower.sum()
    yp = y[positive]
    breaks = np.unique(np.concatenate([lower[positive] / yp, upper[positive] / yp]))
    breaks = breaks[np.isfinite(breaks)]
    totals = (
        np.clip(breaks[:, None] * yp, lower[positive], upper[positive]).sum(axis=1) + lower[~positive].sum()
    )
    j = int(np.searchsorted(totals, 1.0))  # first breakpoint whose total reaches 1
    if j == 0:
        lam = breaks[0] * (1.0 - lower.sum() + lower[positive].sum()) / max(lower[positive].sum(), 1e-300)
    elif j >= breaks.size:
        lam = breaks[-1]
    else:
        lam = breaks[j - 1] + (1.0 - totals[j - 1]) * (breaks[j] - breaks[j - 1]) / (
            totals[j] - totals[j - 1]
        )
    x = np.clip(np.where(positive, lam * y, 0.0), lower, upper)
    return x / x.sum()


@dataclass
class SimplexResult:
    """Outcome of a simplex search."""

    x: np.ndarray
    fun: float
    n_iter: int
    converged: bool


def interior_start(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """A feasible point strictly inside the box where possible: the KL projection of uniform."""
    return kl_projection(np.full(lower.size, 1.0 / lower.size), lower, upper)


def _multiplicative_step(x: np.ndarray, grad: np.ndarray, eta: float) -> np.ndarray:
    """x * exp(-eta * grad) up to a constant factor, in log space and floored at 1e-304 of the
    largest entry, so no coordinate underflows to 0 (a zero would be stuck there, and the
    projection could be left without the coordinate that must take the mass)."""
    g = np.nan_to_num(grad, nan=0.0, posinf=1e300, neginf=-1e300)
    with np.errstate(divide="ignore"):
        log_y = np.log(x) - eta * (g - g.min())
    log_y = np.maximum(log_y, log_y.max() - 700.0)
    return np.exp(log_y - log_y.max())


def exponentiated_gradient(
    fun: Objective,
    x0: np.ndarray | None,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    step: float = 1.0,
    max_iter: int = 5000,
    tol: float = 1e-9,
) -> SimplexResult:
    """Minimise `fun(x) -> (value, gradient)` over the simplex with floors/caps by mirror descent.

    Each step is x+ = KL-projection(x * exp(-eta * g)); eta halves until the step passes the
    mirror-descent sufficient-decrease test f(x+) <= f(x) + g.(x+ - x) + KL(x+ || x) / eta, and
    doubles after each accepted step. Stops when the L1 change falls below `tol` or five
    accepted steps in a row no longer lower f (it is flat to rounding there).
    """
    given = [a for a in (x0, lower, upper) if a is not None]
    if not given:
        raise ValueError("exponentiated_gradient needs x0, lower or upper to know the dimension")
    k = np.asarray(given[0]).size
    lower = np.zeros(k) if lower is None else np.asarray(lower, dtype=float)
    upper = np.ones(k) if upper is None else np.asarray(upper, dtype=float)
    check_bounds(lower, upper)
    x = (
        interior_start(lower, upper)
        if x0 is None
        else kl_projection(np.asarray(x0, dtype=float), lower, upper)
    )
    value, grad = fun(x)
    eta = step
    converged = False
    n_iter = stalls = 0
    for n_iter in range(1, max_iter + 1):
        while True:
            candidate = kl_projection(_multiplicative_step(x, grad, eta), lower, upper)
            new_value, new_grad = fun(candidate)
            both = (candidate > 0) & (x > 0)
            kl = float(np.sum(candidate[both] * np.log(candidate[both] / x[both])))
            if np.isfinite(new_value) and new_value <= value + grad @ (candidate - x) + kl / eta + 1e-15:
                break
            eta *= 0.5
            if eta < 1e-20:
                return SimplexResult(x, value, n_iter, True)
        change = float(np.abs(candidate - x).sum())
        # near the optimum f is flat to rounding: a run of steps that no longer lower it is convergence
        stalls = stalls + 1 if new_value >= value - 1e-13 * max(abs(value), 1e-300) else 0
        x, value, grad = candidate, new_value, new_grad
        eta = min(eta * 2.0, 1e8)
        if change < tol or stalls >= 5:
            converged = True
            break
    return SimplexResult(x, float(value), n_iter, converged)
