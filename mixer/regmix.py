"""RegMix (Liu et al. 2024): the model directory, fitting with checks, and the mixture search.

The regressors live in `mixer.regressors` (re-exported here). `RegMixModel` holds one fitted
estimator per target column, the domain order and the training mixtures; it saves as a directory
with `manifest.json`, each estimator's own text/JSON state and `training_mixtures.parquet` (never
pickle). `fit_regmix` (cross-validation and cross-scale checks beside the trivial baseline, model
selection, the interaction matrix) and `optimize_regmix` (simulate or exact proposer, KL
regulariser, uncertainty penalty, worst mixture, mixture reuse) are the calls the CLI and the
demo make.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixer import optimize as opt
from mixer.exact import SMOOTH_MODELS, kl_to_prior, solve_exact
from mixer.files import atomic_path, write_parquet
from mixer.interaction import interaction_matrix, write_interaction
from mixer.laws import in_convex_hull
from mixer.metrics import out_of_fold
from mixer.mixture import check_domains, check_known, write_mixture
from mixer.model_selection import (
    SCALE_COLUMNS,
    ScaleGroups,
    best_model,
    build_estimator,
    cross_scale,
    cv_scores,
    scale_groups,
)
from mixer.regressors import (  # noqa: F401  (re-exported: the estimators' historical home)
    ALIASES,
    DEFAULT_MODEL,
    ESTIMATORS,
    MODELS,
    GaussianProcessMixtureRegressor,
    LawBlendRegressor,
    LightGBMRegressor,
    MixingLawRegressor,
    RidgeRegressor,
    auto_min_child_samples,
    canonical_model,
    fit_shifted_mixing_law,
    law_predict,
    make_estimator,
)
from mixer.reuse import Reuse, reduced_bounds
from mixer.runs import (
    D,
    domain_name,
    join_on_key,
    load_mixtures,
    load_targets,
    read_runs_table,
    validate_weights,
    weight_columns,
)
from mixer.simplex import check_bounds

MODEL_FORMAT = "datamixer-regmix"
MODEL_VERSION = 2  # 2: mixing-law parameters stored as (log c, log k, t); version 1 still loads
MANIFEST = "manifest.json"
TRAINING_MIXTURES = "training_mixtures.parquet"
CV_REPORT = "cv_report.parquet"
CV_PREDICTIONS = "cv_predictions.parquet"  # each training run's out-of-fold prediction
INTERACTION = "interaction.parquet"


def _as_matrix(X: Any) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D array of mixtures, got shape {X.shape}")
    return X


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
        check_domains(columns, self.domains, "model")
        return mixtures[[columns[d] for d in self.domains]].to_numpy(dtype=float)

    def set_threads(self, n_jobs: int | None) -> None:
        """Prediction threads of every estimator (None: leave as fitted)."""
        if n_jobs is not None:
            for est in self.estimators.values():
                est.set_params(n_jobs=n_jobs)

    def predict(self, X: np.ndarray | pd.DataFrame, n_jobs: int | None = None) -> pd.DataFrame:
        """Predicted target values, one column per target."""
        X = self.matrix(X) if isinstance(X, pd.DataFrame) else _as_matrix(X)
        self.set_threads(n_jobs)
        return pd.DataFrame({t: est.predict(X) for t, est in self.estimators.items()})

    def objective(self, target_weights: Mapping[str, float] | None = None, n_jobs: int | None = None):
        """A function of a weight matrix: the weighted mean of the targets' predictions."""
        weights = resolve_target_weights(self.targets, target_weights)
        self.set_threads(n_jobs)

        def combined(X: np.ndarray) -> np.ndarray:
            X = np.asarray(X, dtype=float)
            total = np.zeros(len(X))
            for target, w in weights.items():
                total += w * self.estimators[target].predict(X)
            return total

        return combined

    def interaction(self) -> pd.DataFrame:
        """(domain, target, effect): each domain's effect on each target over the training mixtures."""
        train = self.matrix(self.training_mixtures)
        return interaction_matrix({t: e.predict for t, e in self.estimators.items()}, self.domains, train)

    def has_std(self) -> bool:
        """Whether every estimator gives a predictive standard deviation (the GP)."""
        return all(isinstance(e, GaussianProcessMixtureRegressor) for e in self.estimators.values())

    def uncertainty(self, target_weights: Mapping[str, float] | None = None):
        """A function of a weight matrix: the target-weighted GP sd, or for other models the L2
        distance to the nearest training mixture (0 on a training mixture)."""
        weights = resolve_target_weights(self.targets, target_weights)
        train = self.matrix(self.training_mixtures)

        def gp_sd(X: np.ndarray) -> np.ndarray:
            return sum(w * self.estimators[t].predict(X, return_std=True)[1] for t, w in weights.items())

        def distance(X: np.ndarray) -> np.ndarray:
            X = np.atleast_2d(np.asarray(X, dtype=float))
            squared = (X**2).sum(1)[:, None] - 2 * X @ train.T + (train**2).sum(1)[None, :]
            return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

        return gp_sd if self.has_std() else distance

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model directory atomically."""
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True)
            entries = []
            for i, (target, est) in enumerate(self.estimators.items()):
                entries.append({"target": target, **est.save_state(tmp, f"target_{i:02d}")})
            frame = pd.DataFrame(self.training_mixtures, columns=self.domains)
            frame.to_parquet(tmp / TRAINING_MIXTURES, index=False)
            manifest = {
                "format": MODEL_FORMAT,
                "version": MODEL_VERSION,
                "model": self.model,
                "domains": self.domains,
                "targets": entries,
                "info": self.info,
            }
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
        model = canonical_model(manifest["model"]) if manifest["model"] in ALIASES else manifest["model"]
        return cls(manifest["domains"], estimators, model, training, manifest.get("info"))


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
            raise ValueError(
                f"loss table: row {row + 1} ({key}={values.index[row]!r}): {targets[col]!r} is not a number"
            )
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


def _column_values(
    mixtures: str | os.PathLike[str] | pd.DataFrame,
    losses: str | os.PathLike[str] | pd.DataFrame,
    index: pd.Index,
    key: str,
    name: str,
) -> np.ndarray | None:
    """Column `name` of the losses (else the mixtures) table for the joined runs; None if absent."""
    for source in (losses, mixtures):
        frame = source if isinstance(source, pd.DataFrame) else read_runs_table(source)
        frame = frame.set_index(key) if key in frame.columns else frame
        if name in frame.columns:
            values = pd.to_numeric(frame[name], errors="coerce").reindex(index).to_numpy(dtype=float)
            if not np.isfinite(values).all():
                raise ValueError(f"column {name!r}: missing or non-numeric for some runs")
            return values
    return None


def _scale_values(
    mixtures: str | os.PathLike[str] | pd.DataFrame,
    losses: str | os.PathLike[str] | pd.DataFrame,
    index: pd.Index,
    key: str,
    scale: str | None,
) -> tuple[str | None, np.ndarray | None, np.ndarray]:
    """The model size (or token count) of each joined run: column `scale`, or by default the first
    of N, D that holds two or more values; and the rows to keep: with sizes as the scale and a D
    column, only each size's final checkpoint (the largest D), so one fit never mixes budgets."""
    keep = np.ones(len(index), dtype=bool)
    for name in [scale] if scale else list(SCALE_COLUMNS):
        values = _column_values(mixtures, losses, index, key, name)
        if values is None or not (scale or len(np.unique(values)) >= 2):
            continue
        tokens = _column_values(mixtures, losses, index, key, D) if name != D else None
        if tokens is not None:
            final = pd.Series(tokens).groupby(values).transform("max").to_numpy()
            keep = tokens == final
        return name, values, keep
    if scale:
        raise ValueError(f"scale column {scale!r} not found in the mixtures or losses table")
    return None, None, keep


