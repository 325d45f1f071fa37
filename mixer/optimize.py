"""RegMix's mixture search: draw many mixtures, predict their loss, average the best k.

Pure array math over a scoring function `score(X) -> loss` (lower is better), so any regressor,
law or ensemble can be searched. RegMix draws M mixtures from Dirichlet(prior x 1) and averages
the top k by predicted loss. Predicting all M with a 1,000-tree LightGBM costs about a minute
per million rows, so `search="refine"` finds the same top k by scoring only the draws that a
cheap surrogate (ridge on weights and log weights, refitted each round on the best draws scored
so far) ranks highest, until two rounds in a row add nothing to the top k. `search="brute"` scores all M.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from mixer.sampler import box_simplex_projection, sample_dirichlet
from mixer.simplex import check_bounds, outside_range

N_DRAWS = 1_000_000
TOP_K = 100
CONCENTRATION = 1.0
REFINE_BATCH = 2000
REFINE_MAX_ROUNDS = 16
SURROGATE_EPS = 1e-3

Score = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SearchResult:
    """The averaged mixture, the top-k draws (best first) with their scores, and the cost."""

    weights: np.ndarray
    top_draws: np.ndarray
    top_scores: np.ndarray
    n_evaluated: int
    rounds: int


def draw_mixtures(
    prior: np.ndarray,
    n: int,
    concentration: float = CONCENTRATION,
    seed: int = 0,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> np.ndarray:
    """`n` float32 draws from Dirichlet(prior x concentration), mapped inside [lower, upper].

    Domains with prior 0 get weight 0. Draws outside the bounds are moved in by
    `box_simplex_projection`, so no draw is rejected.
    """
    prior = np.asarray(prior, dtype=float)
    if concentration <= 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    alpha = prior / prior.sum() * concentration
    rng = np.random.default_rng(seed)
    draws = np.zeros((n, len(alpha)), dtype=np.float32)
    for j, a in enumerate(alpha):
        if a > 0:
            draws[:, j] = rng.standard_gamma(a, n, dtype=np.float32)
    totals = draws.sum(axis=1)
    empty = totals <= 0
    if empty.any():
        # Every gamma of the row underflowed float32; redraw those rows in log space.
        live = alpha > 0
        draws[np.ix_(empty, live)] = sample_dirichlet(np.tile(alpha[live], (int(empty.sum()), 1)), rng)
        totals = draws.sum(axis=1)
    draws /= totals[:, None]
    if lower is not None or upper is not None:
        lo = np.zeros(len(alpha)) if lower is None else np.asarray(lower, dtype=float)
        hi = np.ones(len(alpha)) if upper is None else np.asarray(upper, dtype=float)
        check_bounds(lo, hi)
        outside = ((draws > hi) | (draws < lo)).any(axis=1)
        if outside.any():
            draws[outside] = box_simplex_projection(draws[outside].astype(float), lo, hi)
    return draws


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k lowest scores, best first (ties by index, so deterministic)."""
    k = min(k, len(scores))
    part = np.argpartition(scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.lexsort((part, scores[part]))]


