"""Which mixer model wins in distribution, and which across scale? Every model, side by side with
the trivial baseline, on the shared RegMix and Data Mixing Laws runs.

* RegMix (Pile-CC loss): fitted on the 512 train runs at 1M parameters; in distribution =
  Spearman on the 256 held-out mixtures trained at 1M; cross scale = the same mixtures trained
  at 60M.
* Data Mixing Laws, RedPajama (7 domains, final checkpoints): fitted on the 40 runs at 70M; in
  distribution = 5-fold CV Spearman at 70M; cross scale = Spearman on the 20 runs at 410M. Targets:
  the overall loss (validation-weighted sum of 22 Pile losses; the baseline weights those of its
  domains that name a training domain) and the GitHub loss.

Beside each model: its 5-fold CV Spearman on the fitting runs (what `--select cv` sees), fit
seconds (wall and CPU), and a stacked blend: blend weights by non-negative least squares on the
models' 5-fold out-of-fold predictions (`mixer.model_selection.stack_weights`), applied to the
models fitted on all runs (for the Data Mixing Laws CV column, nested: weights from the training
folds only). Each case ends with which model wins, where the default stands, whether it beats
the trivial baseline, and what `--select cv` would have picked.

    python bench/mixer_models_bench.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.model_selection import KFold

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixer.model_selection import (  # noqa: E402
    baseline_weights,
    build_estimator,
    stack_weights,
    trivial_prediction,
)
from mixer.reference_data import mixinglaws_runs  # noqa: E402
from mixer.regressors import DEFAULT_MODEL, MODELS  # noqa: E402
from mixer.runs import load_mixtures, load_targets  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PILE_CC = "metric/the_pile_pile_cc_val_loss"


def rho(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a, b)[0])


def regmix_case() -> dict:
    """(X_fit, y_fit, in-distribution (X, y), cross-scale (X, y), domains, baseline weights)."""
    root = DATA / "regmix"
    train = load_mixtures(root / "train_mixture_1m.csv")
    y = load_targets(root / "train_pile_loss_1m.csv", [PILE_CC]).loc[train.index, PILE_CC].to_numpy()
    test = load_mixtures(root / "test_mixture_1m.csv")
    at = {
        s: load_targets(root / f"test_pile_loss_{s}.csv", [PILE_CC]).loc[test.index, PILE_CC].to_numpy()
        for s in ("1m", "60m")
    }
    domains = list(train.columns)
    return {
        "name": "RegMix Pile-CC",
        "X": train.to_numpy(),
        "y": y,
        "in": (test.to_numpy(), at["1m"]),
        "across": (test.to_numpy(), at["60m"]),
        "domains": domains,
        "baseline": baseline_weights({PILE_CC: 1.0}, domains),
        "in_label": "1M test",
        "across_label": "60M",
    }


def mixinglaws_cases() -> list[dict]:
    runs = mixinglaws_runs(DATA, sizes=["70M", "410M"])
    runs = runs.loc[runs.groupby(runs["run"].str.split("@").str[0])["step"].idxmax()]
    weight_cols = [c for c in runs.columns if c.startswith("h_")]
    domains = [c[2:] for c in weight_cols]
    valid = json.loads((DATA / "mixinglaws" / "valid_weight.json").read_text())
    small, large = runs[runs["size"] == "70M"], runs[runs["size"] == "410M"]
    cases = []
    for target, weights in (("loss", {f"loss_{d}": w for d, w in valid.items()}), ("loss_Github", None)):
        base = baseline_weights(weights or {target: 1.0}, domains, partial=weights is not None)
        cases.append(
            {
                "name": f"MixingLaws RedPajama {target}",
                "X": small[weight_cols].to_numpy(),
                "y": small[target].to_numpy(),
                "in": None,
                "across": (large[weight_cols].to_numpy(), large[target].to_numpy()),
                "domains": domains,
                "baseline": base,
                "in_label": "70M CV",
                "across_label": "410M",
            }
        )
    return cases


def timed_fit(model: str, X: np.ndarray, y: np.ndarray):
    """(fitted estimator, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    est = build_estimator(model, 0).fit(X, y)
    return est, time.perf_counter() - wall, time.process_time() - cpu


def oof_predictions(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(n, models) out-of-fold predictions of every model, one shuffled k-fold split."""
    out = np.empty((len(y), len(MODELS)))
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(X):
        for j, model in enumerate(MODELS):
            out[test, j] = build_estimator(model, 0).fit(X[train], y[train]).predict(X[test])
    return out


def nested_stack_oof(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of the stacked blend: in each outer fold, blend weights from the
    inner out-of-fold predictions of the training part only."""
    out = np.empty(len(y))
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(X):
        weights = stack_weights(oof_predictions(X[train], y[train], folds, seed), y[train])
        outer = [build_estimator(m, 0).fit(X[train], y[train]).predict(X[test]) for m in MODELS]
        out[test] = np.column_stack(outer) @ weights
    return out


def run_case(case: dict) -> tuple[list[dict], dict]:
    """Rows (model, in, across, fit seconds) for the baseline, every model and the stacked blend;
    and the blend's weights."""
    X, y, domains = case["X"], case["y"], case["domains"]
    in_X, in_y = case["in"] if case["in"] is not None else (X, y)
    across_X, across_y = case["across"]
    base = case["baseline"]
    rows = [
        {
            "model": "trivial baseline",
            "in": rho(trivial_prediction(in_X, domains, base), in_y),
            "across": rho(trivial_prediction(across_X, domains, base), across_y),
            "cv": rho(trivial_prediction(X, domains, base), y),
            "seconds": 0.0,
            "cpu": 0.0,
        }
    ]
    oof = oof_predictions(X, y)
    weights = stack_weights(oof, y)
    in_preds, across_preds = [], []
    for j, model in enumerate(MODELS):
        est, seconds, cpu = timed_fit(model, X, y)
        in_pred = oof[:, j] if case["in"] is None else est.predict(in_X)
        in_preds.append(in_pred)
        across_preds.append(est.predict(across_X))
        rows.append(
            {
                "model": model,
                "in": rho(in_pred, in_y),
                "across": rho(across_preds[-1], across_y),
                "cv": rho(oof[:, j], y),
                "seconds": seconds,
                "cpu": cpu,
            }
        )
    stack_in = nested_stack_oof(X, y) if case["in"] is None else np.column_stack(in_preds) @ weights
    rows.append(
        {
            "model": "stack (NNLS)",
            "in": rho(stack_in, in_y),
            "across": rho(np.column_stack(across_preds) @ weights, across_y),
            "cv": float("nan"),
            "seconds": float("nan"),
            "cpu": float("nan"),
        }
    )
    return rows, dict(zip(MODELS, (round(float(w), 3) for w in weights), strict=True))


def verdict(rows: list[dict], column: str, label: str) -> str:
    """Which model wins `column`, where the default stands, and whether it beats the baseline."""
    models = [r for r in rows if r["model"] in MODELS]
    best = max(models, key=lambda r: r[column])
    default = next(r for r in rows if r["model"] == DEFAULT_MODEL)
    base = rows[0][column]
    by_cv = max(models, key=lambda r: r["cv"])
    gap = default[column] - best[column]
    standing = "matches it" if gap >= 0 else f"is {-gap:.4f} below it"
    return (
        f"{label}: best single model {best['model']} {best[column]:.4f}; default {DEFAULT_MODEL} "
        f"{default[column]:.4f} {standing}; {'beats' if default[column] > base else 'DOES NOT beat'} the "
        f"trivial baseline ({base:.4f}); --select cv would pick {by_cv['model']} ({by_cv[column]:.4f})"
    )


def main() -> None:
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores)")
    results, blends = {}, {}
    for case in [regmix_case(), *mixinglaws_cases()]:
        rows, weights = run_case(case)
        results[case["name"]], blends[case["name"]] = rows, weights
        print(f"\n{case['name']}: fitted on {len(case['y'])} runs")
        print(
            f"{'model':18s} {case['in_label']:>10s} {case['across_label']:>10s} {'5-fold CV':>10s} "
            f"{'fit s':>7s} {'CPU s':>7s}"
        )
        for r in rows:
            print(
                f"{r['model']:18s} {r['in']:10.4f} {r['across']:10.4f} {r['cv']:10.4f} "
                f"{r['seconds']:7.1f} {r['cpu']:7.1f}",
                flush=True,
            )
        print(verdict(rows, "in", f"in distribution ({case['in_label']})"))
        print(verdict(rows, "across", f"across scale ({case['across_label']})"))
        stack = rows[-1]
        print(
            f"stack (NNLS on 5-fold out-of-fold predictions), weights {weights}: "
            f"in {stack['in']:.4f}, across {stack['across']:.4f}"
        )
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    summary = {
        name: {r["model"]: {"in": round(r["in"], 4), "across": round(r["across"], 4)} for r in rows}
        for name, rows in results.items()
    }
    summary["stack_weights"] = blends
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
