"""Should a user trust the regressor? The trivial baseline, cross-scale validation, model choice.

* The trivial baseline ranks mixtures by minus the target domain's own weight (for a target that
  weights several domains, minus the weighted sum): on RegMix's Pile-CC loss it reaches a
  Spearman of 0.81, so a model must be compared with it, not with 0.
* Cross-scale validation: when the runs hold two or more model sizes (`N`) or token counts (`D`),
  fit on the smallest and score the rank accuracy on each larger one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mixer.metrics import cross_validate, regression_metrics, spearman_gap
from mixer.regressors import make_estimator


def build_estimator(model: str, seed: int, params: Mapping[str, Any] | None = None):
    """`model` with those of `params` it takes (one setting such as n_estimators serves every model)."""
    est = make_estimator(model, seed=seed)
    accepted = est.get_params()
    return est.set_params(**{k: v for k, v in dict(params or {}).items() if k in accepted})


AFFIXES = ("metric/", "loss_", "train_", "h_", "val_", "_val_loss", "_loss", "_val", "the_pile_")
SCALE_COLUMNS = ("N", "D")


def _core(name: str) -> str:
    """`metric/the_pile_pile_cc_val_loss` and `train_the_pile_pile_cc` -> `pile_cc`."""
    name = name.lower()
    changed = True
    while changed:
        changed = False
        for affix in AFFIXES:
            if affix.endswith("_") or affix.endswith("/"):
                if name.startswith(affix) and len(name) > len(affix):
                    name, changed = name[len(affix) :], True
            elif name.endswith(affix) and len(name) > len(affix):
                name, changed = name[: -len(affix)], True
    return name


def target_domain(target: str, domains: Sequence[str]) -> str | None:
    """The domain whose loss `target` measures (by name, e.g. `loss_web` -> `web`), or None."""
    core = _core(target)
    exact = [d for d in domains if _core(d) == core]
    if exact:
        return exact[0]
    inside = sorted((d for d in domains if _core(d) and _core(d) in core), key=lambda d: -len(_core(d)))
    return inside[0] if inside else None


def baseline_weights(
    target_weights: Mapping[str, float], domains: Sequence[str], partial: bool = False
) -> dict[str, float] | None:
    """Domain -> weight of the trivial baseline for a weighted sum of targets; None when a target
    matches no domain (then there is no trivial baseline). With `partial`, targets that match no
    domain are left out (None only if none matches): e.g. Ye et al.'s overall loss, a weighted sum
    of 22 Pile losses of which only some name a training domain."""
    out: dict[str, float] = {}
    for target, weight in target_weights.items():
        domain = target_domain(target, domains)
        if domain is None:
            if partial:
                continue
            return None
        out[domain] = out.get(domain, 0.0) + float(weight)
    return out or None


def trivial_prediction(X: np.ndarray, domains: Sequence[str], weights: Mapping[str, float]) -> np.ndarray:
    """Minus the weighted sum of the targets' own domain weights: more of a domain, lower its loss."""
    vector = np.array([weights.get(d, 0.0) for d in domains])
    return -np.asarray(X, dtype=float) @ vector


def compare_to_baseline(
    y: np.ndarray,
    pred: np.ndarray,
    X: np.ndarray,
    domains: Sequence[str],
    target_weights: Mapping[str, float],
    seed: int = 0,
) -> dict[str, Any]:
    """Spearman of the model and of the trivial baseline, with the paired bootstrap CI of the gap; a
    target that is no domain's loss has no baseline, only the model's Spearman (with its CI)."""
    weights = baseline_weights(target_weights, domains)
    if weights is None:
        metrics = regression_metrics(y, pred, seed=seed)
        return {"baseline": None, **{k: v for k, v in metrics.items() if k.startswith("spearman")}}
    gap = spearman_gap(y, pred, trivial_prediction(X, domains, weights), seed=seed)
    return {"baseline": "minus the target domain's weight", **gap}


