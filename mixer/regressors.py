"""Regressors from a mixture (one weight per domain) to one loss, scikit-learn style, saved without pickle.

* `lightgbm`: RegMix's gradient-boosted trees (Liu et al. 2024); `law-lightgbm`: the same trees
  boosted on the residuals of Ye et al.'s mixing law;
* `law-blend` (alias `ensemble`): the mean of those two, the default (best by CV and across scale
  on the RegMix runs; see docs/mixer.md);
* `mixing-law`: Ye et al.'s law L = c + k exp(t . h) alone, a multi-start robust fit of
  `mixer.laws.mixing_law` (the one implementation of that law);
* `gp`: scikit-learn's Gaussian process (ARD RBF + noise), with `predict(X, return_std=True)`;
* `linear`: RegMix's ridge baseline.

Each estimator writes its state with `save_state(directory, stem)` as JSON or LightGBM's text
model; `load_state` reads it back.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
from sklearn.linear_model import Ridge
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from mixer.laws import Features, mixing_grad_h, mixing_law, random_starts
from mixer.laws import fitting as law_fit

MODELS = ("law-blend", "lightgbm", "law-lightgbm", "mixing-law", "gp", "linear")
ALIASES = {"ensemble": "law-blend"}
DEFAULT_MODEL = "law-blend"
LOG_EPS = 1e-3
LAW_STARTS = 64
LAW_KEEP = 4


def canonical_model(name: str) -> str:
    """The model's one name (`ensemble` -> `law-blend`); errors list the choices."""
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODELS)} (alias: ensemble)")
    return name


def _features(X: np.ndarray, log_features: bool) -> np.ndarray:
    """Weights, plus log(weight + 1e-3) when asked (trees split the same; ridge gains curvature)."""
    return np.hstack([X, np.log(X + LOG_EPS)]) if log_features else X


