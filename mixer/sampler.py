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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixer.budget import epoch_caps
from mixer.files import atomic_path, write_parquet
from mixer.mixture import check_known, nonnegative_number, write_mixture
from mixer.runs import WEIGHT_PREFIX, domain_name
from mixer.simplex import check_bounds

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
EPOCHS_PREFIX = "epochs_"


def token_shares(tokens: Mapping[str, float]) -> dict[str, float]:
    """Domain -> share of all tokens; errors name a negative or non-finite count."""
    if not tokens:
        raise ValueError("no domains in the token table")
    counts = {d: nonnegative_number(c, f"domain {d!r}: token count") for d, c in tokens.items()}
    total = float(sum(counts.values()))
    if total <= 0:
        raise ValueError("token counts sum to 0")
    return {d: c / total for d, c in counts.items()}


def tempered_prior(shares: np.ndarray, temperature: float = TEMPERATURE) -> np.ndarray:
    """share ** temperature, renormalised (temperature < 1 flattens a skewed prior)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    prior = np.asarray(shares, dtype=float) ** temperature
    return prior / prior.sum()


def domain_caps(
    tokens: Mapping[str, float], proxy_tokens: float = PROXY_TOKENS, max_epochs: float = MAX_EPOCHS
) -> dict[str, float]:
    """Per-domain maximum weight of a proxy run: `mixer.budget.epoch_caps` at RegMix's defaults,
    not yet checked for feasibility (given caps may replace some; the whole box is checked after)."""
    return epoch_caps(proxy_tokens, tokens, max_epochs, feasible=False)


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
    out = lower + room  # rows whose caps sum below 1 (infeasible) end at their caps
    settled = np.zeros(len(weights), dtype=bool)
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
        # A row is done once no free domain overflows; rows still overflowing go another pass.
        done = ~settled & ~over.any(axis=1)
        out[done] = (lower + np.where(at_cap, room, np.where(free, extra, 0)))[done]
        settled |= done
        if settled.all():
            break
        at_cap |= over
        free &= ~over
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


def zero_small(weights: np.ndarray, lower: np.ndarray, upper: np.ndarray, min_weight: float) -> np.ndarray:
    """Zero weights under `min_weight` (where no floor forbids it) and re-spread their mass."""
    small = (weights < min_weight) & (lower <= 0)
    capped_upper = np.where(small, 0.0, upper)
    feasible = capped_upper.sum(axis=1) >= 1 - 1e-12
    out = weights.copy()
    rows = feasible & small.any(axis=1)
    if rows.any():
        out[rows] = box_simplex_projection(
            np.where(small[rows], 0.0, weights[rows]),
            np.broadcast_to(lower, weights.shape)[rows],
            capped_upper[rows],
        )
    return out


def dedupe(candidates: np.ndarray, accepted: np.ndarray, threshold: float) -> np.ndarray:
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


def outside_radius(rows: np.ndarray, existing: np.ndarray | None, min_distance: float) -> np.ndarray:
    """Mask of `rows` farther than `min_distance` (L1) from every row of `existing`.

    `existing` has the same domain columns as `rows`, plus optionally one last column holding each
    run's weight on domains outside `rows` (which adds to its distance from every new row).
    """
    if existing is None or len(existing) == 0 or min_distance <= 0:
        return np.ones(len(rows), dtype=bool)
    width = rows.shape[1]
    other = existing[:, width] if existing.shape[1] > width else np.zeros(len(existing))
    keep = np.ones(len(rows), dtype=bool)
    for start in range(0, len(rows), 256):  # bounded memory: 256 x runs x domains at a time
        block = rows[start : start + 256]
        dist = np.abs(block[:, None, :] - existing[None, :, :width]).sum(axis=2) + other[None, :]
        keep[start : start + 256] = dist.min(axis=1) > min_distance
    return keep


def epochs_table(frame: pd.DataFrame, tokens: Mapping[str, float], proxy_tokens: float) -> pd.DataFrame:
    """Epochs each proposal reads of each domain (weight x proxy tokens / available tokens):
    `epochs_<domain>` columns and `max_epochs`, Olmix's repetition factor before its floor of 1."""
    weights = frame[[c for c in frame.columns if str(c).startswith(WEIGHT_PREFIX)]]
    out = pd.DataFrame(index=frame.index)
    for column in weights.columns:
        available = float(tokens[domain_name(column)])
        need = weights[column].to_numpy(dtype=float) * proxy_tokens
        out[EPOCHS_PREFIX + domain_name(column)] = np.where(need > 0, need / max(available, 1e-300), 0.0)
    out["max_epochs"] = out.max(axis=1)
    return out


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
    nonzero: Sequence[str] = (),
    existing: np.ndarray | None = None,
    min_distance: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """`n` distinct proxy mixtures: columns `mixture` (mix-0000, ...) and `h_<domain>`.

    `caps` overrides the token-derived caps per domain; `floors` sets per-domain minimum weights;
    `nonzero` domains get a floor of `min_weight` (so they are never zeroed). `existing` runs
    (see `outside_radius`) keep every new mixture farther than `min_distance` (L1) from them.
    `round_to` defaults to `min_weight` (RegMix rounds to the same grid); 0 disables rounding.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 < min_concentration <= max_concentration:
        raise ValueError("need 0 < min_concentration <= max_concentration")
    domains = list(tokens)
    shares = np.array([token_shares(tokens)[d] for d in domains])
    step = min_weight if round_to is None else round_to
    cap_map = {**domain_caps(tokens, proxy_tokens, max_epochs), **dict(caps or {})}
    lower, upper = _bounds(domains, cap_map, floors, nonzero, min_weight, step)
    prior = np.where(shares > 0, tempered_prior(np.maximum(shares, 1e-300), temperature), 0.0)
    # A domain with no tokens can take no weight; keep its concentration positive for the draw.
    prior = np.maximum(prior, 1e-12)
    rng = np.random.default_rng(seed)
    log_s = (math.log(min_concentration), math.log(max_concentration))

    def draw(batch: int, rejecting: bool) -> tuple[np.ndarray, np.ndarray]:
        return _draw_batch(rng, prior, log_s, lower, upper, min_weight, step, batch, rejecting)

    advice = "the caps, floors and rounding leave too few; lower n, min_weight or dedup_l1"
    return collect_proposals(draw, n, domains, dedup_l1, existing, min_distance, advice)


def _bounds(
    domains: list[str],
    cap_map: Mapping[str, float],
    floors: Mapping[str, float] | None,
    nonzero: Sequence[str],
    min_weight: float,
    step: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-domain floors and caps of the proposals (on the rounding grid when `step` > 0)."""
    check_known(cap_map, domains, "cap", "token table")
    check_known(floors or {}, domains, "floor", "token table")
    check_known(nonzero, domains, "--nonzero", "token table")
    floors = {
        **dict(floors or {}),
        **{d: max(float((floors or {}).get(d, 0.0)), min_weight or MIN_WEIGHT) for d in nonzero},
    }
    upper = np.array([float(cap_map[d]) for d in domains])
    lower = np.array([float((floors or {}).get(d, 0.0)) for d in domains])
    if step and step > 0:
        # Bounds on the rounding grid keep rounded rows inside them.
        upper = np.floor(upper / step + 1e-9) * step
        lower = np.ceil(lower / step - 1e-9) * step
    check_bounds(lower, upper, domains)
    return lower, upper