def baseline_warning(name: str, comparison: Mapping[str, Any], where: str) -> str | None:
    """A one-line warning when the model does not beat the baseline by more than the CI."""
    if comparison.get("baseline") is None or comparison["beats_baseline"]:
        return None
    return (
        f"warning: {name}: {where} Spearman {comparison['spearman']:.4f} does not beat the trivial "
        f"baseline {comparison['baseline_spearman']:.4f} beyond its 95% CI (gap "
        f"{comparison['gap']:+.4f}, CI [{comparison['gap_ci_low']:+.4f}, {comparison['gap_ci_high']:+.4f}])"
    )


ScaleGroups = tuple[float, np.ndarray, list[tuple[float, np.ndarray]]]


def scale_groups(scales: np.ndarray | None) -> ScaleGroups | None:
    """(smallest scale, its rows, [(larger scale, its rows)...]); None with fewer than 2 scales."""
    if scales is None:
        return None
    values = np.unique(scales)
    if len(values) < 2:
        return None
    return float(values[0]), scales == values[0], [(float(v), scales == v) for v in values[1:]]


def cross_scale(
    models: Sequence[str],
    X: np.ndarray,
    y: np.ndarray,
    groups: ScaleGroups,
    domains: Sequence[str],
    target: str,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per model: fitted on the smallest scale, Spearman (and the baseline's) at the largest scale,
    plus the figure at every larger scale."""
    small_value, small, larger = groups
    out: dict[str, dict[str, Any]] = {}
    for model in models:
        est = build_estimator(model, seed, params).fit(X[small], y[small])
        per_scale = {}
        for value, rows in larger:
            per_scale[f"{value:g}"] = compare_to_baseline(
                y[rows], est.predict(X[rows]), X[rows], domains, {target: 1.0}, seed
            )
        out[model] = {
            **per_scale[f"{larger[-1][0]:g}"],
            "fit_scale": small_value,
            "scale": larger[-1][0],
            "per_scale": per_scale,
        }
    return out


def cv_scores(
    models: Sequence[str],
    X: np.ndarray,
    y: np.ndarray,
    domains: Sequence[str],
    target: str,
    folds: int,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Per model: k-fold CV metrics (pooled, with the baseline comparison) and per-fold rows."""
    weights = baseline_weights({target: 1.0}, domains)
    base = None if weights is None else trivial_prediction(X, domains, weights)
    out = {}
    for model in models:
        est = build_estimator(model, seed, params)
        pooled, per_fold = cross_validate(est, X, y, folds=folds, seed=seed, baseline=base)
        pooled["baseline"] = None if base is None else "minus the target domain's weight"
        out[model] = (pooled, per_fold)
    return out


def best_model(scores: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The model with the highest mean Spearman over targets ({target: {model: metrics}})."""
    models = list(next(iter(scores.values())))
    mean = {m: float(np.mean([scores[t][m]["spearman"] for t in scores])) for m in models}
    return max(models, key=lambda m: (mean[m], -models.index(m)))


def stack_weights(predictions: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Blend weights (non-negative, summing to 1) of m models from their out-of-fold predictions
    (n, m): non-negative least squares of the centred targets on the centred predictions, so that
    a model earns weight only by what it adds to the others (stacking, Breiman 1996)."""
    from scipy.optimize import nnls

    P = np.asarray(predictions, dtype=float)
    y = np.asarray(y, dtype=float)
    if P.ndim != 2 or P.shape[0] != y.size:
        raise ValueError(f"predictions must be (n, m) with n = len(y) = {y.size}, got shape {P.shape}")
    weights, _ = nnls(P - P.mean(axis=0), y - y.mean())
    if weights.sum() <= 0:  # no model follows the targets: equal weights say so rather than guess
        return np.full(P.shape[1], 1.0 / P.shape[1])
    return weights / weights.sum()
