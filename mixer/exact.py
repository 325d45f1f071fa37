"""The exact proposer: solve for the mixture directly with scipy (SLSQP) for smooth models.

Minimises objective(h) (the model's predicted loss plus any penalties) over the simplex inside
[floors, caps]; `kl_penalty` is Olmix's regulariser toward the prior, kl_reg * KL(h || prior),
which keeps the answer where the proxy runs have evidence. Several starts; the best is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.optimize import minimize

from mixer.sampler import box_simplex_projection

KL_EPS = 1e-12
# Models whose prediction is smooth in the weights: a gradient method finds their optimum.
SMOOTH_MODELS = ("mixing-law", "linear", "gp")


def kl_to_prior(X: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """KL(h || prior) for each row h (0 log 0 = 0)."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    return np.sum(X * (np.log(X + KL_EPS) - np.log(np.asarray(prior, dtype=float) + KL_EPS)), axis=1)


def feasible(h: np.ndarray, lower: np.ndarray, upper: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """`h` clipped into the bounds; moved onto the simplex only if clipping leaves it off (a
    projection would also move feasible points)."""
    h = np.clip(h, lower, upper)
    if abs(h.sum() - 1.0) <= tol:
        return h / h.sum()
    return box_simplex_projection(h[None, :], lower, upper)[0]


def solve_exact(
    objective: Callable[[np.ndarray], np.ndarray],
    lower: np.ndarray,
    upper: np.ndarray,
    starts: Sequence[np.ndarray],
    max_iter: int = 500,
) -> tuple[np.ndarray, float]:
    """SLSQP from each start under sum(h) = 1 and lower <= h <= upper; the best (h, objective)."""
    lower = np.asarray(lower, dtype=float)
    upper = np.asarray(upper, dtype=float)

    def fun(h: np.ndarray) -> float:
        return float(objective(h[None, :])[0])

    constraint = {"type": "eq", "fun": lambda h: h.sum() - 1.0, "jac": lambda h: np.ones_like(h)}
    best: tuple[np.ndarray, float] | None = None
    for start in starts:
        start = feasible(np.asarray(start, dtype=float), lower, upper)
        result = minimize(
            fun,
            start,
            method="SLSQP",
            bounds=list(zip(lower, upper, strict=True)),
            constraints=[constraint],
            options={"maxiter": max_iter, "ftol": 1e-12},
        )
        for h in (start, feasible(result.x, lower, upper)):  # SLSQP never returns worse than its start
            value = fun(h)
            if best is None or value < best[1]:
                best = (h, value)
    assert best is not None
    return best
