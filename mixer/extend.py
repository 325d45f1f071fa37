"""Growing a swarm: new proxy mixtures away from the runs already trained, and where a model of
their losses is least certain.

Olmix rejects a candidate within L2 0.01 of a mixture in its `existing_mix_file`
(allenai/olmix, olmix/generate/synthesize_mixture.py). Here the distance is L1 (the sampler's
dedup metric) and the default threshold is read off the existing swarm: half the median L1
distance from each run to its nearest neighbour, so new runs are at least as spread out as the
old ones are from each other. The threshold used is returned, so callers can report it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mixer.runs import (
    WEIGHT_PREFIX,
    N,
    domain_name,
    is_olmix_swarm,
    read_olmix_ratios,
    read_runs_table,
    validate_weights,
)

if TYPE_CHECKING:
    from mixer.tree import DomainTree

DEFAULT_RADIUS_FRACTION = 0.5
POOL_FACTOR = 8  # candidates drawn per mixture asked for when targeting uncertainty


def existing_matrix(
    source: str | os.PathLike[str] | pd.DataFrame, domains: Sequence[str]
) -> tuple[np.ndarray, pd.DataFrame]:
    """Existing runs' weights in `domains` order, plus a last column of weight on other domains
    (what `mixer.sampler.outside_radius` takes), and the runs table read; duplicate mixtures (one
    per model size or seed) count once. An Olmix swarm's runs without metrics yet count too."""
    table = source.copy() if isinstance(source, pd.DataFrame) else read_runs_table(source)
    frame = (
        table if isinstance(source, pd.DataFrame) or not is_olmix_swarm(source) else read_olmix_ratios(source)
    )
    columns = [c for c in frame.columns if str(c).startswith(WEIGHT_PREFIX)]
    validate_weights(frame, columns, "run" if "run" in frame.columns else None)
    names = {domain_name(c): c for c in columns}
    known = [names[d] for d in domains if d in names]
    if not known:
        raise ValueError(
            f"existing runs share no domain with these ({list(domains)[:5]}...); "
            f"theirs: {sorted(names)[:5]}..."
        )
    weights = np.column_stack(
        [frame[names[d]].to_numpy(dtype=float) if d in names else np.zeros(len(frame)) for d in domains]
    )
    outside = [c for c in columns if domain_name(c) not in set(domains)]
    other = frame[outside].to_numpy(dtype=float).sum(axis=1)
    matrix = np.unique(np.column_stack([weights, other]).round(12), axis=0)
    return matrix, table