def auto_min_child_samples(n: int) -> int:
    """Leaf size that lets trees split from 32 runs up and equals LightGBM's default (20) at 500+.

    LightGBM's defaults (20 per leaf, 3 per bin) leave a 32-run fit with no legal split, so the
    model predicts a constant; RegMix's recipe only works from about 64 runs.
    """
    return int(np.clip(n // 25, 2, 20))


class _MixtureRegressor(RegressorMixin, BaseEstimator):
    """Shared input checks: 2-D finite X, y the same length; predict checks fit and feature count.

    Saving: `saved_as` names the estimator in a model's manifest; the fitted attributes named in
    `saved_state` (without their trailing `_`) are stored there as JSON numbers. Estimators with
    more state override `save_state` / `load_state`.
    """

    saved_as: ClassVar[str] = ""
    saved_state: ClassVar[tuple[str, ...]] = ()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Built for mixtures on the simplex: scikit-learn's generic regression sets are no fair test.
        tags.regressor_tags.poor_score = True
        return tags

    def _fit_data(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        return X, np.asarray(y, dtype=float)

    def _predict_data(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, dtype=np.float64, reset=False)

    def save_state(self, directory: Path, stem: str) -> dict[str, Any]:
        """This estimator's manifest entry (state kept in files goes to `directory`, named `stem.*`)."""
        state = {name: getattr(self, f"{name}_") for name in self.saved_state}
        return self._entry(**{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in state.items()})

    @classmethod
    def load_state(cls, directory: Path, entry: Mapping[str, Any]) -> Any:
        """The fitted estimator of a manifest entry written by `save_state`."""
        est = cls._from_entry(entry)
        for name in cls.saved_state:
            value = np.array(entry[name], dtype=float)
            setattr(est, f"{name}_", value if value.ndim else float(value))
        return est

    def _entry(self, **state: Any) -> dict[str, Any]:
        """A manifest entry: the estimator's name, its parameters, `state`, and the feature count."""
        return {
            "estimator": self.saved_as,
            "params": self.get_params(),
            **state,
            "n_features_in": self.n_features_in_,
        }

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any]) -> Any:
        """The estimator of a manifest entry with its parameters and feature count; `load_state` adds
        the fitted state."""
        est = cls(**entry["params"])
        est.n_features_in_ = int(entry["n_features_in"])
        return est


# ---------------------------------------------------------------------------------------------
# Ye et al.'s mixing law, through mixer.laws.mixing_law (theta = log c, log k, t).


def law_predict(theta: np.ndarray, X: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """L = c + k exp(t . h) - offset for each row of X."""
    n = len(X)
    return mixing_law(np.asarray(theta, dtype=float), Features(np.zeros(n), np.zeros(n), X))[0] - offset


def law_offset(y: np.ndarray) -> float:
    """0 for positive losses; otherwise the shift that makes y positive (c, k > 0 in the law)."""
    low = float(np.min(y))
    return 0.0 if low > 0 else float(np.std(y) or 1.0) - low


def fit_shifted_mixing_law(
    X: np.ndarray,
    y: np.ndarray,
    starts: int = LAW_STARTS,
    keep: int = LAW_KEEP,
    seed: int = 0,
    huber_delta: float | None = None,
) -> np.ndarray:
    """The mixing law as the regressors fit it, to any target (residuals too): fitted to y shifted
    by `law_offset(y)` (c, k > 0 need positive y), Huber delta 0.1 sd of y by default, `starts`
    random points screened, L-BFGS from the `keep` best; returns theta (log c, log k, t...).
    `mixer.laws.fit_mixing_law` is the law-fitting one (losses at one (N, D), least squares)."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    y = y + law_offset(y)
    delta = huber_delta or 0.1 * (float(np.std(y)) or 1.0)
    x = Features(np.zeros(len(X)), np.zeros(len(X)), X)
    objective = law_fit.HuberObjective(lambda theta: mixing_law(theta, x), y, delta)
    rng = np.random.default_rng(seed)
    begin = random_starts("mixing", X.shape[1], y, starts, rng)
    with threadpool_limits(limits=1, user_api="blas"):
        return law_fit.fit_screened(objective, begin, keep=keep).theta


class MixingLawRegressor(_MixtureRegressor):
    """Ye et al.'s data mixing law L = c + k exp(t . h) on its own: smooth, 2 + k parameters.

    Extrapolates beyond the training mixtures with the law's shape, where trees go flat.
    """

    saved_as, saved_state = "mixing-law", ("theta", "offset")

    def __init__(
        self,
        n_starts: int = LAW_STARTS,
        keep: int = LAW_KEEP,
        huber_delta: float | None = None,
        random_state: int = 0,
        n_jobs: int = 1,
    ) -> None:
        self.n_starts = n_starts
        self.keep = keep
        self.huber_delta = huber_delta
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X: Any, y: Any) -> MixingLawRegressor:
        X, y = self._fit_data(X, y)
        self.theta_ = fit_shifted_mixing_law(
            X, y, self.n_starts, self.keep, self.random_state, self.huber_delta
        )
        self.offset_ = law_offset(y)
        return self

    def predict(self, X: Any) -> np.ndarray:
        X = self._predict_data(X)
        return law_predict(self.theta_, X, self.offset_)

    def gradient(self, h: np.ndarray) -> np.ndarray:
        """dL/dh at one mixture (for the exact proposer)."""
        check_is_fitted(self)
        return mixing_grad_h(self.theta_, h)


# ---------------------------------------------------------------------------------------------


class LightGBMRegressor(_MixtureRegressor):
    """RegMix's gradient-boosted trees: 1,000 trees at learning rate 0.01, no early stopping.

    `min_child_samples=None` picks a leaf size that works from 32 runs (see
    `auto_min_child_samples`); `law_residual=True` boosts on the residuals of a fitted
    mixing law; `log_features` adds log weights; `monotone_constraints` goes to
    LightGBM as is (one entry per feature). `n_jobs=1` by default: on a busy 2-core machine
    LightGBM's OpenMP training threads spin-wait and a 1-second fit took 50 seconds.
    """

    saved_as = "lightgbm"

    def __init__(
        self,
        n_estimators: int = 1000,
        learning_rate: float = 0.01,
        num_leaves: int = 31,
        min_child_samples: int | None = None,
        min_data_in_bin: int | None = None,
        log_features: bool = False,
        law_residual: bool = False,
        monotone_constraints: Sequence[int] | None = None,
        law_starts: int = LAW_STARTS,
        random_state: int = 42,
        n_jobs: int = 1,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.min_data_in_bin = min_data_in_bin
        self.log_features = log_features
        self.law_residual = law_residual
        self.monotone_constraints = monotone_constraints
        self.law_starts = law_starts
        self.random_state = random_state
        self.n_jobs = n_jobs

    def lgb_params(self, n: int) -> dict[str, Any]:
        """The LightGBM parameters used for `n` training runs."""
        params: dict[str, Any] = {
            "objective": "regression",
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples or auto_min_child_samples(n),
            "min_data_in_bin": self.min_data_in_bin or (3 if n >= 64 else 1),
            "random_state": self.random_state,
            "deterministic": True,
            "force_row_wise": True,
            "n_jobs": self.n_jobs,
            "verbosity": -1,
        }
        if self.monotone_constraints is not None:
            params["monotone_constraints"] = list(self.monotone_constraints)
        return params

    def fit(self, X: Any, y: Any) -> LightGBMRegressor:
        import lightgbm as lgb

        X, y = self._fit_data(X, y)
        self.law_ = (
            fit_shifted_mixing_law(X, y, self.law_starts, seed=self.random_state)
            if self.law_residual
            else None
        )
        self.law_offset_ = law_offset(y) if self.law_residual else 0.0
        base = law_predict(self.law_, X, self.law_offset_) if self.law_ is not None else 0.0
        model = lgb.LGBMRegressor(**self.lgb_params(len(y)))
        model.fit(_features(X, self.log_features), y - base)
        self.booster_ = model.booster_
        return self

    def predict(self, X: Any) -> np.ndarray:
        X = self._predict_data(X)
        pred = self.booster_.predict(_features(X, self.log_features), num_threads=self.n_jobs)
        if self.law_ is not None:
            pred = pred + law_predict(self.law_, X, self.law_offset_)
        return np.asarray(pred, dtype=float)

    def save_state(self, directory: Path, stem: str) -> dict[str, Any]:
        """Write LightGBM's text model; return the manifest entry."""
        file = f"{stem}.lightgbm.txt"
        (directory / file).write_text(self.booster_.model_to_string())
        law = None if self.law_ is None else [float(v) for v in self.law_]
        return self._entry(file=file, law=law, law_form="log-c-log-k-t", law_offset=self.law_offset_)

    @classmethod
    def load_state(cls, directory: Path, entry: Mapping[str, Any]) -> LightGBMRegressor:
        import lightgbm as lgb

        est = cls._from_entry(entry)
        est.booster_ = lgb.Booster(model_str=(directory / entry["file"]).read_text())
        law = entry.get("law")
        if law is not None and entry.get("law_form") != "log-c-log-k-t":  # version 1 stored c, k
            if min(law[:2]) <= 0:
                raise ValueError(f"{directory}: a version-1 law with c or k <= 0; refit the model")
            law = [np.log(law[0]), np.log(law[1]), *law[2:]]
        est.law_ = None if law is None else np.array(law, dtype=float)
        est.law_offset_ = float(entry.get("law_offset", 0.0))
        return est


class LawBlendRegressor(_MixtureRegressor):
    """Mean of RegMix's LightGBM and a LightGBM boosted on a mixing law's residuals (`law-blend`).

    The best of the variants in bench/regmix_accuracy.py on the RegMix runs; the law part also
    keeps predictions sloped where the training mixtures are sparse.
    """

    saved_as = "law-blend"

    def __init__(
        self,
        n_estimators: int = 1000,
        learning_rate: float = 0.01,
        num_leaves: int = 31,
        min_child_samples: int | None = None,
        min_data_in_bin: int | None = None,
        law_starts: int = LAW_STARTS,
        random_state: int = 42,
        n_jobs: int = 1,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.min_data_in_bin = min_data_in_bin
        self.law_starts = law_starts
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X: Any, y: Any) -> LawBlendRegressor:
        X, y = self._fit_data(X, y)
        params = self.get_params()
        self.plain_ = LightGBMRegressor(**params).fit(X, y)
        self.residual_ = LightGBMRegressor(law_residual=True, **params).fit(X, y)
        return self

    def predict(self, X: Any) -> np.ndarray:
        X = self._predict_data(X)
        for member in (self.plain_, self.residual_):
            member.n_jobs = self.n_jobs
        return 0.5 * (self.plain_.predict(X) + self.residual_.predict(X))

    def save_state(self, directory: Path, stem: str) -> dict[str, Any]:
        members = [
            self.plain_.save_state(directory, f"{stem}.plain"),
            self.residual_.save_state(directory, f"{stem}.law_residual"),
        ]
        return self._entry(members=members)

    @classmethod
    def load_state(cls, directory: Path, entry: Mapping[str, Any]) -> LawBlendRegressor:
        est = cls._from_entry(entry)
        est.plain_, est.residual_ = (LightGBMRegressor.load_state(directory, m) for m in entry["members"])
        return est


class RidgeRegressor(_MixtureRegressor):
    """RegMix's linear baseline: ridge regression (alpha 1e-3) on the domain weights."""

    saved_as, saved_state = "linear", ("coef", "intercept")

    def __init__(self, alpha: float = 1e-3, log_features: bool = False, n_jobs: int = 1) -> None:
        self.alpha = alpha
        self.log_features = log_features
        self.n_jobs = n_jobs

    def fit(self, X: Any, y: Any) -> RidgeRegressor:
        X, y = self._fit_data(X, y)
        ridge = Ridge(alpha=self.alpha).fit(_features(X, self.log_features), y)
        self.coef_ = ridge.coef_.astype(float)
        self.intercept_ = float(ridge.intercept_)
        return self

    def predict(self, X: Any) -> np.ndarray:
        return _features(self._predict_data(X), self.log_features) @ self.coef_ + self.intercept_

    def gradient(self, h: np.ndarray) -> np.ndarray:
        """dL/dh at one mixture (for the exact proposer)."""
        check_is_fitted(self)
        k = len(h)
        grad = self.coef_[:k].copy()
        if self.log_features:
            grad += self.coef_[k:] / (h + LOG_EPS)
        return grad


@dataclass(frozen=True)
class LbfgsHyperparameters:
    """A GaussianProcessRegressor `optimizer`: scikit-learn's L-BFGS-B on the log marginal
    likelihood, stopping at a relative decrease of `ftol` (scikit-learn's ~2e-9 default kept
    iterating long after the hyperparameters stopped moving the predictions)."""

    ftol: float

    def __call__(self, objective: Any, theta0: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, float]:
        from scipy.optimize import minimize

        options = {"ftol": self.ftol}
        result = minimize(objective, theta0, method="L-BFGS-B", jac=True, bounds=bounds, options=options)
        return result.x, float(result.fun)


class GaussianProcessMixtureRegressor(_MixtureRegressor):
    """scikit-learn's Gaussian process over the weights: constant x ARD RBF + white noise, y normalised.

    `predict(X, return_std=True)` gives the predictive standard deviation, which grows away from
    the training mixtures. Saved as JSON: the fitted kernel's hyperparameters and the training data.
    The hyperparameter search stops at a relative improvement of `ftol` (1e-7): on RegMix's 512
    runs it took 75 likelihood evaluations instead of 205 (2.8x less CPU) for the same Spearman
    to 4 digits (bench/mixer_models_bench.py).
    """

    def __init__(
        self, n_restarts_optimizer: int = 0, ftol: float = 1e-7, random_state: int = 0, n_jobs: int = 1
    ) -> None:
        self.n_restarts_optimizer = n_restarts_optimizer
        self.ftol = ftol
        self.random_state = random_state
        self.n_jobs = n_jobs

    @staticmethod
    def _kernel(k: int):
        return ConstantKernel(1.0, (1e-3, 1e3)) * RBF(np.full(k, 0.3), (1e-2, 1e3)) + WhiteKernel(
            1e-2, (1e-8, 1.0)
        )

    def fit(self, X: Any, y: Any) -> GaussianProcessMixtureRegressor:
        X, y = self._fit_data(X, y)
        gp = GaussianProcessRegressor(
            self._kernel(X.shape[1]),
            optimizer=LbfgsHyperparameters(self.ftol),
            normalize_y=True,
            n_restarts_optimizer=self.n_restarts_optimizer,
            random_state=self.random_state,
        )
        with threadpool_limits(limits=self.n_jobs, user_api="blas"), warnings.catch_warnings():
            # ARD length scales at their upper bound mark domains that do not move the loss: expected.
            warnings.filterwarnings(
                "ignore", message=".*close to the specified upper bound", category=ConvergenceWarning
            )
            self.gp_ = gp.fit(X, y)
        return self

    def predict(self, X: Any, return_std: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        X = self._predict_data(X)
        with threadpool_limits(limits=self.n_jobs, user_api="blas"):
            return self.gp_.predict(X, return_std=return_std)

    def save_state(self, directory: Path, stem: str) -> dict[str, Any]:
        file = f"{stem}.gp.json"
        state = {
            "theta": self.gp_.kernel_.theta.tolist(),
            "X": self.gp_.X_train_.tolist(),
            "y": (self.gp_._y_train_mean + self.gp_._y_train_std * self.gp_.y_train_).tolist(),
        }
        (directory / file).write_text(json.dumps(state))
        return {
            "estimator": "gp",
            "params": self.get_params(),
            "file": file,
            "kernel": str(self.gp_.kernel_),
            "n_features_in": self.n_features_in_,
        }

    @classmethod
    def load_state(cls, directory: Path, entry: Mapping[str, Any]) -> GaussianProcessMixtureRegressor:
        est = cls(**entry["params"])
        state = json.loads((directory / entry["file"]).read_text())
        X = np.array(state["X"], dtype=float)
        kernel = cls._kernel(X.shape[1]).clone_with_theta(np.array(state["theta"], dtype=float))
        # optimizer=None refits only the Cholesky factor at the saved hyperparameters: same predictions.
        est.gp_ = GaussianProcessRegressor(kernel, normalize_y=True, optimizer=None).fit(
            X, np.array(state["y"], dtype=float)
        )
        est.n_features_in_ = int(entry["n_features_in"])
        return est


ESTIMATORS: dict[str, Any] = {
    "lightgbm": LightGBMRegressor,
    "law-blend": LawBlendRegressor,
    "linear": RidgeRegressor,
    "mixing-law": MixingLawRegressor,
    "gp": GaussianProcessMixtureRegressor,
}


def make_estimator(model: str, seed: int = 42, **params: Any) -> _MixtureRegressor:
    """An unfitted regressor by model name (see `MODELS`; `ensemble` is `law-blend`)."""
    model = canonical_model(model)
    if model == "lightgbm":
        return LightGBMRegressor(random_state=seed, **params)
    if model == "law-lightgbm":
        return LightGBMRegressor(random_state=seed, law_residual=True, **params)
    if model == "law-blend":
        return LawBlendRegressor(random_state=seed, **params)
    if model == "mixing-law":
        return MixingLawRegressor(random_state=seed, **params)
    if model == "gp":
        return GaussianProcessMixtureRegressor(random_state=seed, **params)
    return RidgeRegressor(**params)
