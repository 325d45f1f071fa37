"""RegMix regressors (Liu et al. 2024): domain weights -> a target loss, and the model directory.

Two scikit-learn estimators (`LightGBMRegressor`, `RidgeRegressor`) map a mixture (one weight per
domain) to one loss. `RegMixModel` holds one fitted estimator per target column, the domain order
and the training mixtures; it saves as a directory with `manifest.json`, LightGBM's own text
model per target and `training_mixtures.parquet` (never pickle). `fit_regmix` and
`optimize_regmix` are the two calls the CLI and the demo make.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize as sopt
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import Ridge
from threadpoolctl import threadpool_limits

from mixer import optimize as opt
from mixer.files import atomic_path, write_parquet
from mixer.metrics import cross_validate
from mixer.mixture import write_mixture
from mixer.runs import (
    domain_name,
    join_on_key,
    load_mixtures,
    load_targets,
    validate_weights,
    weight_columns,
)

MODEL_FORMAT = "datamixer-regmix"
MODEL_VERSION = 1
MANIFEST = "manifest.json"
TRAINING_MIXTURES = "training_mixtures.parquet"
CV_REPORT = "cv_report.parquet"
MODELS = ("lightgbm", "law-lightgbm", "ensemble", "linear")
LOG_EPS = 1e-3


def _as_matrix(X: Any) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D array of mixtures, got shape {X.shape}")
    return X


def _features(X: np.ndarray, log_features: bool) -> np.ndarray:
    """Weights, plus log(weight + 1e-3) when asked (trees split the same; ridge gains curvature)."""
    return np.hstack([X, np.log(X + LOG_EPS)]) if log_features else X


def auto_min_child_samples(n: int) -> int:
    """Leaf size that lets trees split from 32 runs up and equals LightGBM's default (20) at 500+.

    LightGBM's defaults (20 per leaf, 3 per bin) leave a 32-run fit with no legal split, so the
    model predicts a constant; RegMix's recipe only works from about 64 runs.
    """
    return int(np.clip(n // 25, 2, 20))


# ---------------------------------------------------------------------------------------------
# The exponential mixing law of Ye et al. (2024), L = c + k exp(sum_j t_j h_j), used as a smooth
# base under the trees: it extrapolates where trees go flat.


def _law_predict(params: np.ndarray, X: np.ndarray) -> np.ndarray:
    return params[0] + params[1] * np.exp(np.clip(X @ params[2:], -50, 50))


LAW_STARTS = 5


def fit_exp_law(X: np.ndarray, y: np.ndarray, starts: int = LAW_STARTS, seed: int = 0) -> np.ndarray:
    """Huber least squares of L = c + k exp(h . t) from several starts; returns [c, k, t...].

    BLAS is held to one thread: on a busy 2-core machine OpenBLAS threads on these tiny
    matrices made the fit 20x slower (130 s against 6 s). On the RegMix runs 1, 3, 5, 10 and 20
    starts all reached the same optimum, hence 5.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_exp_law(X, y, starts, seed)


