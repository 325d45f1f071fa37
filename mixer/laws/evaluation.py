"""How good a fitted law is: error metrics on a runs table, the per-parameter table with bootstrap
intervals, and the per-row residuals table (what `datamixer law fit` writes beside the law)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mixer.laws.estimators import LawEstimator
from mixer.runs import load_runs

ROW_KEYS = ("run", "mixture", "size", "step")


def evaluation_metrics(observed: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """n, mean and max relative error (fractions), RMSE and Spearman rho of predictions."""
    from scipy.stats import spearmanr

    relative = np.abs(predicted - observed) / observed
    rho = float(spearmanr(observed, predicted).statistic) if observed.size > 1 else float("nan")
    return {
        "n": int(observed.size),
        "mre": float(relative.mean()),
        "max_re": float(relative.max()),
        "rmse": float(np.sqrt(np.mean((predicted - observed) ** 2))),
        "spearman": rho,
    }


def evaluate(law: LawEstimator, runs: Any, target: str | None = None) -> dict[str, float]:
    """Metrics of `law` on a runs table (DataFrame or path; the law's first target unless `target`)."""
    target = target or law.targets_[0]
    frame = load_runs(runs, targets=[target], require_weights=law.form.uses_mixture)
    predicted = law.predict(frame, target)
    return evaluation_metrics(frame[target].to_numpy(dtype=float), predicted)


def flatten_params(params: dict[str, Any]) -> list[tuple[str, float]]:
    """{"alpha": 0.3, "C": {"web": 2}} -> [("alpha", 0.3), ("C[web]", 2.0)]."""
    out: list[tuple[str, float]] = []
    for name, value in params.items():
        if isinstance(value, dict):
            out.extend((f"{name}[{k}]", float(v)) for k, v in value.items())
        else:
            out.append((name, float(value)))
    return out


def params_table(law: LawEstimator, level: float = 0.95) -> pd.DataFrame:
    """One row per (target, N, D, parameter): value and bootstrap percentile interval."""
    tail = 50.0 * (1.0 - level)
    rows = []
    for fit in law.fits_:
        boot = [
            dict(flatten_params(law.form.public_params(theta, law.domains_, law.n_scale_, law.d_scale_)))
            for theta in fit.bootstrap
        ]
        for name, value in flatten_params(fit.params):
            values = np.array([b[name] for b in boot], dtype=float)
            low, high = np.percentile(values, [tail, 100 - tail]) if values.size else (np.nan, np.nan)
            rows.append(
                {
                    "target": fit.target,
                    "N": fit.N,
                    "D": fit.D,
                    "parameter": name,
                    "value": float(value),
                    "low": float(low),
                    "high": float(high),
                    "objective": fit.diagnostics["objective"],
                }
            )
    return pd.DataFrame(rows)


def residuals_table(law: LawEstimator, frame: pd.DataFrame, targets: list[str] | None = None) -> pd.DataFrame:
    """Per row and target: observed, predicted with its interval, residual and relative error."""
    parts = []
    keep = [c for c in ROW_KEYS if c in frame.columns]
    for target in targets or law.targets_:
        pred = law.predict_interval(frame, target)
        part = frame[keep + ["N", "D"]].copy().reset_index(drop=True)
        part["target"] = target
        part["observed"] = frame[target].to_numpy(dtype=float)
        part["predicted"] = pred["loss"].to_numpy()
        part["low"], part["high"] = pred["low"].to_numpy(), pred["high"].to_numpy()
        part["residual"] = part["predicted"] - part["observed"]
        part["relative_error"] = part["residual"].abs() / part["observed"]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
