"""Proxy mixtures for RegMix: capped Dirichlet draws around a tempered token prior.

RegMix (Liu et al. 2024, `mixture_config/synthesize_mixture.py`) draws each proxy mixture from
Dirichlet(prior * s), where the prior is the domains' token share raised to a temperature and
the concentration s is log-uniform in [0.1, 5]; it rejects draws above a per-domain cap
(max epochs x domain tokens / training tokens), zeroes weights below a minimum, rounds to
multiples of that minimum and removes near-duplicates. Rejection can accept nothing when a cap or
a floor is tight (sail-sg/regmix issue #10). Here rejection runs for RegMix's budget of 100 x n
draws (so where it works the mixtures follow RegMix's distribution); after that, draws outside the
bounds are mapped into them (`box_simplex_projection`), so the count asked for is always the
count returned. `frame.attrs["n_projected"]` counts the mixtures that came from the mapping.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixer.files import atomic_path, write_parquet
from mixer.mixture import write_mixture
from mixer.runs import WEIGHT_PREFIX, domain_name

# RegMix's published sampler settings.
TEMPERATURE = 0.5
MIN_CONCENTRATION = 0.1
MAX_CONCENTRATION = 5.0
MAX_EPOCHS = 15.0
MIN_WEIGHT = 2e-4
PROXY_TOKENS = 1e9
DEDUP_L1 = 1e-5
SAMPLE_MULTIPLIER = 100  # RegMix draws up to 100 x n candidates for its rejection step
MAX_BATCHES = 400
MIXTURE_ID_PREFIX = "mix-"


def token_shares(tokens: Mapping[str, float]) -> dict[str, float]:
    """Domain -> share of all tokens; errors name a negative or non-finite count."""
    if not tokens:
        raise ValueError("no domains in the token table")
    for domain, count in tokens.items():
        if not math.isfinite(float(count)) or float(count) < 0:
            raise ValueError(f"domain {domain!r}: token count {count!r} must be finite and >= 0")
    total = float(sum(float(c) for c in tokens.values()))
    if total <= 0:
        raise ValueError("token counts sum to 0")
    return {d: float(c) / total for d, c in tokens.items()}


def tempered_prior(shares: np.ndarray, temperature: float = TEMPERATURE) -> np.ndarray:
    """share ** temperature, renormalised (temperature < 1 flattens a skewed prior)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    prior = np.asarray(shares, dtype=float) ** temperature
    return prior / prior.sum()


def domain_caps(
    tokens: Mapping[str, float], proxy_tokens: float = PROXY_TOKENS, max_epochs: float = MAX_EPOCHS
) -> dict[str, float]:
    """Per-domain maximum weight: max_epochs x domain tokens / proxy training tokens, at most 1."""
    if proxy_tokens <= 0 or max_epochs <= 0:
        raise ValueError("proxy_tokens and max_epochs must be > 0")
    return {d: min(1.0, max_epochs * float(c) / proxy_tokens) for d, c in tokens.items()}


def sample_dirichlet(alpha: np.ndarray, rng: np.random.Generator, dtype: type = np.float64) -> np.ndarray:
    """One Dirichlet draw per row of `alpha` (rows x domains), safe for tiny concentrations.

    Gamma(a) for a << 1 underflows to 0 in floating point and can zero a whole row; drawing
    log Gamma(a) = log Gamma(a + 1) + log(U) / a and normalising in log space cannot.
    """
    alpha = np.asarray(alpha, dtype=float)
    if np.any(~np.isfinite(alpha)) or np.any(alpha <= 0):
        raise ValueError("Dirichlet concentrations must be finite and > 0")
    log_gamma = np.log(rng.standard_gamma(alpha + 1.0)) + np.log(rng.random(alpha.shape)) / alpha
    log_gamma -= log_gamma.max(axis=1, keepdims=True)
    weights = np.exp(log_gamma)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(dtype, copy=False)


def check_bounds(lower: np.ndarray, upper: np.ndarray, domains: list[str] | None = None) -> None:
    """Raise ValueError unless 0 <= lower <= upper <= 1 per domain and sum(lower) <= 1 <= sum(upper)."""
    names = domains or [str(i) for i in range(len(lower))]
    for name, lo, hi in zip(names, lower, upper, strict=True):
        if not (0 <= lo <= hi <= 1):
            raise ValueError(f"domain {name!r}: need 0 <= floor ({lo:g}) <= cap ({hi:g}) <= 1")
    if lower.sum() > 1 + 1e-9:
        raise ValueError(f"floors sum to {lower.sum():.4f} > 1: no mixture satisfies them")
    if upper.sum() < 1 - 1e-9:
        raise ValueError(
            f"caps sum to {upper.sum():.4f} < 1: not enough tokens for any mixture; "
            "raise max_epochs or lower the training tokens"
        )