def _fit_exp_law(X: np.ndarray, y: np.ndarray, starts: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    scale = float(np.std(y)) or 1.0

    def residual(p: np.ndarray) -> np.ndarray:
        return _law_predict(p, X) - y

    def jacobian(p: np.ndarray) -> np.ndarray:
        e = np.exp(np.clip(X @ p[2:], -50, 50))
        return np.column_stack([np.ones(len(X)), e, (p[1] * e)[:, None] * X])

    for _ in range(starts):
        p0 = np.concatenate([[y.min() * rng.uniform(0.5, 1.0), scale * rng.uniform(0.5, 2.0)],
                             rng.normal(0.0, 1.0, X.shape[1])])
        fit = sopt.least_squares(residual, p0, jac=jacobian, loss="huber", f_scale=0.1 * scale,
                                 max_nfev=500)
        if best is None or fit.cost < best[0]:
            best = (float(fit.cost), fit.x)
    assert best is not None
    return best[1]


class LightGBMRegressor(RegressorMixin, BaseEstimator):
    """RegMix's gradient-boosted trees: 1,000 trees at learning rate 0.01, no early stopping.

    `min_child_samples=None` picks a leaf size that works from 32 runs (see
    `auto_min_child_samples`); `law_residual=True` boosts on the residuals of a fitted
    exponential mixing law; `log_features` adds log weights; `monotone_constraints` goes to
    LightGBM as is (one entry per feature). `n_jobs=1` by default: on a busy 2-core machine
    LightGBM's OpenMP training threads spin-wait and a 1-second fit took 50 seconds.
    """

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

        X = _as_matrix(X)
        y = np.asarray(y, dtype=float).ravel()
        self.n_features_in_ = X.shape[1]
        self.law_ = fit_exp_law(X, y, self.law_starts, self.random_state) if self.law_residual else None
        base = _law_predict(self.law_, X) if self.law_ is not None else 0.0
        model = lgb.LGBMRegressor(**self.lgb_params(len(y)))
        model.fit(_features(X, self.log_features), y - base)
        self.booster_ = model.booster_
        return self

    def predict(self, X: Any, n_jobs: int | None = None) -> np.ndarray:
        X = _as_matrix(X)
        threads = self.n_jobs if n_jobs is None else n_jobs
        pred = self.booster_.predict(_features(X, self.log_features), num_threads=threads)
        if getattr(self, "law_", None) is not None:
            pred = pred + _law_predict(self.law_, X)
        return np.asarray(pred, dtype=float)

    def save_state(self, directory: Path, stem: str) -> dict[str, Any]:
        """Write LightGBM's text model; return the manifest entry."""
        file = f"{stem}.lightgbm.txt"
        (directory / file).write_text(self.booster_.model_to_string())
        law = None if self.law_ is None else [float(v) for v in self.law_]
        return {"estimator": "lightgbm", "params": self.get_params(), "file": file, "law": law,
                "n_features_in": self.n_features_in_}

    @classmethod
    def load_state(cls, directory: Path, entry: Mapping[str, Any]) -> LightGBMRegressor:
        import lightgbm as lgb

        est = cls(**entry["params"])
        est.booster_ = lgb.Booster(model_str=(directory / entry["file"]).read_text())
        est.law_ = None if entry.get("law") is None else np.array(entry["law"], dtype=float)
        est.n_features_in_ = int(entry["n_features_in"])
        return est


class LawBlendRegressor(RegressorMixin, BaseEstimator):
    """Mean of RegMix's LightGBM and a LightGBM boosted on an exponential mixing law's residuals.

    The best of the variants in bench/regmix_accuracy.py on the RegMix runs (Spearman 0.994 at
    1M and 0.989 at 60M against 0.990 / 0.986 for LightGBM alone); the law part also keeps
    predictions sloped where the training mixtures are sparse.
    """

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
        params = self.get_params()
        self.plain_ = LightGBMRegressor(**params).fit(X, y)
        self.residual_ = LightGBMRegressor(law_residual=True, **params).fit(X, y)
        self.n_features_in_ = self.plain_.n_features_in_
        return self

    def predict(self, X: Any, n_jobs: int | None = None) -> np.ndarray:
        return 0.5 * (self.plain_.predict(X, n_jobs) + self.residual_.predict(X, n_jobs))

    def save_state(self, directory: Path, stem: str) -> dict[str, Any]:
        return {"estimator": "law-blend", "params": self.get_params(), "n_features_in": self.n_features_in_,
                "members": [self.plain_.save_state(directory, f"{stem}.plain"),
                            self.residual_.save_state(directory, f"{stem}.law_residual")]}

    @classmethod
    def load_state(cls, directory: Path, entry: Mapping[str, Any]) -> LawBlendRegressor:
        est = cls(**entry["params"])
        est.plain_, est.residual_ = (LightGBMRegressor.load_state(directory, m) for m in entry["members"])
        est.n_features_in_ = int(entry["n_features_in"])
        return est


class RidgeRegressor(RegressorMixin, BaseEstimator):
    """RegMix's linear baseline: ridge regression (alpha 1e-3) on the domain weights."""

    def __init__(self, alpha: float = 1e-3, log_features: bool = False) -> None:
        self.alpha = alpha
        self.log_features = log_features

    def fit(self, X: Any, y: Any) -> RidgeRegressor:
        X = _as_matrix(X)
        self.n_features_in_ = X.shape[1]
        ridge = Ridge(alpha=self.alpha).fit(_features(X, self.log_features), np.ravel(y))
        self.coef_ = ridge.coef_.astype(float)
        self.intercept_ = float(ridge.intercept_)
        return self

    def predict(self, X: Any, n_jobs: int | None = None) -> np.ndarray:
        return _features(_as_matrix(X), self.log_features) @ self.coef_ + self.intercept_

    def save_state(self, directory: Path, stem: str) -> dict[str, Any]:
        return {"estimator": "linear", "params": self.get_params(), "coef": self.coef_.tolist(),
                "intercept": self.intercept_, "n_features_in": self.n_features_in_}

    @classmethod
    def load_state(cls, directory: Path, entry: Mapping[str, Any]) -> RidgeRegressor:
        est = cls(**entry["params"])
        est.coef_ = np.array(entry["coef"], dtype=float)
        est.intercept_ = float(entry["intercept"])
        est.n_features_in_ = int(entry["n_features_in"])
        return est


ESTIMATORS = {"lightgbm": LightGBMRegressor, "law-blend": LawBlendRegressor, "linear": RidgeRegressor}


def make_estimator(
    model: str, seed: int = 42, **params: Any
) -> LightGBMRegressor | LawBlendRegressor | RidgeRegressor:
    """`lightgbm` (RegMix's recipe), `law-lightgbm` (trees on a mixing law's residuals),
    `ensemble` (the mean of those two), `linear` (ridge)."""
    if model == "lightgbm":
        return LightGBMRegressor(random_state=seed, **params)
    if model == "law-lightgbm":
        return LightGBMRegressor(random_state=seed, law_residual=True, **params)
    if model == "ensemble":
        return LawBlendRegressor(random_state=seed, **params)
    if model == "linear":
        return RidgeRegressor(**params)
    raise ValueError(f"unknown model {model!r}; choose one of {list(MODELS)}")


# ---------------------------------------------------------------------------------------------


class RegMixModel:
    """One fitted regressor per target over a fixed list of domains, saved as a directory."""

    def __init__(
        self,
        domains: list[str],
        estimators: dict[str, Any],
        model: str,
        training_mixtures: pd.DataFrame,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.domains = list(domains)
        self.estimators = dict(estimators)
        self.model = model
        self.training_mixtures = training_mixtures
        self.info = dict(info or {})

    @property
    def targets(self) -> list[str]:
        return list(self.estimators)

    def matrix(self, mixtures: pd.DataFrame) -> np.ndarray:
        """The weights of `mixtures` in this model's domain order; errors name missing domains."""
        columns = {domain_name(str(c)): c for c in mixtures.columns}
        missing = [d for d in self.domains if d not in columns]
        extra = sorted(set(columns) - set(self.domains))
        if missing or extra:
            raise ValueError(
                f"mixture domains do not match the model's: missing {missing}, unexpected {extra}"
            )
        return mixtures[[columns[d] for d in self.domains]].to_numpy(dtype=float)

    def predict(self, X: np.ndarray | pd.DataFrame, n_jobs: int | None = None) -> pd.DataFrame:
        """Predicted target values, one column per target."""
        X = self.matrix(X) if isinstance(X, pd.DataFrame) else _as_matrix(X)
        return pd.DataFrame({t: est.predict(X, n_jobs=n_jobs) for t, est in self.estimators.items()})

    def objective(self, target_weights: Mapping[str, float] | None = None, n_jobs: int | None = None):
        """A function of a weight matrix: the weighted mean of the targets' predictions."""
        weights = resolve_target_weights(self.targets, target_weights)

        def combined(X: np.ndarray) -> np.ndarray:
            X = np.asarray(X, dtype=float)
            total = np.zeros(len(X))
            for target, w in weights.items():
                total += w * self.estimators[target].predict(X, n_jobs=n_jobs)
            return total

        return combined

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model directory atomically."""
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True)
            entries = []
            for i, (target, est) in enumerate(self.estimators.items()):
                entries.append({"target": target, **est.save_state(tmp, f"target_{i:02d}")})
            frame = pd.DataFrame(self.training_mixtures, columns=self.domains)
            frame.to_parquet(tmp / TRAINING_MIXTURES, index=False)
            manifest = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "model": self.model,
                        "domains": self.domains, "targets": entries, "info": self.info}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RegMixModel:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"{path}: not a RegMix model directory (no {MANIFEST})")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != MODEL_FORMAT:
            raise ValueError(f"{manifest_path}: format {manifest.get('format')!r}, not {MODEL_FORMAT!r}")
        estimators = {}
        for entry in manifest["targets"]:
            klass = ESTIMATORS[entry["estimator"]]
            estimators[entry["target"]] = klass.load_state(path, entry)
        training = pd.read_parquet(path / TRAINING_MIXTURES)
        return cls(manifest["domains"], estimators, manifest["model"], training, manifest.get("info"))


def resolve_target_weights(
    targets: list[str], target_weights: Mapping[str, float] | None
) -> dict[str, float]:
    """Target -> weight summing to 1; default: every fitted target, equally."""
    if not target_weights:
        return {t: 1.0 / len(targets) for t in targets}
    unknown = [t for t in target_weights if t not in targets]
    if unknown:
        raise ValueError(f"target weight(s) for {unknown}, but the model was fitted on {targets}")
    values = {t: float(w) for t, w in target_weights.items()}
    if any(w < 0 or not math.isfinite(w) for w in values.values()) or sum(values.values()) <= 0:
        raise ValueError(f"target weights must be >= 0 and not all 0, got {values}")
    total = sum(values.values())
    return {t: w / total for t, w in values.items() if w > 0}


def load_training_table(
    mixtures: str | os.PathLike[str] | pd.DataFrame,
    losses: str | os.PathLike[str] | pd.DataFrame,
    targets: list[str],
    key: str = "index",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validated weights (domain columns) and targets, joined on `key` via mixer.runs."""
    weights = _load_mixture_frame(mixtures, key)
    if isinstance(losses, pd.DataFrame):
        frame = losses.set_index(key) if key in losses.columns else losses
        missing = [t for t in targets if t not in frame.columns]
        if missing:
            raise ValueError(f"loss table: column(s) {missing} not found (columns: {list(frame.columns)})")
        values = frame[targets].astype(float)
        bad = ~np.isfinite(values.to_numpy())
        if bad.any():
            row, col = (int(i[0]) for i in np.nonzero(bad))
            raise ValueError(f"loss table: row {row + 1} ({key}={values.index[row]!r}): "
                             f"{targets[col]!r} is not a number")
    else:
        values = load_targets(losses, targets, key)
    joined = join_on_key(weights, values)
    return joined[weights.columns], joined[targets]


def _load_mixture_frame(mixtures: str | os.PathLike[str] | pd.DataFrame, key: str) -> pd.DataFrame:
    if isinstance(mixtures, pd.DataFrame):
        frame = mixtures.set_index(key) if key in mixtures.columns else mixtures
        columns = weight_columns(frame)
        validate_weights(frame.reset_index(), columns, key if key in mixtures.columns else None)
        frame = frame[columns].astype(float)
    else:
        frame = load_mixtures(mixtures, key)
    return frame.rename(columns=lambda c: domain_name(str(c)))


def fit_regmix(
    mixtures: str | os.PathLike[str] | pd.DataFrame,
    losses: str | os.PathLike[str] | pd.DataFrame,
    targets: str | list[str],
    key: str = "index",
    model: str = "lightgbm",
    out: str | os.PathLike[str] | None = None,
    cv_folds: int = 5,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> tuple[RegMixModel, dict[str, Any]]:
    """Fit one regressor per target on (mixture, loss) runs, cross-validate, optionally save.

    Returns the model and a summary (per target: k-fold Spearman with bootstrap 95% CI,
    Pearson, MSE). With `out`, writes the model directory and `cv_report.parquet` inside it.
    """
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise ValueError("give at least one target column")
    weights, values = load_training_table(mixtures, losses, targets, key)
    X = weights.to_numpy(dtype=float)
    estimators: dict[str, Any] = {}
    cv: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for target in targets:
        y = values[target].to_numpy(dtype=float)
        est = make_estimator(model, **dict(params or {}))
        if cv_folds and cv_folds > 1:
            pooled, per_fold = cross_validate(est, X, y, folds=cv_folds, seed=seed)
            cv[target] = pooled
            rows += [{"target": target, **r} for r in per_fold]
            rows.append({"target": target, "fold": -1, **{k: v for k, v in pooled.items() if k != "folds"}})
        estimators[target] = est.fit(X, y)
    info = {"n_runs": len(X), "key": key, "seed": seed, "cv_folds": cv_folds, "cv": cv,
            "mixtures": str(mixtures) if not isinstance(mixtures, pd.DataFrame) else None,
            "losses": str(losses) if not isinstance(losses, pd.DataFrame) else None}
    fitted = RegMixModel(list(weights.columns), estimators, model, weights.reset_index(drop=True), info)
    summary: dict[str, Any] = {"model": model, "n": len(X), "domains": len(weights.columns),
                               "targets": targets, "cv": cv}
    if out is not None:
        fitted.save(out)
        if rows:
            write_parquet(Path(out) / CV_REPORT, pd.DataFrame(rows))
        summary["out"] = str(out)
    return fitted, summary


def _domain_vector(mapping: Mapping[str, float] | None, domains: list[str], what: str,
                   default: float) -> np.ndarray:
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - set(domains))
    if unknown:
        raise ValueError(f"{what} given for unknown domain(s) {unknown}; the model's domains are {domains}")
    return np.array([float(mapping.get(d, default)) for d in domains])


def optimize_regmix(
    model: RegMixModel | str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    n_draws: int = opt.N_DRAWS,
    top_k: int = opt.TOP_K,
    prior: Mapping[str, float] | None = None,
    caps: Mapping[str, float] | None = None,
    floors: Mapping[str, float] | None = None,
    target_weights: Mapping[str, float] | None = None,
    concentration: float = opt.CONCENTRATION,
    search: str = "refine",
    seed: int = 0,
    n_jobs: int | None = None,
) -> dict[str, Any]:
    """RegMix's simulate-and-average search for the mixture with the lowest predicted loss.

    `prior` is domain -> token count or share (default: the mean of the training mixtures);
    `caps`/`floors` bound each domain's weight; `target_weights` combines several fitted targets
    (default: their mean); `n_jobs` sets LightGBM's prediction threads (default: the model's, 1).
    With `out` (a .yaml path), writes the mixture YAML, the same as JSON,
    and `<stem>.topk.parquet`. Returns the summary the CLI prints.
    """
    model_dir = None
    if not isinstance(model, RegMixModel):
        model_dir = str(model)
        model = RegMixModel.load(model)
    domains = model.domains
    train = model.matrix(model.training_mixtures)
    if prior:
        prior_vec = _domain_vector(prior, domains, "prior", 0.0)
        prior_source = "given"
    else:
        prior_vec = train.mean(axis=0)
        prior_source = "training-mixture mean"
    if prior_vec.sum() <= 0 or np.any(prior_vec < 0):
        raise ValueError("prior must be >= 0 for every domain and not all 0")
    weights_of_targets = resolve_target_weights(model.targets, target_weights)
    result = opt.optimize_mixture(
        model.objective(weights_of_targets, n_jobs=n_jobs),
        prior=prior_vec / prior_vec.sum(),
        caps=_domain_vector(caps, domains, "cap", 1.0),
        floors=_domain_vector(floors, domains, "floor", 0.0),
        n_draws=n_draws, top_k=top_k, concentration=concentration, search=search, seed=seed,
    )
    coverage = opt.coverage(result.weights, train, domains)
    mixture = dict(zip(domains, result.weights.tolist(), strict=True))
    summary: dict[str, Any] = {
        "weights": mixture,
        "predicted": float(model.objective(weights_of_targets)(result.weights[None, :])[0]),
        "topk_predicted_mean": float(result.top_scores.mean()),
        "topk_predicted_min": float(result.top_scores.min()),
        "topk_predicted_max": float(result.top_scores.max()),
        "topk_weight_std_max": float(result.top_draws.std(axis=0).max()),
        "topk_l1_to_mean": float(np.abs(result.top_draws - result.weights).sum(axis=1).mean()),
        "n_draws": n_draws, "top_k": len(result.top_scores), "n_evaluated": result.n_evaluated,
        "search": search, "prior": prior_source, "concentration": concentration, "seed": seed,
        "targets": weights_of_targets, **coverage,
    }
    if out is not None:
        out = Path(out)
        provenance = {"method": "regmix", "model": model_dir or model.model, "model_kind": model.model,
                      "seed": seed, "targets": weights_of_targets, "n_draws": n_draws, "top_k": top_k,
                      "prior": prior_source, "concentration": concentration, "search": search,
                      "predicted": summary["predicted"]}
        if caps:
            provenance["caps"] = {d: float(v) for d, v in caps.items()}
        if floors:
            provenance["floors"] = {d: float(v) for d, v in floors.items()}
        write_mixture(out, mixture, provenance)
        json_path = out.with_suffix(".json")
        write_mixture(json_path, mixture, provenance)
        report = pd.DataFrame(result.top_draws, columns=[f"h_{d}" for d in domains])
        report.insert(0, "predicted", result.top_scores)
        report.insert(0, "rank", np.arange(1, len(report) + 1))
        topk_path = out.with_name(out.stem + ".topk.parquet")
        write_parquet(topk_path, report)
        summary.update({"out": str(out), "json": str(json_path), "topk_report": str(topk_path)})
    return summary