@dataclass
class _TrainingRuns:
    """The runs a fit reads: weights (domain columns) and targets, with their scales; the model is
    fitted on `fit_rows` (the smallest scale when there are 2+)."""

    weights: pd.DataFrame
    values: pd.DataFrame
    scale_name: str | None
    groups: ScaleGroups | None
    left_out: int  # earlier checkpoints dropped (only each size's final one is kept)

    @property
    def domains(self) -> list[str]:
        return list(self.weights.columns)

    @property
    def fit_rows(self) -> np.ndarray:
        return self.groups[1] if self.groups is not None else np.ones(len(self.weights), dtype=bool)

    @property
    def X(self) -> np.ndarray:
        return self.weights.to_numpy(dtype=float)[self.fit_rows]


def _training_runs(
    mixtures: str | os.PathLike[str] | pd.DataFrame,
    losses: str | os.PathLike[str] | pd.DataFrame,
    targets: list[str],
    key: str,
    scale: str | None,
    select: str | None,
    cv_folds: int,
) -> _TrainingRuns:
    """The joined, validated runs and their scales; errors when `select` cannot work on them."""
    weights, values = load_training_table(mixtures, losses, targets, key)
    if len(weights) < 2:
        raise ValueError(f"regmix needs at least 2 runs (mixtures with a loss) to fit; got {len(weights)}")
    scale_name, scales, keep = _scale_values(mixtures, losses, weights.index, key, scale)
    if not keep.all():
        weights, values, scales = weights[keep], values[keep], scales[keep] if scales is not None else None
    groups = scale_groups(scales)
    if select == "cross-scale" and groups is None:
        raise ValueError("--select cross-scale needs runs at two or more model sizes (N) or token counts (D)")
    if select == "cv" and not (cv_folds and cv_folds > 1):
        raise ValueError("--select cv needs --cv-folds of 2 or more")
    return _TrainingRuns(weights, values, scale_name, groups, int((~keep).sum()))