def nearest_neighbour_l1(matrix: np.ndarray) -> np.ndarray:
    """Each row's L1 distance to its nearest other row (inf for a single row)."""
    if len(matrix) < 2:
        return np.full(len(matrix), np.inf)
    out = np.empty(len(matrix))
    for start in range(0, len(matrix), 256):
        block = np.abs(matrix[start : start + 256, None, :] - matrix[None, :, :]).sum(axis=2)
        block[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        out[start : start + 256] = block.min(axis=1)
    return out


def default_radius(matrix: np.ndarray, fraction: float = DEFAULT_RADIUS_FRACTION) -> float:
    """`fraction` x the median nearest-neighbour L1 distance among the existing runs."""
    nn = nearest_neighbour_l1(matrix)
    finite = nn[np.isfinite(nn)]
    return float(fraction * np.median(finite)) if len(finite) else 0.0


def gp_uncertainty(X: np.ndarray, y: np.ndarray, seed: int = 0) -> Any:
    """The fitted scikit-learn Gaussian process of the mixer's `gp` model
    (`mixer.regressors.GaussianProcessMixtureRegressor`: constant x ARD RBF + noise, y normalised)."""
    from mixer.regressors import GaussianProcessMixtureRegressor

    return GaussianProcessMixtureRegressor(random_state=seed).fit(X, y).gp_


def select_uncertain(
    pool: np.ndarray, X: np.ndarray, y: np.ndarray, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy batch of `n` pool rows with the largest GP posterior variance, each pick conditioning
    the next (the variance does not depend on the unseen losses, so this is exact, not a guess).

    Returns the chosen row indices and each one's predictive std at the moment it was picked."""
    if n > len(pool):
        raise ValueError(f"pool of {len(pool)} candidates is smaller than n={n}")
    gp = gp_uncertainty(X, y, seed)
    kernel = gp.kernel_
    train = gp.X_train_
    noise = kernel.k2.noise_level if hasattr(kernel, "k2") else 0.0
    scale = float(np.std(y)) or 1.0  # normalize_y divides the targets by this
    chosen: list[int] = []
    stds: list[float] = []
    for _ in range(n):
        points = np.vstack([train, pool[chosen]]) if chosen else train
        K = kernel(points) + 1e-10 * np.eye(len(points))
        cross = kernel(pool, points)
        solve = np.linalg.solve(K, cross.T)
        variance = kernel.diag(pool) - noise - np.einsum("ij,ji->i", cross, solve)
        variance[chosen] = -np.inf
        pick = int(np.argmax(variance))
        chosen.append(pick)
        stds.append(float(np.sqrt(max(variance[pick], 0.0)) * scale))
    return np.array(chosen, dtype=int), np.array(stds)


def _renumber(frame: pd.DataFrame, taken: set[str], start: int) -> pd.DataFrame:
    """Mixture ids from `start` on (after the existing swarm's) that collide with none of `taken`."""
    from mixer.sampler import MIXTURE_ID_PREFIX

    width = max(4, len(str(start + len(frame))))
    ids: list[str] = []
    i = start
    while len(ids) < len(frame):
        name = f"{MIXTURE_ID_PREFIX}{i:0{width}d}"
        if name not in taken:
            ids.append(name)
        i += 1
    return frame.assign(mixture=ids).reset_index(drop=True)


def _most_uncertain(
    frame: pd.DataFrame, table: pd.DataFrame, domains: list[str], target: str, n: int, seed: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The `n` candidates of `frame` a GP fitted to the finished runs of `table` is least sure of."""
    if target not in table.columns:
        raise ValueError(f"existing runs have no target column {target!r}")
    size: dict[str, Any] = {}
    if N in table.columns and table[N].nunique() > 1:
        # Losses of different model sizes are different targets: fit the size with the most runs.
        counts = table[N].value_counts()
        chosen_size = min(counts.index[counts == counts.max()])
        table, size = table[table[N] == chosen_size], {"gp_N": float(chosen_size)}
    columns = {domain_name(c): c for c in table.columns if str(c).startswith(WEIGHT_PREFIX)}
    X = np.column_stack(
        [table[columns[d]].to_numpy(float) if d in columns else np.zeros(len(table)) for d in domains]
    )
    y = pd.to_numeric(table[target], errors="coerce").to_numpy(float)
    done = np.isfinite(y)  # runs still training have no loss yet: they repel new mixtures, unfitted
    if done.sum() < 2:
        raise ValueError(f"existing runs: fewer than 2 have a numeric {target!r}")
    chosen, stds = select_uncertain(
        frame[[WEIGHT_PREFIX + d for d in domains]].to_numpy(), X[done], y[done], n, seed
    )
    summary = {
        "n_fitted": int(done.sum()),
        "gp_std_mean": float(stds.mean()),
        "gp_std_min": float(stds.min()),
        **size,
    }
    return frame.iloc[chosen].assign(gp_std=stds), summary


def _nearest_existing(new: np.ndarray, matrix: np.ndarray) -> float:
    """The smallest L1 distance from a new mixture to an existing run (whose last column is its
    weight on other domains)."""
    return float(
        min((np.abs(row[None, :] - matrix[:, :-1]).sum(axis=1) + matrix[:, -1]).min() for row in new)
    )


def propose_swarm(
    n: int,
    tokens: dict[str, float] | None = None,
    tree: DomainTree | None = None,
    existing: str | os.PathLike[str] | pd.DataFrame | None = None,
    min_distance: float | None = None,
    uncertainty_target: str | None = None,
    nonzero: Sequence[str] = (),
    proxy_tokens: float = 1e9,
    seed: int = 0,
    **sampler_options: Any,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Proposals (`mixture`, `h_<domain>`, `epochs_<domain>`, `max_epochs`, and `gp_std` when
    targeting uncertainty) over the flat domains of `tokens` or the leaves of `tree`, and a summary:
    the distance threshold used and the nearest existing run. `sampler_options` go to the sampler."""
    from mixer.sampler import epochs_table, propose_mixtures
    from mixer.tree import propose_tree_mixtures

    counts = tree.leaf_tokens(tokens) if tree is not None else dict(tokens or {})
    domains = list(counts)
    matrix, table, radius = None, None, 0.0
    if existing is not None:
        matrix, table = existing_matrix(existing, domains)
        radius = float(min_distance) if min_distance is not None else default_radius(matrix)
    elif uncertainty_target:
        raise ValueError("targeting uncertainty needs --existing runs with that target column")
    draws = n * POOL_FACTOR if uncertainty_target else n
    options = {
        "existing": matrix,
        "min_distance": radius,
        "nonzero": nonzero,
        "seed": seed,
        "proxy_tokens": proxy_tokens,
        **sampler_options,
    }
    if tree is not None:
        frame = propose_tree_mixtures(tree, draws, tokens=counts, **options)
    else:
        frame = propose_mixtures(counts, draws, **options)
    summary: dict[str, Any] = {
        "n_candidates": len(frame),
        "n_projected": int(frame.attrs.get("n_projected", 0)),
    }
    if matrix is not None and table is not None:
        frame, beside = _beside_existing(frame, matrix, table, domains, radius, uncertainty_target, n, seed)
        summary.update(beside)
    frame = frame.reset_index(drop=True)
    return pd.concat([frame, epochs_table(frame, counts, proxy_tokens)], axis=1), summary


def _beside_existing(
    frame: pd.DataFrame,
    matrix: np.ndarray,
    table: pd.DataFrame,
    domains: list[str],
    radius: float,
    uncertainty_target: str | None,
    n: int,
    seed: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The proposals to run beside the existing ones (with `uncertainty_target`, the `n` the GP is
    least sure of), numbered after them, each checked to lie beyond `radius`; and their summary."""
    from mixer.sampler import outside_radius

    summary: dict[str, Any] = {}
    if uncertainty_target:
        frame, summary = _most_uncertain(frame, table, domains, uncertainty_target, n, seed)
    taken = set(table["mixture"].astype(str)) if "mixture" in table.columns else set()
    frame = _renumber(frame, taken, max(len(taken), len(matrix)))
    new = frame[[WEIGHT_PREFIX + d for d in domains]].to_numpy()
    if not outside_radius(new, matrix, radius).all():
        raise RuntimeError("a proposal lies within the distance threshold of an existing run")
    summary.update(
        min_distance=radius, n_existing=len(matrix), nearest_existing_l1=_nearest_existing(new, matrix)
    )
    return frame, summary
