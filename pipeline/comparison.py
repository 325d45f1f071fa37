"""The demo's claim, checked: the chosen mixture against natural and uniform at the target size.

Pure functions over small tables: the seed noise of the measured losses, the gain over each
baseline (predicted and measured, with a verdict against the noise), how far the other
optimiser's choice lies, and the warnings a reader needs before trusting the numbers. The demo
writes their result as `comparison.json`; the report's headline reads that file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

CHOSEN = "optimized"
BASELINES = ("natural", "uniform")
NOISE_MULTIPLE = 2.0  # a gain counts when it exceeds this many standard errors of the seed noise
LOW_SPEARMAN = 0.8
CAP_TOLERANCE = 1e-6


def measured_by_seed(final: pd.DataFrame) -> pd.DataFrame:
    """Final loss per (mixture, seed) from one row per trained target model."""
    return final.pivot_table(index="mixture", columns="seed", values="loss", aggfunc="first")


def seed_noise(losses: pd.DataFrame) -> float:
    """Pooled standard deviation of one model's loss across seeds (each mixture's spread about its
    own mean, ddof=1 per mixture). NaN with fewer than two seeds."""
    deviations = losses.sub(losses.mean(axis=1), axis=0).to_numpy(dtype=float)
    counts = losses.notna().sum(axis=1).to_numpy()
    dof = int(np.sum(np.maximum(counts - 1, 0)))
    return float(math.sqrt(np.nansum(deviations**2) / dof)) if dof else float("nan")


def gain(
    predictions: pd.DataFrame, losses: pd.DataFrame, noise: float | None, baseline: str, chosen: str = CHOSEN
) -> dict[str, Any]:
    """Loss of `baseline` minus loss of `chosen` (positive: the chosen mixture is better), predicted
    and measured, with the standard error of the measured gain from the seed noise and a verdict."""
    pred = predictions.set_index("mixture")["predicted"]
    out: dict[str, Any] = {"baseline": baseline, "predicted": float(pred[baseline] - pred[chosen])}
    if chosen not in losses.index or baseline not in losses.index:
        return {**out, "measured": None, "stderr": None, "beats": None}
    n_chosen, n_base = losses.loc[chosen].notna().sum(), losses.loc[baseline].notna().sum()
    measured = float(losses.loc[baseline].mean() - losses.loc[chosen].mean())
    if noise is None or not math.isfinite(noise):
        return {**out, "measured": measured, "stderr": None, "beats": None}
    stderr = noise * math.sqrt(1 / n_chosen + 1 / n_base)
    return {**out, "measured": measured, "stderr": stderr, "beats": bool(measured > NOISE_MULTIPLE * stderr)}


def gain_sentence(g: Mapping[str, Any], chosen: str = CHOSEN) -> str:
    """One plain sentence: did the chosen mixture beat the baseline by more than the seed noise?"""
    base = g["baseline"]
    if g["measured"] is None:
        return f"{chosen} vs {base}: not trained; predicted gain {g['predicted']:+.4f} nats."
    figures = f"measured gain {g['measured']:+.4f} nats (predicted {g['predicted']:+.4f})"
    if g["stderr"] is None:
        return f"{chosen} vs {base}: {figures}; one seed only, so no noise estimate."
    figures += f", seed noise ±{g['stderr']:.4f} (1 s.e.)"
    if g["beats"]:
        return f"{chosen} beat {base} by more than the seed noise: {figures}."
    verdict = "worse than" if g["measured"] < -NOISE_MULTIPLE * g["stderr"] else "no better than"
    return f"{chosen} was {verdict} {base} beyond the seed noise: {figures}."


def disagreement(
    chosen_by: str,
    chosen: Mapping[str, float],
    other_by: str,
    other: Mapping[str, float],
    predicted: Mapping[str, float],
) -> dict[str, Any]:
    """How far the other optimiser's mixture is from the chosen one: L1 distance, the domain that
    differs most, and both predicted at the target (`predicted` maps `chosen_by`/`other_by` to loss)."""
    domains = sorted(set(chosen) | set(other))
    diff = {d: float(other.get(d, 0.0) - chosen.get(d, 0.0)) for d in domains}
    widest = max(domains, key=lambda d: abs(diff[d]))
    loss_gap = float(predicted[other_by] - predicted[chosen_by])
    l1 = sum(map(abs, diff.values()))
    text = (
        f"{chosen_by} chose the mixture. {other_by[:1].upper() + other_by[1:]}'s optimum is {l1:.2f} "
        f"away in L1 (largest: {widest} {chosen.get(widest, 0.0):.2f} vs {other.get(widest, 0.0):.2f}); "
        f"at the target the law predicts {predicted[chosen_by]:.4f} for {chosen_by}'s and "
        f"{predicted[other_by]:.4f} for {other_by}'s ({loss_gap:+.4f} nats)."
    )
    return {
        "chosen_by": chosen_by,
        "other_by": other_by,
        "l1": float(l1),
        "largest_difference": widest,
        "difference": diff,
        "predicted": dict(predicted),
        "predicted_gap": loss_gap,
        "text": text,
    }


def extrapolation_warnings(
    law_data: Mapping[str, Any], target_n: float, target_d: float, mixtures: Mapping[str, Mapping[str, float]]
) -> list[str]:
    """Where the target sits outside the (N, D, h) region the law was fitted on."""
    out = []
    n_max, d_max = max(law_data["N_range"]), max(law_data["D_range"])
    if target_n > n_max or target_d > d_max:
        out.append(
            f"extrapolation: the target (N={target_n:,.0f}, D={target_d:,.0f}) is "
            f"{target_n / n_max:.1f}x the largest proxy in N and {target_d / d_max:.1f}x in D"
        )
    h_range = law_data.get("h_range", {})
    for name, weights in mixtures.items():
        outside = [
            f"{d} {w:.2f} not in [{h_range[d][0]:.2f}, {h_range[d][1]:.2f}]"
            for d, w in sorted(weights.items())
            if d in h_range and not h_range[d][0] - 1e-9 <= w <= h_range[d][1] + 1e-9
        ]
        if outside:
            out.append(f"extrapolation: {name} lies outside the proxies' mixtures ({'; '.join(outside)})")
    return out


def cap_warnings(
    mixture: Mapping[str, float], caps: Mapping[str, float] | None, name: str = CHOSEN
) -> list[str]:
    """Domains whose weight sits at its data-budget cap (the optimiser wanted more of them)."""
    caps = caps or {}
    capped = sorted(d for d, c in caps.items() if c < 1 and mixture.get(d, 0.0) >= c - CAP_TOLERANCE)
    return [
        f"data budget: {name} has {d} at its cap {caps[d]:.3f} (more would repeat it past the epoch limit)"
        for d in capped
    ]


def spearman_warnings(spearman: float | None, runs: int | None = None) -> list[str]:
    """A RegMix regressor whose cross-validated rank correlation is too low to trust its choice."""
    if spearman is None or not math.isfinite(spearman) or spearman >= LOW_SPEARMAN:
        return []
    on = f" on {runs} proxy runs" if runs else ""
    return [
        f"low CV Spearman: RegMix's out-of-fold Spearman is {spearman:.2f}{on} (below {LOW_SPEARMAN}); "
        "its ranking of mixtures is unreliable"
    ]


def compare(
    predictions: pd.DataFrame, final: pd.DataFrame | None, baselines: Sequence[str] = BASELINES
) -> dict[str, Any]:
    """Predicted vs measured per mixture (mean and per-seed) and the gain over each baseline."""
    losses = measured_by_seed(final) if final is not None and not final.empty else pd.DataFrame()
    spread = seed_noise(losses) if not losses.empty else float("nan")
    noise = spread if math.isfinite(spread) else None
    rows = []
    for row in predictions.to_dict("records"):
        seeds = losses.loc[row["mixture"]].dropna() if row["mixture"] in losses.index else pd.Series()
        rows.append(
            {
                "mixture": row["mixture"],
                "predicted": float(row["predicted"]),
                "low": float(row["low"]),
                "high": float(row["high"]),
                "measured": float(seeds.mean()) if len(seeds) else None,
                "measured_seeds": {str(int(k)): float(v) for k, v in seeds.items()},
            }
        )
    gains = [gain(predictions, losses, noise, b) for b in baselines]
    return {
        "mixtures": rows,
        "seed_noise": noise,
        "noise_multiple": NOISE_MULTIPLE,
        "gains": gains,
        "verdicts": [gain_sentence(g) for g in gains],
    }