def _compare_models(
    model: str,
    select: str | None,
    candidates: Sequence[str],
    runs: _TrainingRuns,
    cv_folds: int,
    seed: int,
    params: Mapping[str, Any] | None,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Every candidate's cross-scale figure (when there are 2+ scales) and, for `select="cv"`, its
    k-fold CV; the model to fit (`model`, or the best by `select`)."""
    values, domains = runs.values, runs.domains
    across: dict[str, Any] = {}
    if runs.groups is not None:
        X_all = runs.weights.to_numpy(dtype=float)
        across = {
            t: cross_scale(
                candidates, X_all, values[t].to_numpy(dtype=float), runs.groups, domains, t, seed, params
            )
            for t in values.columns
        }
    cv_all: dict[str, Any] = {}
    if select == "cv":
        Y = values.to_numpy(dtype=float)[runs.fit_rows]
        cv_all = {
            t: cv_scores(candidates, runs.X, Y[:, j], domains, t, cv_folds, seed, params)
            for j, t in enumerate(values.columns)
        }
        model = best_model({t: {m: r[0] for m, r in per.items()} for t, per in cv_all.items()})
    elif select == "cross-scale":
        model = best_model(across)
    return model, across, cv_all


def fit_regmix(
    mixtures: str | os.PathLike[str] | pd.DataFrame,
    losses: str | os.PathLike[str] | pd.DataFrame,
    targets: str | list[str],
    key: str = "index",
    model: str = DEFAULT_MODEL,
    out: str | os.PathLike[str] | None = None,
    cv_folds: int = 5,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    select: str | None = None,
    scale: str | None = None,
    candidates: Sequence[str] = MODELS,
) -> tuple[RegMixModel, dict[str, Any]]:
    """Fit one regressor per target on (mixture, loss) runs, cross-validate, optionally save.

    Per target, the summary holds k-fold CV metrics (Spearman with bootstrap 95% CI, Pearson, MSE)
    beside the trivial baseline's Spearman and the gap's CI. When the runs hold 2+ scales (column
    `scale`, by default N or D), every model is fitted on the smallest scale and scored on the
    larger ones (`cross_scale`), and the final model is fitted on the smallest scale. `select`
    ("cv" or "cross-scale") picks the model with the best mean Spearman by that figure instead of
    `model`; `candidates` are the models compared (default: all). With `out`, writes the model
    directory, `cv_report.parquet`, `cv_predictions.parquet` and `interaction.parquet`.
    """
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise ValueError("give at least one target column")
    if select not in (None, "cv", "cross-scale"):
        raise ValueError(f"select must be 'cv' or 'cross-scale', got {select!r}")
    model = canonical_model(model)
    candidates = [canonical_model(m) for m in candidates]
    runs = _training_runs(mixtures, losses, targets, key, scale, select, cv_folds)
    model, across, cv_all = _compare_models(model, select, candidates, runs, cv_folds, seed, params)
    estimators, cv, rows = _fit_targets(model, runs, cv_all, cv_folds, seed, params)
    info = {
        "n_runs": len(runs.X),
        "key": key,
        "seed": seed,
        "cv_folds": cv_folds,
        "cv": cv,
        "select": select,
        "scale_column": runs.scale_name,
        "fit_scale": runs.groups[0] if runs.groups else None,
        "cross_scale": across,
        "mixtures": str(mixtures) if not isinstance(mixtures, pd.DataFrame) else None,
        "losses": str(losses) if not isinstance(losses, pd.DataFrame) else None,
    }
    training = runs.weights.reset_index(drop=True)[runs.fit_rows]
    fitted = RegMixModel(runs.domains, estimators, model, training, info)
    summary = _fit_summary(model, runs, targets, cv, select, cv_all, across)
    if out is not None:
        summary.update(_write_fit(out, fitted, rows, runs, key, cv_folds, seed, params))
    return fitted, summary


def _fit_targets(
    model: str,
    runs: _TrainingRuns,
    cv_all: dict[str, Any],
    cv_folds: int,
    seed: int,
    params: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """One fitted `model` per target on the fit rows, its pooled CV figures per target (from
    `cv_all` when the models were compared by CV) and the CV report's rows (per fold, then pooled)."""
    X = runs.X
    estimators: dict[str, Any] = {}
    cv: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for target in runs.values.columns:
        y = runs.values[target].to_numpy(dtype=float)[runs.fit_rows]
        if cv_folds and cv_folds > 1:
            pooled, per_fold = (
                cv_all[target][model]
                if cv_all
                else cv_scores([model], X, y, runs.domains, target, cv_folds, seed, params)[model]
            )
            cv[target] = pooled
            rows += [{"target": target, **r} for r in per_fold]
            pooled_row = {k: v for k, v in pooled.items() if k not in ("folds", "baseline")}
            rows.append({"target": target, "fold": -1, **pooled_row})
        estimators[target] = build_estimator(model, seed, params).fit(X, y)
    return estimators, cv, rows


def _fit_summary(
    model: str,
    runs: _TrainingRuns,
    targets: list[str],
    cv: dict[str, Any],
    select: str | None,
    cv_all: dict[str, Any],
    across: dict[str, Any],
) -> dict[str, Any]:
    """The summary `fit_regmix` returns (and the CLI prints)."""
    summary: dict[str, Any] = {
        "model": model,
        "n": len(runs.X),
        "domains": len(runs.domains),
        "targets": targets,
        "cv": cv,
        "select": select,
    }
    if cv_all:
        summary["cv_by_model"] = {t: {m: r[0] for m, r in per.items()} for t, per in cv_all.items()}
    if runs.groups is not None:
        summary.update(
            {
                "scale_column": runs.scale_name,
                "fit_scale": runs.groups[0],
                "cross_scale": across,
                "earlier_checkpoints_left_out": runs.left_out,
            }
        )
    return summary


def _write_fit(
    out: str | os.PathLike[str],
    fitted: RegMixModel,
    rows: list[dict[str, Any]],
    runs: _TrainingRuns,
    key: str,
    cv_folds: int,
    seed: int,
    params: Mapping[str, Any] | None,
) -> dict[str, str]:
    """The model directory with its CV report, out-of-fold predictions and interaction matrix."""
    fitted.save(out)
    path = Path(out)
    if rows:
        write_parquet(path / CV_REPORT, pd.DataFrame(rows))
        index = runs.weights.index[runs.fit_rows]
        oof = cv_predictions(
            fitted.model, runs.X, runs.values[runs.fit_rows], index, key, cv_folds, seed, params
        )
        write_parquet(path / CV_PREDICTIONS, oof)
    write_interaction(fitted.interaction(), path / INTERACTION)
    return {"out": str(out), "interaction": str(path / INTERACTION)}


def cv_predictions(
    model: str,
    X: np.ndarray,
    values: pd.DataFrame,
    index: pd.Index,
    key: str,
    folds: int,
    seed: int,
    params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Each run's out-of-fold prediction by `model` (the same seeded split as its CV figures), per
    target: the rows behind a predicted-vs-true plot."""
    frames = []
    for target in values.columns:
        y = values[target].to_numpy(dtype=float)
        oof, _ = out_of_fold(build_estimator(model, seed, params), X, y, folds, seed)
        frames.append(pd.DataFrame({key: index, "target": target, "true": y, "predicted": oof}))
    return pd.concat(frames, ignore_index=True)


def _domain_vector(
    mapping: Mapping[str, float] | None, domains: list[str], what: str, default: float
) -> np.ndarray:
    mapping = dict(mapping or {})
    check_known(mapping, domains, what, "model")
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
    proposer: str = "simulate",
    kl_reg: float = 0.0,
    worst: bool = False,
    uncertainty_penalty: float = 0.0,
    reuse: Reuse | None = None,
) -> dict[str, Any]:
    """The mixture with the lowest predicted loss (the highest with `worst`, Olmix's counterfactual).

    `proposer="simulate"` is RegMix's simulate-and-average search; `"exact"` (smooth models:
    mixing-law, linear, gp) also solves with scipy's SLSQP and writes that answer; the summary
    reports both. The objective adds `kl_reg` x KL(h || prior) (Olmix's `kl_reg`) and
    `uncertainty_penalty` x the model's uncertainty at h (the GP's predictive sd, or for other
    models the L2 distance to the nearest training mixture). `reuse` searches only the frozen
    virtual domain and the changed domains (`mixer.reuse`).
    `prior` is domain -> token count or share (default: the mean of the training mixtures);
    `caps`/`floors` bound each domain's weight; `target_weights` combines several fitted targets
    (default: their mean); `n_jobs` sets LightGBM's prediction threads (default: the model's, 1).
    With `out` (a .yaml path), writes the mixture YAML, the same as JSON,
    and `<stem>.topk.parquet`. Returns the summary the CLI prints.
    """
    model_dir = None if isinstance(model, RegMixModel) else str(model)
    model = model if isinstance(model, RegMixModel) else RegMixModel.load(model)
    _check_proposer(model, proposer, kl_reg, uncertainty_penalty)
    problem = _Problem.of(model, prior, caps, floors, target_weights, n_jobs, reuse)
    score = problem.score(-1.0 if worst else 1.0, kl_reg, uncertainty_penalty)
    result = opt.search_mixture(
        score, problem.search_prior, problem.upper, problem.lower, n_draws, top_k, concentration, search, seed
    )
    candidates = {"simulate": problem.expand(result.weights)[0]}
    if proposer == "exact":
        starts = [result.weights, problem.search_prior, result.top_draws[0]]
        candidates["exact"] = problem.expand(solve_exact(score, problem.lower, problem.upper, starts)[0])[0]
    settings = {"worst": worst, "kl_reg": kl_reg, "uncertainty_penalty": uncertainty_penalty}
    options = {"n_draws": n_draws, "search": search, "concentration": concentration, "seed": seed}
    summary = _optimum_summary(problem, result, candidates, proposer, settings, options, model.has_std())
    if out is not None:
        provenance = _provenance(summary, model_dir or model.model, model.model, caps, floors)
        summary.update(
            _write_optimum(Path(out), summary["weights"], provenance, _topk_frame(problem, result))
        )
    return summary


def _check_proposer(model: RegMixModel, proposer: str, kl_reg: float, uncertainty_penalty: float) -> None:
    if proposer not in ("simulate", "exact"):
        raise ValueError(f"proposer must be 'simulate' or 'exact', got {proposer!r}")
    if proposer == "exact" and model.model not in SMOOTH_MODELS:
        raise ValueError(
            f"--proposer exact needs a smooth model ({', '.join(SMOOTH_MODELS)}); this model is "
            f"{model.model!r}: refit with --model mixing-law or use --proposer simulate"
        )
    if kl_reg < 0 or uncertainty_penalty < 0:
        raise ValueError("--kl-reg and --uncertainty-penalty must be >= 0")


def _full_rows(Z: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.asarray(Z, dtype=float))


@dataclass
class _Problem:
    """What a RegMix search needs: the model's predictions and uncertainty over full mixtures, the
    prior, and the search space (with `reuse`, the reduced one; `expand` maps it back)."""

    domains: list[str]
    train: np.ndarray
    prior: np.ndarray
    prior_source: str
    targets: dict[str, float]
    predicted: Callable[[np.ndarray], np.ndarray]
    uncertainty: Callable[[np.ndarray], np.ndarray]
    lower: np.ndarray
    upper: np.ndarray
    search_prior: np.ndarray
    expand: Callable[[np.ndarray], np.ndarray] = _full_rows
    reuse: Reuse | None = None

    @classmethod
    def of(
        cls,
        model: RegMixModel,
        prior: Mapping[str, float] | None,
        caps: Mapping[str, float] | None,
        floors: Mapping[str, float] | None,
        target_weights: Mapping[str, float] | None,
        n_jobs: int | None,
        reuse: Reuse | None,
    ) -> _Problem:
        """The problem of searching `model` within `floors` and `caps` (domain -> weight)."""
        domains = model.domains
        train = model.matrix(model.training_mixtures)
        prior_vec, prior_source = _prior_vector(prior, domains, train)
        targets = resolve_target_weights(model.targets, target_weights)
        lower = _domain_vector(floors, domains, "floor", 0.0)
        upper = _domain_vector(caps, domains, "cap", 1.0)
        check_bounds(lower, upper, list(domains))  # errors name domains, not positions
        parts = (domains, train, prior_vec, prior_source, targets)
        models = (model.objective(targets, n_jobs=n_jobs), model.uncertainty(targets))
        if reuse is None:
            return cls(*parts, *models, lower, upper, prior_vec)
        if list(reuse.domains) != domains:
            raise ValueError(
                f"--reuse: the model's domains {domains} differ from the reuse domains {list(reuse.domains)}"
            )
        lower, upper = reduced_bounds(reuse, lower, upper)
        return cls(*parts, *models, lower, upper, reuse.reduce(prior_vec[None, :])[0], reuse.expand, reuse)

    def score(
        self, sign: float, kl_reg: float, uncertainty_penalty: float
    ) -> Callable[[np.ndarray], np.ndarray]:
        """The searched objective of (reduced) mixtures: sign x predicted loss + kl_reg x KL(h || prior)
        + uncertainty_penalty x uncertainty(h)."""

        def score(Z: np.ndarray) -> np.ndarray:
            X = self.expand(Z)
            value = sign * self.predicted(X)
            if kl_reg:
                value = value + kl_reg * kl_to_prior(X, self.prior)
            if uncertainty_penalty:
                value = value + uncertainty_penalty * self.uncertainty(X)
            return value

        return score

    def report(self, h: np.ndarray) -> dict[str, Any]:
        """One candidate mixture's weights, predicted loss, KL to the prior and uncertainty."""
        return {
            "weights": dict(zip(self.domains, h.tolist(), strict=True)),
            "predicted": float(self.predicted(h[None, :])[0]),
            "kl_to_prior": float(kl_to_prior(h, self.prior)[0]),
            "uncertainty": float(self.uncertainty(h[None, :])[0]),
        }


def _optimum_summary(
    problem: _Problem,
    result: opt.SearchResult,
    candidates: dict[str, np.ndarray],
    proposer: str,
    settings: dict[str, Any],
    options: dict[str, Any],
    has_std: bool,
) -> dict[str, Any]:
    """The summary `optimize_regmix` returns (and the CLI prints)."""
    chosen = candidates[proposer]
    report = {name: problem.report(h) for name, h in candidates.items()}
    top_predicted = problem.predicted(problem.expand(result.top_draws))
    summary: dict[str, Any] = {
        "weights": dict(zip(problem.domains, chosen.tolist(), strict=True)),
        "predicted": report[proposer]["predicted"],
        "proposer": proposer,
        **settings,
        "proposals": report if len(report) > 1 else None,
        "kl_to_prior": report[proposer]["kl_to_prior"],
        "uncertainty": report[proposer]["uncertainty"],
        "uncertainty_kind": "gp sd" if has_std else "L2 to nearest training mixture",
        "in_training_hull": in_convex_hull(chosen, problem.train),
        "topk_predicted_mean": float(top_predicted.mean()),
        "topk_predicted_min": float(top_predicted.min()),
        "topk_predicted_max": float(top_predicted.max()),
        "topk_weight_std_max": float(result.top_draws.std(axis=0).max()),
        "topk_l1_to_mean": float(np.abs(result.top_draws - result.weights).sum(axis=1).mean()),
        "n_draws": options["n_draws"],
        "top_k": len(result.top_scores),
        "n_evaluated": result.n_evaluated,
        "search": options["search"],
        "prior": problem.prior_source,
        "concentration": options["concentration"],
        "seed": options["seed"],
        "targets": problem.targets,
        **opt.coverage(chosen, problem.train, problem.domains),
    }
    if problem.reuse is not None:
        summary["reuse"] = {
            "changed": list(problem.reuse.changed),
            "frozen": list(problem.reuse.frozen),
            "virtual_weight": float(problem.reuse.reduce(chosen[None, :])[0, 0]),
        }
    return summary


def _prior_vector(
    prior: Mapping[str, float] | None, domains: list[str], train: np.ndarray
) -> tuple[np.ndarray, str]:
    """The prior as shares over `domains` (default: the training-mixture mean) and its source."""
    if prior:
        vec, source = _domain_vector(prior, domains, "prior", 0.0), "given"
    else:
        vec, source = train.mean(axis=0), "training-mixture mean"
    if vec.sum() <= 0 or np.any(vec < 0):
        raise ValueError("prior must be >= 0 for every domain and not all 0")
    return vec / vec.sum(), source


PROVENANCE_KEYS = (
    "seed",
    "targets",
    "n_draws",
    "top_k",
    "prior",
    "concentration",
    "search",
    "predicted",
    "proposer",
    "worst",
    "kl_reg",
    "uncertainty_penalty",
)


def _provenance(
    summary: Mapping[str, Any],
    model_ref: str,
    model_kind: str,
    caps: Mapping[str, float] | None,
    floors: Mapping[str, float] | None,
) -> dict[str, Any]:
    """The optimum's provenance: the model, the search settings, reuse, caps and floors."""
    provenance: dict[str, Any] = {"method": "regmix", "model": model_ref, "model_kind": model_kind}
    provenance.update({k: summary[k] for k in PROVENANCE_KEYS})
    if "reuse" in summary:
        provenance["reuse"] = summary["reuse"]
    if caps:
        provenance["caps"] = {d: float(v) for d, v in caps.items()}
    if floors:
        provenance["floors"] = {d: float(v) for d, v in floors.items()}
    return provenance


def _topk_frame(problem: _Problem, result: opt.SearchResult) -> pd.DataFrame:
    """The top-k draws, best first: rank, predicted loss, searched score and weights."""
    top = problem.expand(result.top_draws)
    report = pd.DataFrame(top, columns=[f"h_{d}" for d in problem.domains])
    report.insert(0, "score", result.top_scores)
    report.insert(0, "predicted", problem.predicted(top))
    report.insert(0, "rank", np.arange(1, len(report) + 1))
    return report


def _write_optimum(
    out: Path, mixture: Mapping[str, float], provenance: Mapping[str, Any], topk: pd.DataFrame
) -> dict[str, str]:
    """The mixture YAML and JSON, and the top-k draws as Parquet; returns their paths."""
    write_mixture(out, mixture, provenance)
    json_path = out.with_suffix(".json")
    write_mixture(json_path, mixture, provenance)
    topk_path = out.with_name(out.stem + ".topk.parquet")
    write_parquet(topk_path, topk)
    return {"out": str(out), "json": str(json_path), "topk_report": str(topk_path)}
