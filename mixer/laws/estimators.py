"""Law estimators in scikit-learn style: hyperparameters in `__init__`, `fit(runs)` returns self,
fitted attributes end in `_`, saved as JSON (never pickle). The math is the form's
(`mixer.laws.forms`); the searches are `mixer.laws.fitting`'s."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from mixer.identify import check_identifiable
from mixer.laws import fitting
from mixer.laws.forms import FORMS, Features, LawForm
from mixer.mixture import check_domains
from mixer.runs import LOSS, WEIGHT_PREFIX, check_positive, domain_name, load_runs, validate_weights

FORMAT = "datamixer-law/1"


def _check_positive_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    return check_positive(frame, column, "run" if "run" in frame.columns else None)


def data_hash(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """sha256 of the named columns' names and float64 values, in row order."""
    digest = hashlib.sha256()
    for column in columns:
        digest.update(str(column).encode() + b"\0")
        digest.update(np.ascontiguousarray(frame[column].to_numpy(dtype=np.float64)).tobytes())
    return digest.hexdigest()


def percentile_interval(values: np.ndarray, point: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap percentile interval, widened where needed so it contains the point estimate."""
    if values.shape[0] == 0:
        return point.copy(), point.copy()
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(values, [tail, 100.0 - tail], axis=0)
    return np.minimum(low, point), np.maximum(high, point)


def loss_components(frame: pd.DataFrame, total: str, rtol: float = 1e-6) -> dict[str, float] | None:
    """Weights w with frame[total] = sum_j w_j frame[total_j] over the table's per-domain columns
    `<total>_<domain>` (non-negative least squares on its rows, more rows than columns), if they
    reproduce `total` to `rtol` on every row (e.g. the Pile's validation weights, or a plain
    mean); None otherwise."""
    from scipy.optimize import nnls

    columns = [c for c in frame.columns if str(c).startswith(f"{total}_")]
    if not columns or total not in frame.columns:
        return None
    if len(frame) <= len(columns):  # fewer rows than columns: some weighted sum always fits exactly
        return None
    parts = frame[columns].to_numpy(dtype=float)
    observed = frame[total].to_numpy(dtype=float)
    if not (np.isfinite(parts).all() and np.isfinite(observed).all()):
        return None
    weights, _ = nnls(parts, observed)
    if np.max(np.abs(parts @ weights - observed) / np.abs(observed)) > rtol:
        return None
    return {c: float(w) for c, w in zip(columns, weights, strict=True) if w > 1e-12}


@dataclass
class Fit:
    """One fitted parameter vector: for a target (and, for the mixing law, one (N, D))."""

    target: str
    theta: np.ndarray
    diagnostics: dict[str, Any]
    bootstrap: np.ndarray  # (n_bootstrap, p)
    restarts: np.ndarray  # (n_restarts, p), best first
    N: float | None = None
    D: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "N": self.N,
            "D": self.D,
            "params": self.params,
            "theta": [float(v) for v in self.theta],
            "diagnostics": self.diagnostics,
            "bootstrap_thetas": [[float(v) for v in row] for row in self.bootstrap],
            "restart_thetas": [[float(v) for v in row] for row in self.restarts],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fit:
        p = len(data["theta"])
        return cls(
            target=data["target"],
            theta=np.array(data["theta"], dtype=float),
            diagnostics=dict(data["diagnostics"]),
            bootstrap=np.array(data["bootstrap_thetas"], dtype=float).reshape(-1, p),
            restarts=np.array(data["restart_thetas"], dtype=float).reshape(-1, p),
            N=data.get("N"),
            D=data.get("D"),
            params=dict(data.get("params", {})),
        )


def size_weights(log_n: np.ndarray, exponent: float) -> np.ndarray | None:
    """Row weights (N / N_min)^exponent, mean 1 (None when the exponent is 0): the larger proxies,
    closer to the size a law is asked about, count more."""
    if not exponent:
        return None
    weights = np.exp(exponent * (log_n - log_n.min()))
    return weights / weights.mean()


class LawEstimator(BaseEstimator):
    """Shared fit / predict / JSON machinery; a subclass names its form (`kind`) and its search.

    `per_domain=None` and `size_weight=None` take the law's own defaults (`default_per_domain`,
    `default_size_weight`), chosen per form by the error at a held-out larger size (docs/laws.md,
    bench/law_bench.py); the settings a fit used are `per_domain_` and `size_weight_`.
    """

    kind: ClassVar[str] = ""
    default_per_domain: ClassVar[bool] = False
    default_size_weight: ClassVar[float] = 1.0

    @property
    def form(self) -> LawForm:
        """The law's form object (model, Jacobian, parameters, starts)."""
        return FORMS[self.kind]

    @property
    def form_(self) -> LawForm:
        """The same as `form` (the name callers used before laws became a package)."""
        return self.form

    # -- features ----------------------------------------------------------------------------
    def _features(self, frame: pd.DataFrame, domains: Sequence[str] | None = None) -> Features:
        n = _check_positive_column(frame, "N")
        d = _check_positive_column(frame, "D")
        h = np.zeros((len(frame), 0))
        if self.form.uses_mixture:
            h = self._weights(frame, self.domains_ if domains is None else domains)
        return Features(np.log(n / self.n_scale_), np.log(d / self.d_scale_), h)

    @staticmethod
    def _weights(frame: pd.DataFrame, domains: Sequence[str]) -> np.ndarray:
        """The h columns of `domains`, in that order; the table must have exactly those."""
        columns = [WEIGHT_PREFIX + dom for dom in domains]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"runs table lacks weight column(s) {missing} that the law was fitted on")
        extra = sorted(set(c for c in frame.columns if str(c).startswith(WEIGHT_PREFIX)) - set(columns))
        if extra:
            raise ValueError(f"runs table has weight column(s) {extra} the law was not fitted on")
        validate_weights(frame, columns, "run" if "run" in frame.columns else None)
        return frame[columns].to_numpy(dtype=float)

    # -- fitting -----------------------------------------------------------------------------
    @fitting.single_threaded
    def fit(self, runs: pd.DataFrame) -> LawEstimator:
        """Fit one parameter vector per target on a runs table (read files with
        `mixer.runs.load_runs`; fit does no IO)."""
        if not isinstance(runs, pd.DataFrame):
            raise TypeError(
                f"fit takes a runs DataFrame, got {type(runs).__name__}; read files with mixer.runs.load_runs"
            )
        targets = list(self._targets())
        self.per_domain_, self.size_weight_ = self._settings()
        frame = load_runs(runs, targets=targets, require_weights=self.form.uses_mixture)
        self.components_ = {t: w for t in targets if self.per_domain_ and (w := loss_components(frame, t))}
        fitted = list(dict.fromkeys(name for t in targets for name, _ in self.components(t)))
        weight_cols = [c for c in frame.columns if str(c).startswith(WEIGHT_PREFIX)]
        weight_cols = weight_cols if self.form.uses_mixture else []
        self.domains_ = [domain_name(c) for c in weight_cols]
        self.n_scale_ = self.d_scale_ = 1.0
        if self.form.scaled:
            self.n_scale_ = float(np.exp(np.mean(np.log(frame["N"].to_numpy(dtype=float)))))
            self.d_scale_ = float(np.exp(np.mean(np.log(frame["D"].to_numpy(dtype=float)))))
        for rows, _, _ in self._fit_groups(frame):
            check_identifiable(
                self.kind, self.form.n_params(len(self.domains_)), frame.iloc[rows], self.form.uses_size
            )
        x = self._features(frame)
        groups = self._groups(frame)
        y = {target: _check_positive_column(frame, target) for target in fitted}
        by_group = []
        for rows, n_value, d_value in self._fit_groups(frame):
            targets_y = np.stack([y[target][rows] for target in fitted])
            group_fits = self._fit_targets(x.subset(rows), targets_y, groups[rows], fitted)
            for fit in group_fits:
                fit.N, fit.D = n_value, d_value
                fit.params = self.form.public_params(fit.theta, self.domains_, self.n_scale_, self.d_scale_)
            by_group.append(group_fits)
        self.fits_ = [group_fits[i] for i in range(len(fitted)) for group_fits in by_group]
        self.data_ = self._describe(frame, weight_cols, list(dict.fromkeys(targets + fitted)))
        return self

    def components(self, target: str) -> list[tuple[str, float]]:
        """The fitted targets whose weighted sum predicts `target`: itself, or with `per_domain` its
        per-domain losses."""
        weights = getattr(self, "components_", {}).get(target)
        return list(weights.items()) if weights else [(target, 1.0)]

    def _targets(self) -> list[str]:
        targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        if not targets:
            raise ValueError("no target columns given")
        return targets

    def _fit_groups(self, frame: pd.DataFrame) -> list[tuple[np.ndarray, float | None, float | None]]:
        return [(np.arange(len(frame)), None, None)]

    @staticmethod
    def _groups(frame: pd.DataFrame) -> np.ndarray:
        """Bootstrap units: training runs (mixture x size), so a run's checkpoints move together."""
        if "mixture" in frame.columns:
            return (frame["mixture"].astype(str) + "@" + frame["N"].astype(str)).to_numpy()
        return np.arange(len(frame))

    def _objective(
        self, x: Features, y: np.ndarray, weights: np.ndarray | None = None
    ) -> fitting.HuberObjective:
        form = self.form
        target = np.log(y) if form.log_residual else y
        return fitting.HuberObjective(lambda theta: form.model(theta, x), target, self.huber_delta, weights)

    def _settings(self) -> tuple[bool, float]:
        """(per_domain, size_weight) for this fit: the given values, or the law's defaults."""
        per_domain = self.default_per_domain if self.per_domain is None else bool(self.per_domain)
        size_weight = self.default_size_weight if self.size_weight is None else float(self.size_weight)
        if not (math.isfinite(size_weight) and size_weight >= 0):
            raise ValueError(f"size_weight must be a number >= 0 (0: unweighted), got {self.size_weight!r}")
        return per_domain, size_weight

    def _fit_targets(self, x: Features, y: np.ndarray, groups: np.ndarray, targets: list[str]) -> list[Fit]:
        """One fit per target (rows of `y`, (T, n)) on the same rows `x`."""
        return [self._fit_one(x, values, groups, target) for values, target in zip(y, targets, strict=True)]

    def _fit_one(self, x: Features, y: np.ndarray, groups: np.ndarray, target: str) -> Fit:
        objective = self._objective(x, y, size_weights(x.log_n, self.size_weight_))
        result, settings = self._search(objective, x, y)
        boot = self._bootstrap(objective, x, y, result.theta, groups)
        return self._make_fit(target, x, result, settings, boot)

    def _make_fit(
        self,
        target: str,
        x: Features,
        result: fitting.MultiStartResult,
        settings: dict[str, Any],
        boot: np.ndarray,
    ) -> Fit:
        """A Fit with its diagnostics: how the search went, the settings, the bootstrap."""
        diagnostics = {
            **result.diagnostics(),
            "optimizer": settings,
            "huber_delta": self.huber_delta,
            "residual": "log loss" if self.form.log_residual else "loss",
            "n_rows": int(x.log_n.size),
            "size_weight": self.size_weight_,
            "n_bootstrap": int(boot.shape[0]),
            "bootstrap_unit": "training run (mixture x N)" if x.h.shape[1] else "row",
        }
        return Fit(target, result.theta, diagnostics, boot, result.thetas[: max(1, len(result.thetas))])

    def _search(
        self, objective: fitting.HuberObjective, x: Features, y: np.ndarray
    ) -> tuple[fitting.MultiStartResult, dict[str, Any]]:
        raise NotImplementedError

    def _bootstrap(
        self,
        objective: fitting.HuberObjective,
        x: Features,
        y: np.ndarray,
        theta: np.ndarray,
        groups: np.ndarray,
    ) -> np.ndarray:
        """Refits on resampled training runs, warm-started from `theta` (L-BFGS on row weights)."""
        return fitting.bootstrap_fits(objective, theta, groups, self.n_bootstrap, self.seed)

    def _describe(self, frame: pd.DataFrame, weight_cols: list[str], targets: list[str]) -> dict[str, Any]:
        hashed = ["N", "D", *weight_cols, *targets]
        data: dict[str, Any] = {
            "sha256": data_hash(frame, hashed),
            "columns": hashed,
            "n_rows": len(frame),
            "n_runs": int(len(np.unique(self._groups(frame)))),
            "N_range": [float(frame["N"].min()), float(frame["N"].max())],
            "D_range": [float(frame["D"].min()), float(frame["D"].max())],
            "N_values": sorted({float(v) for v in frame["N"]}),
            "n_scale": self.n_scale_,
            "d_scale": self.d_scale_,
        }
        if weight_cols:
            mixtures = np.unique(frame[weight_cols].to_numpy(dtype=float).round(12), axis=0)
            data["mixtures"] = [[float(v) for v in row] for row in mixtures]
            data["h_range"] = {
                domain_name(c): [float(frame[c].min()), float(frame[c].max())] for c in weight_cols
            }
        return data

    # -- prediction --------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        check_is_fitted(self, "fits_")

    def fit_for(self, target: str | None, n: float | None = None, d: float | None = None) -> Fit:
        """The fit of `target` (default: the first); the mixing law also needs its (N, D)."""
        self._check_fitted()
        target = target or self.fits_[0].target
        self._check_not_composite(target)
        fits = [f for f in self.fits_ if f.target == target]
        if not fits:
            raise ValueError(f"law has no fit for target {target!r}; targets: {self.targets_}")
        return fits[0]

    def _check_not_composite(self, target: str) -> None:
        if target in getattr(self, "components_", {}):
            raise ValueError(
                f"{target!r} is predicted as the weighted sum of per-domain laws "
                f"({', '.join(self.components_[target])}); ask for one of those targets"
            )

    @property
    def targets_(self) -> list[str]:
        """The targets the law predicts: the per-domain sums first, then every fitted target."""
        self._check_fitted()
        return list(dict.fromkeys([*getattr(self, "components_", {}), *(f.target for f in self.fits_)]))

    def _predict_with(self, thetas: np.ndarray, x: Features) -> np.ndarray:
        """Predictions (n_thetas, n_rows) for each row of `thetas`."""
        out = np.empty((thetas.shape[0], x.log_n.size))
        with np.errstate(all="ignore"):
            for i, theta in enumerate(thetas):
                out[i] = self.form.loss(theta, x)
        return out

    def _rows_by_fit(self, frame: pd.DataFrame, target: str | None) -> list[tuple[np.ndarray, Fit]]:
        return [(np.arange(len(frame)), self.fit_for(target))]

    def predict(self, runs: pd.DataFrame, target: str | None = None) -> np.ndarray:
        """Predicted loss for each row (columns N, D and the law's h_<domain>)."""
        return self.predict_interval(runs, target, with_interval=False)["loss"].to_numpy()

    def predict_interval(
        self, runs: pd.DataFrame, target: str | None = None, level: float = 0.95, with_interval: bool = True
    ) -> pd.DataFrame:
        """Point prediction with a bootstrap percentile interval: columns loss, low, high."""
        self._check_fitted()
        frame = runs.reset_index(drop=True)
        x_all = self._features(frame)
        point, boot = self._combined(frame, x_all, target, "bootstrap" if with_interval else None)
        low, high = percentile_interval(boot, point, level) if boot.shape[0] else (point, point)
        return pd.DataFrame({"loss": point, "low": low, "high": high}, index=frame.index)

    def predict_restarts(self, runs: pd.DataFrame, target: str | None = None) -> np.ndarray:
        """Predictions (n_restarts, n_rows) of every restart's local optimum (best first)."""
        frame = runs.reset_index(drop=True)
        return self._combined(frame, self._features(frame), target, "restarts")[1]

    def _combined(
        self, frame: pd.DataFrame, x_all: Features, target: str | None, extra: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Point predictions (n,) and those of the fits' `extra` thetas (bootstrap or restarts; m, n),
        summed over the target's components (m: the fewest any component has)."""
        n, point, stack = len(frame), np.zeros(len(frame)), []
        for name, weight in self.components(target or self.targets_[0]):
            part_point, groups = np.empty(n), []
            for rows, fit in self._rows_by_fit(frame, name):
                x = x_all.subset(rows)
                part_point[rows] = self._predict_with(fit.theta[None, :], x)[0]
                thetas = getattr(fit, extra) if extra else np.empty((0, fit.theta.size))
                groups.append((rows, self._predict_with(thetas, x)))
            part_extra = np.empty((min(v.shape[0] for _, v in groups), n))
            for rows, values in groups:
                part_extra[:, rows] = values[: part_extra.shape[0]]
            point += weight * part_point
            stack.append(weight * part_extra)
        m = min(s.shape[0] for s in stack)
        return point, np.sum([s[:m] for s in stack], axis=0).reshape(m, n)

    # -- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Everything needed to predict again, plus the data it saw and how the fit went."""
        self._check_fitted()
        return {
            "format": FORMAT,
            "law": self.kind,
            "formula": self.form.formula,
            "hyperparameters": _jsonable(self.get_params()),
            "domains": list(self.domains_),
            "scales": {"N": self.n_scale_, "D": self.d_scale_},
            "targets": self.targets_,
            "components": getattr(self, "components_", {}),
            "settings": {"per_domain": self.per_domain_, "size_weight": self.size_weight_},
            "data": self.data_,
            "fits": [f.to_json() for f in self.fits_],
        }

    def save(self, path: Any) -> Any:
        """Write the law as JSON, atomically."""
        from mixer.files import write_json

        return write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LawEstimator:
        """Rebuild a fitted law from `to_json()` output (any law kind when called on the base)."""
        if data.get("format") != FORMAT:
            raise ValueError(f"not a datamixer law (format {data.get('format')!r}, expected {FORMAT!r})")
        kind = data.get("law")
        if kind not in LAWS:
            raise ValueError(f"unknown law {kind!r}; expected one of {sorted(LAWS)}")
        law_cls = LAWS[kind]
        if cls is not LawEstimator and law_cls is not cls:
            raise ValueError(f"JSON holds a {kind!r} law, not {cls.kind!r}")
        hyper = dict(data.get("hyperparameters", {}))
        if "targets" in hyper and isinstance(hyper["targets"], list):
            hyper["targets"] = tuple(hyper["targets"])
        law = law_cls(**hyper)
        law.domains_ = list(data["domains"])
        law.n_scale_, law.d_scale_ = float(data["scales"]["N"]), float(data["scales"]["D"])
        law.data_ = dict(data["data"])
        law.fits_ = [Fit.from_json(f) for f in data["fits"]]
        law.components_ = {t: dict(w) for t, w in data.get("components", {}).items()}
        settings = data.get("settings", {})  # absent before the per-form defaults: explicit hyperparameters
        law.per_domain_ = bool(settings.get("per_domain", hyper.get("per_domain") or False))
        law.size_weight_ = float(settings.get("size_weight", hyper.get("size_weight") or 0.0))
        expected = law.form.n_params(len(law.domains_))
        for fit in law.fits_:
            if fit.theta.size != expected:
                raise ValueError(
                    f"a {kind} law on {len(law.domains_)} domains has {expected} parameters, "
                    f"the fit for {fit.target!r} has {fit.theta.size}"
                )
        return law

    # -- budget questions ----------------------------------------------------------------------
    def training_mixtures(self) -> np.ndarray:
        """The distinct training mixtures (rows ordered like `domains_`)."""
        self._check_fitted()
        return np.array(self.data_.get("mixtures", []), dtype=float).reshape(-1, len(self.domains_))

    def frame_for(self, n: float, d: float, mixture: Mapping[str, float] | None = None) -> pd.DataFrame:
        """A one-row runs table at (N, D) with `mixture` (domain -> weight) as h columns."""
        self._check_fitted()
        row: dict[str, Any] = {"N": [float(n)], "D": [float(d)]}
        if self.form.uses_mixture:
            if mixture is None:
                raise ValueError(f"the {self.kind} law needs a mixture (domains {self.domains_})")
            check_domains(mixture, self.domains_, "law")
            for dom in self.domains_:
                row[WEIGHT_PREFIX + dom] = [float(mixture[dom])]
        return pd.DataFrame(row)


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


class ChinchillaLaw(LawEstimator):
    """L(N, D) = E + A/N^alpha + B/D^beta, fitted as Besiroglu et al. refit Hoffmann et al.: summed
    Huber (delta 1e-3) on log loss, L-BFGS from Hoffmann's 4,500-point grid.

    method="screened" (default) evaluates the objective at all 4,500 grid points at once and runs
    L-BFGS only from the `n_keep` best, reaching the same optimum as method="grid" (L-BFGS from every
    grid point) much faster; bench/law_bench.py measures both.
    """

    kind = "chinchilla"
    # Size weighting lowered the error at held-out larger sizes on Hoffmann's points and on Ye et
    # al.'s runs; per-domain sums raised it (the law ignores h), so they are off unless asked.
    default_per_domain = False

    def __init__(
        self,
        targets: str | Sequence[str] = (LOSS,),
        method: str = "screened",
        n_keep: int = 8,
        n_bootstrap: int = 100,
        huber_delta: float = fitting.HUBER_DELTA,
        seed: int = 0,
        per_domain: bool | None = None,
        size_weight: float | None = None,
    ) -> None:
        self.targets = targets
        self.per_domain = per_domain
        self.size_weight = size_weight
        self.method = method
        self.n_keep = n_keep
        self.n_bootstrap = n_bootstrap
        self.huber_delta = huber_delta
        self.seed = seed

    def _search(self, objective, x, y):
        grid = fitting.hoffmann_grid()
        if self.method == "grid":
            result = fitting.fit_from_starts(objective, grid)
        elif self.method == "screened":
            batch = chinchilla_batch_objective(x, np.log(y), self.huber_delta)
            result = fitting.fit_screened(objective, grid, self.n_keep, batch)
        else:
            raise ValueError(f"method must be 'screened' or 'grid', got {self.method!r}")
        settings = {
            "method": f"L-BFGS-B from Hoffmann's 4,500-point grid ({self.method})",
            "n_grid": int(grid.shape[0]),
            "n_keep": self.n_keep if self.method == "screened" else None,
            "lbfgs": dict(fitting.LBFGS_OPTIONS),
            "objective_scale": objective.scale,
        }
        return result, settings


def chinchilla_batch_objective(x: Features, log_y: np.ndarray, delta: float):
    """Summed Huber loss of the chinchilla law for many thetas at once (rows of an (m, 5) array)."""

    def value(thetas: np.ndarray) -> np.ndarray:
        out = np.empty(thetas.shape[0])
        for start in range(0, thetas.shape[0], 512):
            th = thetas[start : start + 512]
            terms = np.stack(
                [
                    th[:, :1] - th[:, 3:4] * x.log_n,
                    th[:, 1:2] - th[:, 4:5] * x.log_d,
                    np.broadcast_to(th[:, 2:3], (th.shape[0], x.log_n.size)),
                ],
                axis=1,
            )
            top = terms.max(axis=1)
            residual = top + np.log(np.exp(terms - top[:, None]).sum(axis=1)) - log_y
            out[start : start + 512] = fitting.huber_terms(residual, delta).sum(axis=1)
        return out

    return value


SEARCHES = ("auto", "least_squares", "scipy_least_squares", "basinhopping")


class MixtureLaw(LawEstimator):
    """A law with a mixture term, fitted from `n_starts` random starts screened by their objective.

    search="basinhopping" runs scipy's basin-hopping (`niter` hops of `stepsize`, L-BFGS local
    searches) from the `n_restarts` best starts. search="least_squares" makes as many local searches,
    but short trust-region least-squares ones (scipy's trf step for step, loss="huber", analytic
    Jacobian) on a subsample of about 256 rows, from the best n_restarts x (niter + 1) starts, then
    refines the `n_restarts` best end points on every row (Levenberg-Marquardt, up to 400
    evaluations); its bootstrap refits are least squares too. It runs every search of every target
    (e.g. the 22 per-domain laws) in one vectorised loop (`fitting.fit_least_squares_batch`), one
    loop per thread with `n_jobs` threads, each fitting whole targets (None or -1: every core; the
    results do not depend on it);
    search="scipy_least_squares" is the same search with one scipy `least_squares` call per start
    and trf refines (the reference it was checked against: every objective the same or higher). On
    RedPajama's 1,098 runs least squares reaches a lower optimum than basin-hopping; on small tables
    with one or two restarts it can stop in a worse basin; on the joint law (33 parameters) it
    stopped above basin-hopping's optimum. search="auto" (default) picks least_squares above 512
    rows for forms where it was checked (`LawForm.auto_least_squares`: the additive law), and
    basinhopping otherwise.
    """

    def __init__(
        self,
        targets: str | Sequence[str] = (LOSS,),
        n_starts: int = 256,
        n_restarts: int = 6,
        search: str = "auto",
        niter: int = 8,
        stepsize: float = 0.5,
        n_bootstrap: int = 50,
        huber_delta: float = fitting.HUBER_DELTA,
        seed: int = 0,
        per_domain: bool | None = None,
        size_weight: float | None = None,
        n_jobs: int | None = None,
    ) -> None:
        self.targets = targets
        self.per_domain = per_domain
        self.size_weight = size_weight
        self.n_jobs = n_jobs
        self.n_starts = n_starts
        self.n_restarts = n_restarts
        self.search = search
        self.niter = niter
        self.stepsize = stepsize
        self.n_bootstrap = n_bootstrap
        self.huber_delta = huber_delta
        self.seed = seed

    def _starts(self, x: Features, y: np.ndarray) -> np.ndarray:
        """The seeded random starts for one target (the same draws for every target, scaled to its y)."""
        return self.form.random_starts(x.h.shape[1], y, self.n_starts, np.random.default_rng(self.seed))

    def _settings_for(self, search: str, n_rows: int, n_params: int) -> dict[str, Any]:
        """What the fit JSON records of the search."""
        settings: dict[str, Any] = {
            "n_starts": self.n_starts,
            "n_restarts": self.n_restarts,
            "seed": self.seed,
            "search": search,
        }
        if search == "basinhopping":
            settings.update(niter=self.niter, stepsize=self.stepsize)
            settings["method"] = "random starts, best n_restarts refined by scipy basinhopping (L-BFGS-B)"
        else:
            settings.update(
                n_searches=self.n_restarts * (self.niter + 1), explore_rows=int(_explore_rows(n_rows).size)
            )
            vectorised = search == "least_squares"
            settings["method"] = (
                "random starts; short least-squares searches (scipy trf, Huber) from the best "
                "n_restarts x (niter + 1) on a row subsample; least squares on all rows from the best "
                "n_restarts"
                + (
                    f" ({fitting.REFINE_METHOD}; every search of every target in one vectorised loop)"
                    if vectorised
                    else " (scipy trf)"
                )
            )
            settings["least_squares"] = dict(fitting.LEAST_SQUARES_OPTIONS)
            if vectorised:
                settings["least_squares"]["max_nfev"] = fitting.REFINE_NFEV
            settings["explore_nfev"] = fitting.EXPLORE_NFEV_PER_PARAM * n_params
        settings.update(lbfgs=dict(fitting.LBFGS_OPTIONS), objective_scale=self.huber_delta**2)
        return settings

    def _search(self, objective, x, y):
        search = self._search_for(y.size)
        if search not in SEARCHES[1:]:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")
        starts = self._starts(x, y)
        if search == "basinhopping":
            result = fitting.fit_basinhopping(
                objective,
                starts,
                keep=self.n_restarts,
                niter=self.niter,
                stepsize=self.stepsize,
                seed=self.seed,
            )
        else:  # scipy_least_squares (least_squares goes through _fit_targets)
            rows = _explore_rows(y.size)
            weights = None if objective.weights is None else objective.weights[rows]
            explore = self._objective(x.subset(rows), y[rows], weights)
            n_searches = self.n_restarts * (self.niter + 1)  # as many local searches as basin-hopping
            result = fitting.fit_least_squares(objective, starts, self.n_restarts, n_searches, explore)
        return result, self._settings_for(search, y.size, starts.shape[1])

    def _fit_targets(self, x, y, groups, targets):
        search = self._search_for(y.shape[1])
        if search != "least_squares" or not self.form.has_blocks:
            return super()._fit_targets(x, y, groups, targets)
        weights = size_weights(x.log_n, self.size_weight_)
        starts = np.stack([self._starts(x, values) for values in y])
        results = fitting.fit_least_squares_batch(
            self.form.blocks,
            x,
            y,
            starts,
            weights,
            keep=self.n_restarts,
            n_searches=self.n_restarts * (self.niter + 1),
            explore_rows=_explore_rows(y.shape[1]),
            delta=self.huber_delta,
            n_jobs=self._threads(),
        )
        thetas = np.array([result.theta for result in results])
        boots = fitting.bootstrap_least_squares_batch(
            self.form.blocks, x, y, thetas, weights, groups, self.n_bootstrap, self.seed, self.huber_delta,
            self._threads(),
        )  # fmt: skip
        settings = self._settings_for(search, y.shape[1], starts.shape[-1])
        return [
            self._make_fit(target, x, result, settings, boot)
            for target, result, boot in zip(targets, results, boots, strict=True)
        ]

    def _threads(self) -> int:
        """Threads of the vectorised search: `n_jobs`, or every core when None or -1."""
        if self.n_jobs is None or self.n_jobs == -1:
            return os.cpu_count() or 1
        if not (isinstance(self.n_jobs, int) and self.n_jobs >= 1):
            raise ValueError(f"n_jobs must be a positive int, -1 or None (every core), got {self.n_jobs!r}")
        return self.n_jobs

    def n_searches(self, n_rows: int) -> int:
        """Local searches `fit` runs per fitted target on `n_rows` rows, bootstrap refits included (at
        most: starts with a non-finite objective are skipped): a total for `fitting.counting_searches`."""
        keep = min(self.n_restarts, self.n_starts)
        if self._search_for(n_rows) in ("least_squares", "scipy_least_squares"):
            return min(self.n_restarts * (self.niter + 1), self.n_starts) + keep + self.n_bootstrap
        return keep + self.n_bootstrap

    def _search_for(self, n_rows: int) -> str:
        if self.search == "auto":
            large = n_rows > 2 * EXPLORE_ROWS
            return "least_squares" if large and self.form.auto_least_squares else "basinhopping"
        return self.search

    def _bootstrap(self, objective, x, y, theta, groups):
        if self._search_for(y.size) == "basinhopping":
            return super()._bootstrap(objective, x, y, theta, groups)
        return fitting.bootstrap_least_squares(objective, theta, groups, self.n_bootstrap, self.seed)


EXPLORE_ROWS = 256


def _explore_rows(n_rows: int) -> np.ndarray:
    """Every k-th row, k chosen so that about EXPLORE_ROWS rows remain (all rows of small tables)."""
    return np.arange(n_rows)[:: max(1, n_rows // EXPLORE_ROWS)]


class AdditiveLaw(MixtureLaw):
    """Shukor et al.'s additive law: L = E + 1/(sum_i C_i h_i^gamma_i) + A/N^alpha + B/D^beta."""

    kind = "additive"
    # 410M from 70M-305M: 0.54% one unweighted law, 0.33% per-domain sum with size weighting.
    default_per_domain = True


class JointLaw(MixtureLaw):
    """Shukor et al.'s joint law: the mixture also scales the N and D terms (A_h, B_h)."""

    kind = "joint"
    # Size weighting: 0.51% -> 0.32% at 410M. Per-domain sums are 22 fits of 33 parameters each
    # (docs/laws.md has the measurement), so they are off unless asked.
    default_per_domain = False


class MixingLaw(MixtureLaw):
    """Ye et al.'s data mixing law L(h) = c + k exp(sum_j t_j h_j), one fit per target and per
    distinct (N, D) of the runs table; it predicts only at those (N, D)."""

    kind = "mixing"
    # One fit per (N, D): size weighting has nothing to weight. Per-domain sums cut the error on
    # held-out mixtures at every size (410M: 0.93% -> 0.33%).
    default_per_domain = True
    default_size_weight = 0.0

    @staticmethod
    def _size_groups(frame: pd.DataFrame) -> list[tuple[np.ndarray, float, float]]:
        keys = frame[["N", "D"]].to_numpy(dtype=float)
        groups = []
        for n_value, d_value in np.unique(keys, axis=0):
            rows = np.flatnonzero((keys[:, 0] == n_value) & (keys[:, 1] == d_value))
            groups.append((rows, float(n_value), float(d_value)))
        return groups

    def _fit_groups(self, frame):
        return self._size_groups(frame)

    def fit_for(self, target, n=None, d=None):
        self._check_fitted()
        target = target or self.fits_[0].target
        fits = [f for f in self.fits_ if f.target == target]
        if not fits:
            raise ValueError(f"law has no fit for target {target!r}; targets: {self.targets_}")
        if n is None:
            return fits[0]
        for f in fits:
            if math.isclose(f.N, n, rel_tol=1e-6) and math.isclose(f.D, d, rel_tol=1e-6):
                return f
        have = sorted({(f.N, f.D) for f in fits})
        raise ValueError(
            f"the mixing law was fitted at fixed (N, D) only; no fit at N={n:g}, D={d:g} "
            f"(fitted: {[(f'{a:g}', f'{b:g}') for a, b in have[:6]]}{' ...' if len(have) > 6 else ''})"
        )

    def _rows_by_fit(self, frame, target):
        out = []
        for rows, n_value, d_value in self._size_groups(frame):
            try:
                out.append((rows, self.fit_for(target, n_value, d_value)))
            except ValueError as exc:
                raise ValueError(f"row {rows[0] + 1}: {exc}") from None
        return out


# The estimator registry (one line per law; the form itself is registered in forms.FORMS).
LAWS: dict[str, type[LawEstimator]] = {
    law.kind: law for law in (ChinchillaLaw, AdditiveLaw, JointLaw, MixingLaw)
}


def make_law(kind: str, **kwargs: Any) -> LawEstimator:
    """A law estimator by name (chinchilla, additive, joint, mixing)."""
    if kind not in LAWS:
        raise ValueError(f"unknown law {kind!r}; expected one of {sorted(LAWS)}")
    return LAWS[kind](**kwargs)


def load_law(path: Any) -> LawEstimator:
    """Read a law JSON written by `save` / `law fit`."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such law file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    try:
        return LawEstimator.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def fit_mixing_law(
    h: np.ndarray,
    y: np.ndarray,
    n_starts: int = 64,
    n_restarts: int = 4,
    huber_delta: float = fitting.HUBER_DELTA,
    seed: int = 0,
) -> np.ndarray:
    """Ye et al.'s mixing law fitted on arrays (weights h (n, k), losses y at one (N, D)), as
    `MixingLaw` fits it: theta = (log c, log k, t (k)); predict with `mixing_law_loss`."""
    h, y = np.asarray(h, dtype=float), np.asarray(y, dtype=float)
    if h.ndim != 2 or h.shape[0] != y.size:
        raise ValueError(f"h must be (n, k) with n = len(y) = {y.size}, got shape {h.shape}")
    x = Features(np.zeros(y.size), np.zeros(y.size), h)
    form = FORMS["mixing"]
    objective = fitting.HuberObjective(lambda theta: form.model(theta, x), y, huber_delta)
    starts = form.random_starts(h.shape[1], y, n_starts, np.random.default_rng(seed))
    return fitting.fit_least_squares(objective, starts, keep=n_restarts).theta


def mixing_law_loss(theta: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The mixing law's loss at each row of h (n, k) for theta = (log c, log k, t (k))."""
    h = np.atleast_2d(np.asarray(h, dtype=float))
    return FORMS["mixing"].loss(
        np.asarray(theta, dtype=float), Features(np.zeros(len(h)), np.zeros(len(h)), h)
    )
