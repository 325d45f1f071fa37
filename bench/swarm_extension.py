"""Does picking the next proxy runs by GP variance beat picking them at random?

On RegMix's published runs (Pile-CC loss, 17 domains): start from 48 of the 512 train mixtures,
add 32 more from the remaining 464 (the candidate pool) either at random or by greedy GP posterior
variance (`mixer.extend.select_uncertain`), refit, and score Spearman on the 256 test mixtures at 1M.
Both a GP and ridge regression are refitted, so the gain is not just the GP grading its own picks.

    python bench/swarm_extension.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixer.extend import gp_uncertainty, select_uncertain  # noqa: E402
from mixer.runs import load_mixtures, load_targets  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "regmix"
TARGET = "metric/the_pile_pile_cc_val_loss"
START, ADD, SEEDS = 48, 32, 5


def scores(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray) -> tuple[float, float]:
    gp = spearmanr(gp_uncertainty(X, y).predict(X_test), y_test)[0]
    ridge = spearmanr(Ridge(alpha=1e-3).fit(X, y).predict(X_test), y_test)[0]
    return float(gp), float(ridge)


def main() -> None:
    if not DATA.exists():
        sys.exit(f"{DATA}: RegMix reference data not found")
    train = load_mixtures(DATA / "train_mixture_1m.csv")
    y = load_targets(DATA / "train_pile_loss_1m.csv", [TARGET]).loc[train.index, TARGET].to_numpy()
    test = load_mixtures(DATA / "test_mixture_1m.csv")
    y_test = load_targets(DATA / "test_pile_loss_1m.csv", [TARGET]).loc[test.index, TARGET].to_numpy()
    X, X_test = train.to_numpy(), test.to_numpy()
    rows = {"start": [], "random": [], "gp-variance": []}
    seconds = []
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(X))
        start, pool = order[:START], order[START:]
        rows["start"].append(scores(X[start], y[start], X_test, y_test))
        random_pick = rng.choice(pool, ADD, replace=False)
        both = np.concatenate([start, random_pick])
        rows["random"].append(scores(X[both], y[both], X_test, y_test))
        t0 = time.perf_counter()
        chosen, _ = select_uncertain(X[pool], X[start], y[start], ADD, seed=seed)
        seconds.append(time.perf_counter() - t0)
        both = np.concatenate([start, pool[chosen]])
        rows["gp-variance"].append(scores(X[both], y[both], X_test, y_test))
    print(
        f"load average {os.getloadavg()[0]:.1f}; {SEEDS} seeds; {START} runs + {ADD}; "
        "Spearman on 256 test runs"
    )
    for name, values in rows.items():
        gp, ridge = np.array(values).T
        print(
            f"  {name:12s} GP {gp.mean():.4f} (min {gp.min():.4f})   "
            f"ridge {ridge.mean():.4f} (min {ridge.min():.4f})"
        )
    gain = np.array(rows["gp-variance"]) - np.array(rows["random"])
    print(
        f"  gp-variance minus random: GP {gain[:, 0].mean():+.4f}, ridge {gain[:, 1].mean():+.4f} "
        f"(wins {int((gain[:, 0] > 0).sum())}/{SEEDS} and {int((gain[:, 1] > 0).sum())}/{SEEDS})"
    )
    print(f"  selection time {np.mean(seconds):.2f} s per batch of {ADD} from {len(X) - START}")


if __name__ == "__main__":
    main()