def box_simplex_projection(weights: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Map each row of `weights` (on the simplex) into {lower <= w <= upper, sum w = 1}.

    Water-filling: w_i = clip(lower_i + t * x_i, lower_i, upper_i) with one scale t per row chosen
    so the row sums to 1, where x is the draw. With no floors, rows under every cap come back
    unchanged; caps that bind are met exactly. Requires sum(lower) <= 1 <= sum(upper).
    """
    weights = np.asarray(weights)
    lower = np.broadcast_to(np.asarray(lower, dtype=weights.dtype), weights.shape)
    upper = np.broadcast_to(np.asarray(upper, dtype=weights.dtype), weights.shape)
    room = upper - lower
    free = np.ones(weights.shape, dtype=bool)
    at_cap = np.zeros(weights.shape, dtype=bool)
    out = lower.copy()
    # Each pass fixes at least one more domain at its cap, so `n_domains` passes suffice.
    for _ in range(weights.shape[1]):
        budget = 1.0 - lower.sum(axis=1) - np.where(at_cap, room, 0).sum(axis=1)
        mass = np.where(free, weights, 0).sum(axis=1)
        # A row whose free domains all drew 0 shares its budget evenly among them.
        even = mass <= 0
        basis = np.where(even[:, None], free.astype(weights.dtype), np.where(free, weights, 0))
        basis_mass = basis.sum(axis=1)
        with np.errstate(over="ignore", invalid="ignore"):
            scale = np.divide(budget, basis_mass, out=np.zeros_like(budget), where=basis_mass > 0)
            extra = np.nan_to_num(basis * scale[:, None], nan=0.0, posinf=np.inf)
        over = free & (extra > room)
        if not over.any():
            out = lower + np.where(at_cap, room, np.where(free, extra, 0))
            break
        at_cap |= over
        free &= ~over
    else:
        out = lower + np.where(at_cap, room, 0)
    return out


def round_to_grid(weights: np.ndarray, step: float) -> np.ndarray:
    """Round rows to multiples of `step` that still sum to 1 (largest remainder).

    A weight on or under a cap that lies on the grid stays on or under it, because each entry
    moves only to the grid point just below or just above it.
    """
    units = round(1.0 / step)
    if abs(units * step - 1.0) > 1e-9:
        raise ValueError(f"rounding step {step} must divide 1 (e.g. 2e-4, 1e-3)")
    scaled = np.asarray(weights, dtype=float) * units
    floor = np.floor(scaled + 1e-9)
    remainder = np.where(scaled - floor > 1e-9, scaled - floor, -1.0)
    missing = (units - floor.sum(axis=1)).round().astype(int)
    order = np.argsort(-remainder, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(weights.shape[1])[None, :].repeat(len(weights), 0), axis=1)
    floor += rank < missing[:, None]
    return floor / units


def _zero_small(weights: np.ndarray, lower: np.ndarray, upper: np.ndarray, min_weight: float) -> np.ndarray:
    """Zero weights under `min_weight` (where no floor forbids it) and re-spread their mass."""
    small = (weights < min_weight) & (lower <= 0)
    capped_upper = np.where(small, 0.0, upper)
    feasible = capped_upper.sum(axis=1) >= 1 - 1e-12
    out = weights.copy()
    rows = feasible & small.any(axis=1)
    if rows.any():
        out[rows] = box_simplex_projection(
            np.where(small[rows], 0.0, weights[rows]), np.broadcast_to(lower, weights.shape)[rows],
            capped_upper[rows],
        )
    return out


def _dedupe(candidates: np.ndarray, accepted: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of `candidates` farther than `threshold` (L1) from `accepted` and earlier picks."""
    pool = np.vstack([accepted, np.empty_like(candidates)])
    size = len(accepted)
    kept = []
    for i, row in enumerate(candidates):
        if size and np.abs(pool[:size] - row).sum(axis=1).min() <= threshold:
            continue
        pool[size] = row
        size += 1
        kept.append(i)
    return np.array(kept, dtype=int)


def propose_mixtures(
    tokens: Mapping[str, float],
    n: int,
    proxy_tokens: float = PROXY_TOKENS,
    max_epochs: float = MAX_EPOCHS,
    temperature: float = TEMPERATURE,
    min_concentration: float = MIN_CONCENTRATION,
    max_concentration: float = MAX_CONCENTRATION,
    min_weight: float = MIN_WEIGHT,
    round_to: float | None = None,
    dedup_l1: float = DEDUP_L1,
    floors: Mapping[str, float] | None = None,
    caps: Mapping[str, float] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """`n` distinct proxy mixtures: columns `mixture` (mix-0000, ...) and `h_<domain>`.

    `caps` overrides the token-derived caps per domain; `floors` sets per-domain minimum weights.
    `round_to` defaults to `min_weight` (RegMix rounds to the same grid); 0 disables rounding.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 < min_concentration <= max_concentration:
        raise ValueError("need 0 < min_concentration <= max_concentration")
    domains = list(tokens)
    shares = np.array([token_shares(tokens)[d] for d in domains])
    cap_map = {**domain_caps(tokens, proxy_tokens, max_epochs), **dict(caps or {})}
    _check_known(cap_map, domains, "cap")
    _check_known(floors or {}, domains, "floor")
    upper = np.array([float(cap_map[d]) for d in domains])
    lower = np.array([float((floors or {}).get(d, 0.0)) for d in domains])
    step = min_weight if round_to is None else round_to
    if step and step > 0:
        # Bounds on the rounding grid keep rounded rows inside them.
        upper = np.floor(upper / step + 1e-9) * step
        lower = np.ceil(lower / step - 1e-9) * step
    check_bounds(lower, upper, domains)
    prior = np.where(shares > 0, tempered_prior(np.maximum(shares, 1e-300), temperature), 0.0)
    # A domain with no tokens can take no weight; keep its concentration positive for the draw.
    prior = np.maximum(prior, 1e-12)
    rng = np.random.default_rng(seed)
    accepted = np.empty((0, len(domains)))
    batch = max(2 * n, 64)
    drawn = n_projected = 0
    for _ in range(MAX_BATCHES):
        log_s = rng.uniform(math.log(min_concentration), math.log(max_concentration), size=batch)
        draws = sample_dirichlet(prior[None, :] * np.exp(log_s)[:, None], rng)
        # RegMix's rejection step while the draw budget lasts (it keeps RegMix's distribution);
        # after that, draws outside the bounds are moved inside so the count is always met.
        rejecting = drawn < SAMPLE_MULTIPLIER * n
        drawn += batch
        inside = ((draws <= upper + 1e-12) & (draws >= lower - 1e-12)).all(axis=1)
        rows = draws[inside] if rejecting else box_simplex_projection(draws, lower, upper)
        if min_weight > 0:
            rows = _zero_small(rows, lower, upper, min_weight)
        if step and step > 0:
            rows = round_to_grid(rows, step)
        kept = _dedupe(rows, accepted, dedup_l1)[: n - len(accepted)]
        if not rejecting:
            n_projected += int((~inside[kept]).sum())
        accepted = np.vstack([accepted, rows[kept]])
        if len(accepted) >= n:
            break
    else:
        raise ValueError(
            f"only {len(accepted)} distinct mixtures found for n={n}: the caps, floors and rounding "
            "leave too few; lower n, min_weight or dedup_l1"
        )
    width = max(4, len(str(n - 1)))
    frame = pd.DataFrame(accepted[:n], columns=[WEIGHT_PREFIX + d for d in domains])
    frame.insert(0, "mixture", [f"{MIXTURE_ID_PREFIX}{i:0{width}d}" for i in range(n)])
    frame.attrs["n_projected"] = n_projected
    return frame


def _check_known(mapping: Mapping[str, float], domains: list[str], what: str) -> None:
    unknown = sorted(set(mapping) - set(domains))
    if unknown:
        raise ValueError(f"{what} given for unknown domain(s) {unknown}; domains are {domains}")


def write_proposals(
    frame: pd.DataFrame, out: str | os.PathLike[str], provenance: Mapping[str, Any] | None = None
) -> Path:
    """Write the directory `out` whole: `proposals.parquet` and one mixture file per proposal in
    `mixtures/` (replacing only an earlier output of datamixer there)."""
    out = Path(out)
    columns = [c for c in frame.columns if c != "mixture"]
    with atomic_path(out) as tmp:
        (tmp / "mixtures").mkdir(parents=True)
        write_parquet(tmp / "proposals.parquet", frame)
        for row in frame.itertuples(index=False):
            weights = {domain_name(c): float(v) for c, v in zip(columns, row[1:], strict=True)}
            mixture = {**(provenance or {}), "mixture": row[0]}
            write_mixture(tmp / "mixtures" / f"{row[0]}.yaml", weights, mixture)
    return out / "proposals.parquet"