def top_k_brute(score: Score, draws: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Score every draw; return (indices best first, their scores, number scored)."""
    scores = np.asarray(score(draws), dtype=float)
    best = _best(scores, k)
    return best, scores[best], len(draws)


def _surrogate_coef(features: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Slopes of a lightly ridged least-squares fit (the intercept does not change a ranking)."""
    features = features.astype(float)
    centred = features - features.mean(axis=0)
    gram = centred.T @ centred
    gram[np.diag_indices_from(gram)] += 1e-6 * (np.trace(gram) / len(gram) + 1e-12)
    return np.linalg.solve(gram, centred.T @ (values - values.mean())).astype(np.float32)


def top_k_refine(
    score: Score,
    draws: np.ndarray,
    k: int,
    batch: int = REFINE_BATCH,
    max_rounds: int = REFINE_MAX_ROUNDS,
    seed: int = 0,
    patience: int = 2,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Surrogate-guided search for the k draws with the lowest score, scoring few of them.

    Round 0 scores a random batch; each later round fits a ridge surrogate on the better half
    of everything scored, scores the unscored draws it ranks best, and stops once `patience`
    rounds in a row put no new draw into the top k. Returns (indices best first, scores, number
    scored, rounds).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _refine(score, draws, k, batch, max_rounds, seed, patience)


def _refine(
    score: Score, draws: np.ndarray, k: int, batch: int, max_rounds: int, seed: int, patience: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    n = len(draws)
    batch = max(batch, 2 * k)
    if n <= 3 * batch:
        idx, scores, evaluated = top_k_brute(score, draws, k)
        return idx, scores, evaluated, 1
    rng = np.random.default_rng(seed)
    logs = np.log(draws + np.float32(SURROGATE_EPS))
    scored = rng.choice(n, size=batch, replace=False)
    values = np.asarray(score(draws[scored]), dtype=float)
    seen = np.zeros(n, dtype=bool)
    seen[scored] = True
    rounds, fruitless = 1, 0
    for _ in range(max_rounds):
        if n - len(scored) < batch:
            break
        threshold = np.sort(values)[min(k, len(values)) - 1]
        better = np.argsort(values, kind="stable")[: max(len(values) // 2, 2 * k)]
        rows = scored[better]
        coef = _surrogate_coef(np.hstack([draws[rows], logs[rows]]), values[better])
        d = draws.shape[1]
        guess = draws @ coef[:d] + logs @ coef[d:]
        guess[seen] = np.inf
        new = np.argpartition(guess, batch)[:batch]
        new_values = np.asarray(score(draws[new]), dtype=float)
        seen[new] = True
        scored = np.concatenate([scored, new])
        values = np.concatenate([values, new_values])
        rounds += 1
        # One fruitless round can be a poor surrogate; two in a row end the search.
        fruitless = 0 if (new_values < threshold).any() else fruitless + 1
        if fruitless >= patience:
            break
    best = _best(values, k)
    return scored[best], values[best], len(scored), rounds


def search_mixture(
    score: Score,
    prior: np.ndarray,
    caps: np.ndarray | None = None,
    floors: np.ndarray | None = None,
    n_draws: int = N_DRAWS,
    top_k: int = TOP_K,
    concentration: float = CONCENTRATION,
    search: str = "refine",
    seed: int = 0,
) -> SearchResult:
    """Draw `n_draws` mixtures inside [floors, caps], find the `top_k` lowest scores, average them.

    The average of feasible mixtures is feasible, so the result respects the caps and floors.
    """
    if top_k < 1 or n_draws < top_k:
        raise ValueError(f"need 1 <= top_k ({top_k}) <= n_draws ({n_draws})")
    # Matrix-vector products here are memory-bound; extra BLAS threads only contend.
    with threadpool_limits(limits=1, user_api="blas"):
        return _search(score, prior, caps, floors, n_draws, top_k, concentration, search, seed)


def _search(
    score: Score,
    prior: np.ndarray,
    caps: np.ndarray | None,
    floors: np.ndarray | None,
    n_draws: int,
    top_k: int,
    concentration: float,
    search: str,
    seed: int,
) -> SearchResult:
    draws = draw_mixtures(prior, n_draws, concentration, seed, lower=floors, upper=caps)
    if search == "brute":
        idx, scores, evaluated = top_k_brute(score, draws, top_k)
        rounds = 1
    elif search == "refine":
        idx, scores, evaluated, rounds = top_k_refine(score, draws, top_k, seed=seed)
    else:
        raise ValueError(f"unknown search {search!r}; use 'refine' or 'brute'")
    top = draws[idx].astype(float)
    weights = top.mean(axis=0)
    weights /= weights.sum()
    return SearchResult(weights, top, scores, evaluated, rounds)


def coverage(
    weights: np.ndarray, training: np.ndarray, domains: list[str] | None = None, quantile: float = 0.95
) -> dict[str, object]:
    """How far a mixture lies from the training mixtures the regressor saw.

    `nearest_training_l1`: L1 distance to the closest training mixture; `training_nn_l1_q`: the
    `quantile` of training mixtures' distances to their own nearest neighbour; `outside_range`:
    domains whose weight lies outside the training min..max. `outside_training` is true when
    either test fails: trees predict flat there, so the predicted loss is not to be trusted.
    """
    training = np.asarray(training, dtype=float)
    weights = np.asarray(weights, dtype=float)
    names = domains or [str(i) for i in range(len(weights))]
    nearest = float(np.abs(training - weights).sum(axis=1).min())
    own_nearest = np.empty(len(training))
    for start in range(0, len(training), 256):
        block = np.abs(training[start : start + 256, None, :] - training[None, :, :]).sum(axis=2)
        block[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        own_nearest[start : start + 256] = block.min(axis=1)
    typical = float(np.quantile(own_nearest, quantile)) if len(training) > 1 else 0.0
    outside = outside_range(weights, training.min(axis=0), training.max(axis=0), names)
    return {
        "nearest_training_l1": nearest,
        "training_nn_l1_q": typical,
        "outside_range": outside,
        "outside_training": bool(nearest > typical or outside),
    }
