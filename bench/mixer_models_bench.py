"""Which mixer model wins in distribution, and which across scale? Every model, side by side with
the trivial baseline, on the shared RegMix and Data Mixing Laws runs.

* RegMix (Pile-CC loss): fitted on the 512 train runs at 1M parameters; in distribution =
  Spearman on the 256 held-out mixtures trained at 1M; cross scale = the same mixtures trained
  at 60M.
* Data Mixing Laws, RedPajama (7 domains, final checkpoints): fitted on the 40 runs at 70M; in
  distribution = 5-fold CV Spearman at 70M; cross scale = Spearman on the 20 runs at 410M. Targets:
  the overall loss (validation-weighted sum of 22 Pile losses; the baseline weights those of its
  domains that name a training domain) and the GitHub loss.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixer.metrics import out_of_fold  # noqa: E402
from mixer.model_selection import baseline_weights, build_estimator, trivial_prediction  # noqa: E402
from mixer.reference_data import mixinglaws_runs  # noqa: E402
from mixer.regressors import MODELS  # noqa: E402
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


def run_case(case: dict) -> list[dict]:
    X, y, domains = case["X"], case["y"], case["domains"]
    rows = []
    base_in = None
    if case["in"] is not None:
        base_in = rho(trivial_prediction(case["in"][0], domains, case["baseline"]), case["in"][1])
    else:
        base_in = rho(trivial_prediction(X, domains, case["baseline"]), y)
    base_across = rho(trivial_prediction(case["across"][0], domains, case["baseline"]), case["across"][1])
    rows.append({"model": "trivial baseline", "in": base_in, "across": base_across, "seconds": 0.0})
    for model in MODELS:
        start = time.perf_counter()
        est = build_estimator(model, 0).fit(X, y)
        seconds = time.perf_counter() - start
        if case["in"] is not None:
            in_dist = rho(est.predict(case["in"][0]), case["in"][1])
        else:
            oof, _ = out_of_fold(build_estimator(model, 0), X, y, folds=5, seed=0)
            in_dist = rho(oof, y)
        across = rho(est.predict(case["across"][0]), case["across"][1])
        rows.append({"model": model, "in": in_dist, "across": across, "seconds": seconds})
    return rows


def main() -> None:
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores)")
    results = {}
    for case in [regmix_case(), *mixinglaws_cases()]:
        rows = run_case(case)
        results[case["name"]] = rows
        print(f"\n{case['name']}: fitted on {len(case['y'])} runs")
        print(f"{'model':18s} {case['in_label']:>10s} {case['across_label']:>10s} {'fit s':>7s}")
        for r in rows:
            print(f"{r['model']:18s} {r['in']:10.4f} {r['across']:10.4f} {r['seconds']:7.1f}", flush=True)
        models = [r for r in rows if r["model"] != "trivial baseline"]
        best_in = max(models, key=lambda r: r["in"])["model"]
        best_across = max(models, key=lambda r: r["across"])["model"]
        print(f"best in distribution: {best_in}; best across scale: {best_across}")
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    summary = {
        name: {r["model"]: {"in": round(r["in"], 4), "across": round(r["across"], 4)} for r in rows}
        for name, rows in results.items()
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
