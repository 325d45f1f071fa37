"""Ranking and error metrics for regressors over mixtures, with bootstrap intervals and k-fold CV."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats
from sklearn.base import clone
from sklearn.model_selection import KFold, cross_val_predict

BOOTSTRAP_SAMPLES = 1000
CONFIDENCE = 0.95


def _pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{len(y_true)} targets but {len(y_pred)} predictions")
    return y_true, y_pred


def _correlation(kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # A constant prediction has no ranking: report 0, not NaN.
    if len(y_true) < 2 or np.ptp(y_pred) == 0 or np.ptp(y_true) == 0:
        return 0.0
    func = stats.spearmanr if kind == "spearman" else stats.pearsonr
    return float(func(y_true, y_pred)[0])


def spearman_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_boot: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman's rho over (target, prediction) pairs."""
    y_true, y_pred = _pair(y_true, y_pred)
    idx = _resamples(len(y_true), n_boot, seed)
    return _quantile_interval(_resampled_spearman(y_true, y_pred, idx), confidence)


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Row indices of `n_boot` bootstrap resamples of `n` pairs, one resample per row."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _quantile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap `values` (percentile method)."""
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return float(lo), float(hi)


def _resampled_spearman(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman's rho on each resample (row of `idx`): Pearson of ranks, vectorised."""
    rt = stats.rankdata(y_true[idx], axis=1)
    rp = stats.rankdata(y_pred[idx], axis=1)
    rt -= rt.mean(axis=1, keepdims=True)
    rp -= rp.mean(axis=1, keepdims=True)
    denom = np.sqrt((rt**2).sum(axis=1) * (rp**2).sum(axis=1))
    return np.divide((rt * rp).sum(axis=1), denom, out=np.zeros(len(idx)), where=denom > 0)


def spearman_gap(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    y_base: np.ndarray,
    n_boot: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, float]:
    """Spearman of a model and of a baseline on the same runs, and a paired bootstrap interval
    of the difference (model minus baseline): `beats_baseline` when the interval lies above 0."""
    y_true, y_pred = _pair(y_true, y_pred)
    _, y_base = _pair(y_true, y_base)
    idx = _resamples(len(y_true), n_boot, seed)
    gaps = _resampled_spearman(y_true, y_pred, idx) - _resampled_spearman(y_true, y_base, idx)
    lo, hi = _quantile_interval(gaps, confidence)
    model, base = _correlation("spearman", y_true, y_pred), _correlation("spearman", y_true, y_base)
    return {
        "spearman": model,
        "baseline_spearman": base,
        "gap": model - base,
        "gap_ci_low": lo,
        "gap_ci_high": hi,
        "beats_baseline": bool(lo > 0),
    }


def regression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, n_boot: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> dict[str, Any]:
    """n, Spearman (with bootstrap 95% CI), Pearson and MSE of predictions against targets."""
    y_true, y_pred = _pair(y_true, y_pred)
    lo, hi = spearman_ci(y_true, y_pred, n_boot=n_boot, seed=seed) if n_boot else (np.nan, np.nan)
    return {
        "n": int(len(y_true)),
        "spearman": _correlation("spearman", y_true, y_pred),
        "spearman_ci_low": lo,
        "spearman_ci_high": hi,
        "pearson": _correlation("pearson", y_true, y_pred),
        "mse": float(np.mean((y_true - y_pred) ** 2)),
    }


def out_of_fold(
    estimator: Any, X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, KFold]:
    """Out-of-fold predictions of a shuffled, seeded k-fold split (and the splitter used)."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    folds = min(folds, len(y))
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 runs and 2 folds, got {len(y)} runs")
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(clone(estimator), X, y, cv=splitter), splitter


def cross_validate(
    estimator: Any,
    X: np.ndarray,
    y: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    baseline: np.ndarray | None = None,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """k-fold CV: metrics of the pooled out-of-fold predictions, and per-fold metrics; with a
    `baseline` prediction, also its Spearman and the gap's paired bootstrap CI (`spearman_gap`)."""
    y = np.asarray(y, dtype=float)
    X_arr = np.asarray(X, dtype=float)
    if len(X_arr) > 1 and np.ptp(X_arr, axis=0).max(initial=0.0) == 0:
        warnings.warn(
            f"all {len(X_arr)} mixtures are identical: cross-validated Spearman/Pearson cannot tell "
            "how well the regressor ranks mixtures; propose varied mixtures (datamixer regmix propose)",
            UserWarning,
            stacklevel=2,
        )
    oof, splitter = out_of_fold(estimator, X, y, folds, seed)
    per_fold = []
    for fold, (_, test) in enumerate(splitter.split(oof)):
        row = regression_metrics(y[test], oof[test], n_boot=0)
        per_fold.append({"fold": fold, **row})
    pooled = regression_metrics(y, oof, seed=seed)
    pooled["folds"] = splitter.get_n_splits()
    pooled["spearman_fold_mean"] = float(np.mean([r["spearman"] for r in per_fold]))
    if baseline is not None:
        pooled.update(spearman_gap(y, oof, baseline, seed=seed))
    return pooled, per_fold