def _draw_batch(
    rng: np.random.Generator,
    prior: np.ndarray,
    log_s: tuple[float, float],
    lower: np.ndarray,
    upper: np.ndarray,
    min_weight: float,
    step: float,
    batch: int,
    rejecting: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """RegMix's draw: Dirichlet(prior x s), log s uniform in `log_s`; while `rejecting`, only the
    rows inside the bounds, else every row projected into them; then small weights zeroed and
    rows rounded. Returns the rows and whether each was drawn inside the bounds."""
    strength = np.exp(rng.uniform(log_s[0], log_s[1], size=batch))
    draws = sample_dirichlet(prior[None, :] * strength[:, None], rng)
    inside = np.all((draws <= upper + 1e-12) & (draws >= lower - 1e-12), axis=1)
    rows = draws[inside] if rejecting else box_simplex_projection(draws, lower, upper)
    if min_weight > 0:
        rows = zero_small(rows, lower, upper, min_weight)
    if step and step > 0:
        rows = round_to_grid(rows, step)
    return rows, inside[inside] if rejecting else inside


def collect_proposals(
    draw: Callable[[int, bool], tuple[np.ndarray, np.ndarray]],
    n: int,
    domains: Sequence[str],
    dedup_l1: float,
    existing: np.ndarray | None,
    min_distance: float,
    advice: str,
) -> pd.DataFrame:
    """The proposals table of the first `n` distinct rows drawn in batches by `draw(batch, rejecting)`.

    `draw` returns rows on the simplex and whether each was drawn inside the bounds: while
    `rejecting` (RegMix's budget of SAMPLE_MULTIPLIER x n draws, which keeps RegMix's distribution)
    only those, after that every row, projected into the bounds. A row is kept when it lies farther
    than `min_distance` (L1) from every `existing` run and `dedup_l1` from every row kept before;
    ValueError, ending with `advice`, when MAX_BATCHES batches leave fewer than `n`.
    """
    accepted = np.empty((0, len(domains)))
    batch = max(2 * n, 64)
    n_projected = 0
    for i in range(MAX_BATCHES):
        rows, inside = draw(batch, i * batch < SAMPLE_MULTIPLIER * n)
        far = outside_radius(rows, existing, min_distance)
        rows, inside = rows[far], inside[far]
        kept = dedupe(rows, accepted, dedup_l1)[: n - len(accepted)]
        n_projected += int((~inside[kept]).sum())
        accepted = np.vstack([accepted, rows[kept]])
        if len(accepted) >= n:
            return proposals_frame(accepted[:n], list(domains), n_projected)
    raise ValueError(f"only {len(accepted)} distinct mixtures found for n={n}: {advice}")


def proposals_frame(weights: np.ndarray, domains: list[str], n_projected: int) -> pd.DataFrame:
    """The proposals table: `mixture` ids (`mix-0000`, ...) and one `h_<domain>` column per domain;
    `attrs["n_projected"]` counts the rows that were projected into the caps."""
    width = max(4, len(str(len(weights) - 1)))
    frame = pd.DataFrame(weights, columns=[WEIGHT_PREFIX + d for d in domains])
    frame.insert(0, "mixture", [f"{MIXTURE_ID_PREFIX}{i:0{width}d}" for i in range(len(weights))])
    frame.attrs["n_projected"] = n_projected
    return frame


def write_proposals(
    frame: pd.DataFrame, out: str | os.PathLike[str], provenance: Mapping[str, Any] | None = None
) -> Path:
    """Write the directory `out` whole: `proposals.parquet` and one mixture file per proposal in
    `mixtures/` (the `h_*` weights; with `epochs_*` columns, each domain's epochs in its provenance),
    replacing only an earlier output of datamixer there."""
    out = Path(out)
    columns = [c for c in frame.columns if str(c).startswith(WEIGHT_PREFIX)]
    epochs = [c for c in frame.columns if str(c).startswith(EPOCHS_PREFIX)]
    with atomic_path(out) as tmp:
        (tmp / "mixtures").mkdir(parents=True)
        write_parquet(tmp / "proposals.parquet", frame)
        for _, row in frame.iterrows():
            weights = {domain_name(c): float(row[c]) for c in columns}
            extra = {"epochs": {c[len(EPOCHS_PREFIX) :]: round(float(row[c]), 6) for c in epochs}}
            write_mixture(
                tmp / "mixtures" / f"{row['mixture']}.yaml",
                weights,
                {**(provenance or {}), "mixture": row["mixture"], **(extra if epochs else {})},
            )
    return out / "proposals.parquet"
