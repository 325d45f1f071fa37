"""What beats RegMix's plain LightGBM? Spearman on the held-out RegMix runs at 1M and 60M.

Every variant is fitted on the 512 train runs (Pile-CC loss) and scored on the 256 test mixtures
trained at 1M and at 60M parameters, beside the trivial predictor "minus the Pile-CC weight".

    python bench/regmix_accuracy.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixer.metrics import spearman_ci  # noqa: E402
from mixer.regressors import (  # noqa: E402
    GaussianProcessMixtureRegressor,
    LawBlendRegressor,
    LightGBMRegressor,
    MixingLawRegressor,
    RidgeRegressor,
)
from mixer.runs import load_mixtures, load_targets  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "regmix"
TARGET = "metric/the_pile_pile_cc_val_loss"
PILE_CC = "train_the_pile_pile_cc"


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray], list[str]]:
    train = load_mixtures(DATA / "train_mixture_1m.csv")
    y = load_targets(DATA / "train_pile_loss_1m.csv", [TARGET]).loc[train.index, TARGET].to_numpy()
    test = load_mixtures(DATA / "test_mixture_1m.csv")
    truth = {}
    for size in ("1m", "60m"):
        losses = load_targets(DATA / f"test_pile_loss_{size}.csv", [TARGET])
        truth[size] = losses.loc[test.index, TARGET].to_numpy()
    return train.to_numpy(), y, test.to_numpy(), truth, list(train.columns)


class Ensemble:
    """Mean prediction of several fitted predictors (optionally weighted)."""

    def __init__(self, members: list, weights: list[float] | None = None) -> None:
        self.members = members
        self.weights = weights or [1.0 / len(members)] * len(members)

    def fit(self, X: np.ndarray, y: np.ndarray) -> Ensemble:
        for member in self.members:
            member.fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return sum(w * m.predict(X) for w, m in zip(self.weights, self.members, strict=True))


class Bagged(LightGBMRegressor):
    """LightGBM with row/column subsampling, so different seeds give different trees."""

    def lgb_params(self, n: int) -> dict:
        return {**super().lgb_params(n), "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8}


def variants(domains: list[str]) -> dict[str, Callable[[], object]]:
    monotone = [-1 if d == PILE_CC else 0 for d in domains]
    return {
        "lightgbm (RegMix recipe)": lambda: LightGBMRegressor(),
        "linear (ridge 1e-3)": lambda: RidgeRegressor(),
        "ridge + log weights": lambda: RidgeRegressor(log_features=True),
        "lightgbm + log weights": lambda: LightGBMRegressor(log_features=True),
        "lightgbm, monotone in Pile-CC weight": lambda: LightGBMRegressor(monotone_constraints=monotone),
        "lightgbm, 2000 trees": lambda: LightGBMRegressor(n_estimators=2000),
        "bagged lightgbm x5 seeds": lambda: Ensemble([Bagged(random_state=s) for s in range(5)]),
        "lightgbm 0.8 + ridge 0.2": lambda: Ensemble([LightGBMRegressor(), RidgeRegressor()], [0.8, 0.2]),
        "mixing law alone (--model mixing-law)": lambda: MixingLawRegressor(),
        "gaussian process (--model gp)": lambda: GaussianProcessMixtureRegressor(),
        "law + lightgbm on residuals": lambda: LightGBMRegressor(law_residual=True),
        "law + lightgbm residuals, monotone": lambda: LightGBMRegressor(
            law_residual=True, monotone_constraints=monotone
        ),
        "law-residual x5 bagged seeds": lambda: Ensemble(
            [Bagged(random_state=s, law_residual=True) for s in range(5)]
        ),
        "law-residual + plain lightgbm (--model law-blend)": lambda: LawBlendRegressor(),
    }


def main() -> None:
    X, y, X_test, truth, domains = load()
    pile_cc = domains.index(PILE_CC)
    print(f"fit on {len(X)} train runs, Spearman on {len(X_test)} held-out mixtures (Pile-CC loss)")
    print(f"{'variant':48s} {'1M':>7s} {'60M':>7s}  {'95% CI at 60M':>16s} {'fit s':>6s}")
    baseline = {s: spearmanr(-X_test[:, pile_cc], t)[0] for s, t in truth.items()}
    print(f"{'trivial: minus the Pile-CC weight':48s} {baseline['1m']:7.4f} {baseline['60m']:7.4f}")
    for name, make in variants(domains).items():
        start = time.perf_counter()
        model = make().fit(X, y)
        seconds = time.perf_counter() - start
        pred = model.predict(X_test)
        rho = {s: spearmanr(pred, t)[0] for s, t in truth.items()}
        lo, hi = spearman_ci(truth["60m"], pred)
        print(
            f"{name:48s} {rho['1m']:7.4f} {rho['60m']:7.4f}  [{lo:.4f}, {hi:.4f}] {seconds:6.1f}", flush=True
        )


if __name__ == "__main__":
    main()
