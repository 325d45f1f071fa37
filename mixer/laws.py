"""Loss laws over model size N, training tokens D and domain weights h, as scikit-learn-style
estimators saved as JSON.

Forms (k domains; every positive parameter is fitted as its log):

* chinchilla (Hoffmann et al. 2022):   L = E + A / N^alpha + B / D^beta
* additive (Shukor et al. 2025, eq. 2.4): L = E + 1 / sum_i C_i h_i^gamma_i + A / N^alpha + B / D^beta
* joint (Shukor et al. 2025, eq. 2.5):    L = E + 1 / sum_i C_i h_i^gamma_i + A_h / N^alpha + B_h / D^beta,
  A_h = (sum_i CA_i h_i)^gamma_A,  B_h = (sum_i CB_i h_i)^gamma_B
* mixing (Ye et al. 2024), at one (N, D): L = c + k exp(sum_j t_j h_j)

The `*_law` functions are the pure forms with analytic Jacobians in the fitted coordinates; the
mixture laws see N and D divided by the geometric means of the training runs (`n_scale`, `d_scale`)
so that log A and alpha are not nearly collinear; the published-form parameters (raw N and D) are
what `params` reports.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from mixer import law_fit
from mixer.files import write_json
from mixer.identify import check_identifiable
from mixer.runs import LOSS, WEIGHT_PREFIX, check_positive, domain_name, load_runs, validate_weights
from mixer.simplex import exponentiated_gradient

FORMAT = "datamixer-law/1"


# --- features ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Features:
    """What a law reads from a runs table: log N and log D (scaled) and the weights h.

    `log_h` is log h with 0 where h = 0 (every use multiplies it by h^gamma = 0 there).
    """

    log_n: np.ndarray
    log_d: np.ndarray
    h: np.ndarray  # (n, k), possibly k = 0
    # the distinct mixtures (many rows are checkpoints of one run): mixture terms are computed once each
    unique_h: np.ndarray = field(init=False, repr=False)
    mixture_index: np.ndarray = field(init=False, repr=False)
    log_h: np.ndarray = field(init=False, repr=False)  # of unique_h
    positive: np.ndarray = field(init=False, repr=False)  # of unique_h

    def __post_init__(self) -> None:
        if self.h.shape[1] and self.h.shape[0] > 1:
            unique_h, index = np.unique(self.h, axis=0, return_inverse=True)
        else:
            unique_h, index = self.h[:1], np.zeros(self.h.shape[0], dtype=int)
        positive = unique_h > 0
        object.__setattr__(self, "unique_h", unique_h)
        object.__setattr__(self, "mixture_index", np.ravel(index))
        object.__setattr__(self, "positive", positive)
        object.__setattr__(self, "log_h", np.log(np.where(positive, unique_h, 1.0)))


def _softplus_lse(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log-sum-exp over axis 0 and the softmax weights (faster than scipy's for 3 terms)."""
    top = terms.max(axis=0)
    expd = np.exp(terms - top)
    total = expd.sum(axis=0)
    return top + np.log(total), expd / total


# --- the pure forms ----------------------------------------------------------------------------


def chinchilla_law(theta: np.ndarray, x: Features) -> tuple[np.ndarray, np.ndarray]:
    """log L and its Jacobian for theta = (log A, log B, log E, alpha, beta) (Besiroglu's order)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * x.log_n, b - beta * x.log_d, np.full_like(x.log_n, e)])
    log_loss, w = _softplus_lse(terms)
    jac = np.column_stack([w[0], w[1], w[2], -w[0] * x.log_n, -w[1] * x.log_d])
    return log_loss, jac


def _mixture_term(c: np.ndarray, g: np.ndarray, x: Features) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1/S with S = sum_i C_i h_i^gamma_i, and d(1/S)/dc_i, d(1/S)/dg_i (c = log C, g = log gamma)."""
    gamma = np.exp(g)
    log_h = x.log_h
    powered = np.where(x.positive, np.exp(gamma * log_h + c), 0.0)  # C_i h_i^gamma_i
    inv = 1.0 / powered.sum(axis=1)
    d_c = -(inv**2)[:, None] * powered
    d_g = d_c * log_h * gamma
    idx = x.mixture_index
    return inv[idx], d_c[idx], d_g[idx]


def additive_law(theta: np.ndarray, x: Features) -> tuple[np.ndarray, np.ndarray]:
    """L and its Jacobian for theta = (log E, log A, log alpha, log B, log beta, log C (k), log gamma (k))."""
    k = x.h.shape[1]
    e, a, la, b, lb = theta[:5]
    c, g = theta[5 : 5 + k], theta[5 + k : 5 + 2 * k]
    alpha, beta = np.exp(la), np.exp(lb)
    big_e = np.exp(e)
    t_n = np.exp(a - alpha * x.log_n)
    t_d = np.exp(b - beta * x.log_d)
    inv, d_c, d_g = _mixture_term(c, g, x)
    loss = big_e + inv + t_n + t_d
    jac = np.column_stack(
        [np.full_like(loss, big_e), t_n, -t_n * x.log_n * alpha, t_d, -t_d * x.log_d * beta, d_c, d_g]
    )
    return loss, jac


def joint_law(theta: np.ndarray, x: Features) -> tuple[np.ndarray, np.ndarray]:
    """L and its Jacobian for theta = (log E, log alpha, log beta, gamma_A, gamma_B, log C (k),
    log gamma (k), log CA (k), log CB (k))."""
    k = x.h.shape[1]
    e, la, lb, g_a, g_b = theta[:5]
    c, g, ca, cb = (theta[5 + i * k : 5 + (i + 1) * k] for i in range(4))
    alpha, beta = np.exp(la), np.exp(lb)
    big_e = np.exp(e)
    weighted_a = x.h * np.exp(ca)
    weighted_b = x.h * np.exp(cb)
    u_a, u_b = weighted_a.sum(axis=1), weighted_b.sum(axis=1)
    t_n = np.exp(g_a * np.log(u_a) - alpha * x.log_n)
    t_d = np.exp(g_b * np.log(u_b) - beta * x.log_d)
    inv, d_c, d_g = _mixture_term(c, g, x)
    loss = big_e + inv + t_n + t_d
    jac = np.column_stack(
        [
            np.full_like(loss, big_e),
            -t_n * x.log_n * alpha,
            -t_d * x.log_d * beta,
            t_n * np.log(u_a),
            t_d * np.log(u_b),
            d_c,
            d_g,
            (t_n * g_a / u_a)[:, None] * weighted_a,
            (t_d * g_b / u_b)[:, None] * weighted_b,
        ]
    )
    return loss, jac


def mixing_law(theta: np.ndarray, x: Features) -> tuple[np.ndarray, np.ndarray]:
    """L and its Jacobian for theta = (log c, log k, t (k))."""
    lc, lk = theta[:2]
    t = theta[2:]
    reducible = np.exp(lk + x.h @ t)
    loss = np.exp(lc) + reducible
    jac = np.column_stack([np.full_like(loss, np.exp(lc)), reducible, reducible[:, None] * x.h])
    return loss, jac


def additive_grad_h(theta: np.ndarray, h: np.ndarray) -> np.ndarray:
    """dL/dh of the additive (and joint) mixture term at one mixture h (interior)."""
    k = h.size
    c, g = theta[5 : 5 + k], theta[5 + k : 5 + 2 * k]
    gamma, big_c = np.exp(g), np.exp(c)
    s = float(np.sum(big_c * h**gamma))
    return -(big_c * gamma * h ** (gamma - 1.0)) / s**2


def joint_grad_h(theta: np.ndarray, h: np.ndarray, log_n: float, log_d: float) -> np.ndarray:
    """dL/dh of the joint law at one (N, D, h) (scaled log N, log D)."""
    k = h.size
    _, la, lb, g_a, g_b = theta[:5]
    ca, cb = np.exp(theta[5 + 2 * k : 5 + 3 * k]), np.exp(theta[5 + 3 * k : 5 + 4 * k])
    u_a, u_b = float(ca @ h), float(cb @ h)
    t_n = math.exp(g_a * math.log(u_a) - math.exp(la) * log_n)
    t_d = math.exp(g_b * math.log(u_b) - math.exp(lb) * log_d)
    return additive_grad_h(theta, h) + t_n * g_a * ca / u_a + t_d * g_b * cb / u_b


def mixing_grad_h(theta: np.ndarray, h: np.ndarray) -> np.ndarray:
    """dL/dh of the mixing law at one mixture h."""
    t = theta[2:]
    return math.exp(theta[1] + float(h @ t)) * t


# --- law specifications -------------------------------------------------------------------------


@dataclass(frozen=True)
class LawForm:
    """A law's name, formula, fitted coordinates and how to read them."""

    name: str
    formula: str
    model: Callable[[np.ndarray, Features], tuple[np.ndarray, np.ndarray]]
    uses_mixture: bool
    uses_size: bool
    log_residual: bool  # Huber on log L (chinchilla) or on L (mixture laws)

    def n_params(self, k: int) -> int:
        return {"chinchilla": 5, "additive": 5 + 2 * k, "joint": 5 + 4 * k, "mixing": 2 + k}[self.name]


FORMS = {
    "chinchilla": LawForm("chinchilla", "L = E + A/N^alpha + B/D^beta", chinchilla_law, False, True, True),
    "additive": LawForm(
        "additive",
        "L = E + 1/(sum_i C_i h_i^gamma_i) + A/N^alpha + B/D^beta",
        additive_law,
        True,
        True,
        False,
    ),
    "joint": LawForm(
        "joint",
        "L = E + 1/(sum_i C_i h_i^gamma_i) + A_h/N^alpha + B_h/D^beta, "
        "A_h = (sum_i CA_i h_i)^gamma_A, B_h = (sum_i CB_i h_i)^gamma_B",
        joint_law,
        True,
        True,
        False,
    ),
    "mixing": LawForm(
        "mixing", "L = c + k exp(sum_j t_j h_j) at fixed (N, D)", mixing_law, True, False, False
    ),
}


def _exp(x: float) -> float:
    """exp that saturates to inf instead of raising: a diverged start must not crash a fit."""
    return float(np.exp(np.clip(x, -745.0, 709.0))) if np.isfinite(x) else float(np.exp(x))


def public_params(
    form: str, theta: np.ndarray, domains: Sequence[str], n_scale: float, d_scale: float
) -> dict[str, Any]:
    """The published-form parameters (raw N and D) of a fitted theta."""
    theta = np.asarray(theta, dtype=float)
    k = len(domains)
    per_domain = lambda values: {d: float(v) for d, v in zip(domains, values, strict=False)}  # noqa: E731
    if form == "chinchilla":
        a, b, e, alpha, beta = theta
        return {"E": _exp(e), "A": _exp(a), "B": _exp(b), "alpha": alpha, "beta": beta}
    if form == "additive":
        e, a, la, b, lb = theta[:5]
        alpha, beta = _exp(la), _exp(lb)
        return {
            "E": _exp(e),
            "A": _exp(a + alpha * math.log(n_scale)),
            "alpha": alpha,
            "B": _exp(b + beta * math.log(d_scale)),
            "beta": beta,
            "C": per_domain(np.exp(theta[5 : 5 + k])),
            "gamma": per_domain(np.exp(theta[5 + k :])),
        }
    if form == "joint":
        e, la, lb, g_a, g_b = theta[:5]
        alpha, beta = _exp(la), _exp(lb)
        shift_a = alpha * math.log(n_scale) / g_a if g_a else 0.0
        shift_b = beta * math.log(d_scale) / g_b if g_b else 0.0
        return {
            "E": _exp(e),
            "alpha": alpha,
            "beta": beta,
            "gamma_A": g_a,
            "gamma_B": g_b,
            "C": per_domain(np.exp(theta[5 : 5 + k])),
            "gamma": per_domain(np.exp(theta[5 + k : 5 + 2 * k])),
            "CA": per_domain(np.exp(theta[5 + 2 * k : 5 + 3 * k] + shift_a)),
            "CB": per_domain(np.exp(theta[5 + 3 * k : 5 + 4 * k] + shift_b)),
        }
    if form == "mixing":
        return {"c": _exp(theta[0]), "k": _exp(theta[1]), "t": per_domain(theta[2:])}
    raise ValueError(f"unknown law {form!r}")


def random_starts(form: str, k: int, y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` random starting points in the fitted coordinates, scaled to the observed losses `y`."""
    low = float(np.min(y))
    u = lambda lo, hi, size=None: rng.uniform(lo, hi, size=(n,) if size is None else (n, size))  # noqa: E731
    if form == "additive":
        return np.column_stack(
            [
                np.log(u(0.2, 0.9) * low),
                np.log(u(0.01, 0.5) * low),
                np.log(u(0.05, 1.0)),
                np.log(u(0.01, 0.5) * low),
                np.log(u(0.05, 1.0)),
                np.log(u(0.3, 30.0, k)),
                np.log(u(0.05, 1.5, k)),
            ]
        )
    if form == "joint":
        return np.column_stack(
            [
                np.log(u(0.2, 0.9) * low),
                np.log(u(0.05, 1.0)),
                np.log(u(0.05, 1.0)),
                u(0.2, 2.0),
                u(0.2, 2.0),
                np.log(u(0.3, 30.0, k)),
                np.log(u(0.05, 1.5, k)),
                np.log(u(0.01, 1.0, k)),
                np.log(u(0.01, 1.0, k)),
            ]
        )
    if form == "mixing":
        return np.column_stack([np.log(u(0.3, 0.99) * low), np.log(u(0.01, 0.7) * low), u(-3.0, 3.0, k)])
    raise ValueError(f"no random starts for {form!r}")


# --- estimators -------------------------------------------------------------------------------------


def _check_positive_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    return check_positive(frame, column, "run" if "run" in frame.columns else None)


def data_hash(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """sha256 of the named columns' names and float64 values, in row order."""
    digest = hashlib.sha256()
    for column in columns:
        digest.update(str(column).encode() + b"\0")
        digest.update(np.ascontiguousarray(frame[column].to_numpy(dtype=np.float64)).tobytes())
    return digest.hexdigest()


def _interval(values: np.ndarray, point: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap percentile interval, widened where needed so it contains the point estimate."""
    if values.shape[0] == 0:
        return point.copy(), point.copy()
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(values, [tail, 100.0 - tail], axis=0)
    return np.minimum(low, point), np.maximum(high, point)


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


class _Law(BaseEstimator):
    """Shared fit / predict / JSON machinery; subclasses set `kind` and the search."""

    kind: ClassVar[str] = ""

    # -- features ----------------------------------------------------------------------------
    @property
    def form_(self) -> LawForm:
        return FORMS[self.kind]

    def _features(self, frame: pd.DataFrame, domains: Sequence[str] | None = None) -> Features:
        n_rows = len(frame)
        domains = self.domains_ if domains is None else domains
        if self.form_.uses_size or self.kind == "mixing":
            n = _check_positive_column(frame, "N")
            d = _check_positive_column(frame, "D")
        else:
            n = d = np.ones(n_rows)
        if self.form_.uses_mixture:
            columns = [WEIGHT_PREFIX + dom for dom in domains]
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise ValueError(f"runs table lacks weight column(s) {missing} that the law was fitted on")
            extra = sorted(set(c for c in frame.columns if str(c).startswith(WEIGHT_PREFIX)) - set(columns))
            if extra:
                raise ValueError(f"runs table has weight column(s) {extra} the law was not fitted on")
            validate_weights(frame, columns, "run" if "run" in frame.columns else None)
            h = frame[columns].to_numpy(dtype=float)
        else:
            h = np.zeros((n_rows, 0))
        return Features(np.log(n / self.n_scale_), np.log(d / self.d_scale_), h)

    def _target_values(self, frame: pd.DataFrame, target: str) -> np.ndarray:
        return _check_positive_column(frame, target)

    # -- fitting -----------------------------------------------------------------------------
    @law_fit.single_threaded
    def fit(self, runs: pd.DataFrame | str | os.PathLike[str]) -> _Law:
        """Fit one parameter vector per target on a runs table (path or DataFrame)."""
        targets = list(self._targets())
        frame = load_runs(runs, targets=targets, require_weights=self.form_.uses_mixture)
        weight_cols = (
            [c for c in frame.columns if str(c).startswith(WEIGHT_PREFIX)] if self.form_.uses_mixture else []
        )
        self.domains_ = [domain_name(c) for c in weight_cols]
        if self.form_.uses_size:
            self.n_scale_ = float(np.exp(np.mean(np.log(frame["N"].to_numpy(dtype=float)))))
            self.d_scale_ = float(np.exp(np.mean(np.log(frame["D"].to_numpy(dtype=float)))))
        else:
            self.n_scale_ = self.d_scale_ = 1.0
        if self.kind == "chinchilla":
            self.n_scale_ = self.d_scale_ = 1.0  # Hoffmann's grid lives in raw units
        for rows, _, _ in self._fit_groups(frame):
            check_identifiable(
                self.kind, self.form_.n_params(len(self.domains_)), frame.iloc[rows], self.form_.uses_size
            )
        x = self._features(frame)
        groups = self._groups(frame)
        self.fits_ = []
        for target in targets:
            y = self._target_values(frame, target)
            for rows, n_value, d_value in self._fit_groups(frame):
                fit = self._fit_one(_subset(x, rows), y[rows], groups[rows], target)
                fit.N, fit.D = n_value, d_value
                fit.params = public_params(self.kind, fit.theta, self.domains_, self.n_scale_, self.d_scale_)
                self.fits_.append(fit)
        self.data_ = self._describe(frame, weight_cols, targets)
        return self

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

    def _objective(self, x: Features, y: np.ndarray) -> law_fit.HuberObjective:
        model = self.form_.model
        target = np.log(y) if self.form_.log_residual else y
        return law_fit.HuberObjective(lambda theta: model(theta, x), target, self.huber_delta)

    def _fit_one(self, x: Features, y: np.ndarray, groups: np.ndarray, target: str) -> Fit:
        objective = self._objective(x, y)
        result, settings = self._search(objective, x, y)
        boot = law_fit.bootstrap_fits(objective, result.theta, groups, self.n_bootstrap, self.seed)
        diagnostics = {
            **result.diagnostics(),
            "optimizer": settings,
            "huber_delta": self.huber_delta,
            "residual": "log loss" if self.form_.log_residual else "loss",
            "n_rows": int(y.size),
            "n_bootstrap": int(boot.shape[0]),
            "bootstrap_unit": "training run (mixture x N)" if x.h.shape[1] else "row",
        }
        return Fit(target, result.theta, diagnostics, boot, result.thetas[: max(1, len(result.thetas))])

    def _search(
        self, objective: law_fit.HuberObjective, x: Features, y: np.ndarray
    ) -> tuple[law_fit.MultiStartResult, dict[str, Any]]:
        raise NotImplementedError

    def _describe(self, frame: pd.DataFrame, weight_cols: list[str], targets: list[str]) -> dict[str, Any]:
        size_cols = ["N", "D"] if (self.form_.uses_size or self.kind == "mixing") else []
        hashed = [*size_cols, *weight_cols, *targets]
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
        if not hasattr(self, "fits_"):
            raise ValueError(f"this {type(self).__name__} is not fitted yet; call fit(runs) first")

    def _fit_for(self, target: str | None, n: float | None = None, d: float | None = None) -> Fit:
        self._check_fitted()
        target = target or self.fits_[0].target
        fits = [f for f in self.fits_ if f.target == target]
        if not fits:
            raise ValueError(f"law has no fit for target {target!r}; targets: {self.targets_}")
        return fits[0]

    @property
    def targets_(self) -> list[str]:
        self._check_fitted()
        return list(dict.fromkeys(f.target for f in self.fits_))

    def _predict_with(self, thetas: np.ndarray, x: Features, fit: Fit) -> np.ndarray:
        """Predictions (n_thetas, n_rows) for each row of `thetas`."""
        out = np.empty((thetas.shape[0], x.log_n.size))
        with np.errstate(all="ignore"):
            for i, theta in enumerate(thetas):
                value, _ = self.form_.model(theta, x)
                out[i] = np.exp(value) if self.form_.log_residual else value
        return out

    def _rows_by_fit(self, frame: pd.DataFrame, target: str | None) -> list[tuple[np.ndarray, Fit]]:
        return [(np.arange(len(frame)), self._fit_for(target))]

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
        out = pd.DataFrame({"loss": np.nan, "low": np.nan, "high": np.nan}, index=frame.index)
        for rows, fit in self._rows_by_fit(frame, target):
            x = _subset(x_all, rows)
            point = self._predict_with(fit.theta[None, :], x, fit)[0]
            low = high = point
            if with_interval and fit.bootstrap.shape[0]:
                low, high = _interval(self._predict_with(fit.bootstrap, x, fit), point, level)
            out.loc[rows, "loss"], out.loc[rows, "low"], out.loc[rows, "high"] = point, low, high
        return out

    def predict_restarts(self, runs: pd.DataFrame, target: str | None = None) -> np.ndarray:
        """Predictions (n_restarts, n_rows) of every restart's local optimum (best first)."""
        frame = runs.reset_index(drop=True)
        x_all = self._features(frame)
        (rows, fit), *_ = self._rows_by_fit(frame, target)
        return self._predict_with(fit.restarts, _subset(x_all, rows), fit)

    # -- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Everything needed to predict again, plus the data it saw and how the fit went."""
        self._check_fitted()
        return {
            "format": FORMAT,
            "law": self.kind,
            "formula": self.form_.formula,
            "hyperparameters": _jsonable(self.get_params()),
            "domains": list(self.domains_),
            "scales": {"N": self.n_scale_, "D": self.d_scale_},
            "targets": self.targets_,
            "data": self.data_,
            "fits": [f.to_json() for f in self.fits_],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the law as JSON, atomically."""
        return write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Law:
        """Rebuild a fitted law from `to_json()` output (any law kind when called on a base)."""
        if data.get("format") != FORMAT:
            raise ValueError(f"not a datamixer law (format {data.get('format')!r}, expected {FORMAT!r})")
        kind = data.get("law")
        if kind not in LAWS:
            raise ValueError(f"unknown law {kind!r}; expected one of {sorted(LAWS)}")
        law_cls = LAWS[kind]
        if cls is not _Law and law_cls is not cls:
            raise ValueError(f"JSON holds a {kind!r} law, not {cls.kind!r}")
        hyper = dict(data.get("hyperparameters", {}))
        if "targets" in hyper and isinstance(hyper["targets"], list):
            hyper["targets"] = tuple(hyper["targets"])
        law = law_cls(**hyper)
        law.domains_ = list(data["domains"])
        law.n_scale_, law.d_scale_ = float(data["scales"]["N"]), float(data["scales"]["D"])
        law.data_ = dict(data["data"])
        law.fits_ = [Fit.from_json(f) for f in data["fits"]]
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
        if self.form_.uses_mixture:
            if mixture is None:
                raise ValueError(f"the {self.kind} law needs a mixture (domains {self.domains_})")
            _check_domains(mixture, self.domains_)
            for dom in self.domains_:
                row[WEIGHT_PREFIX + dom] = [float(mixture[dom])]
        return pd.DataFrame(row)


def _subset(x: Features, rows: np.ndarray) -> Features:
    return Features(x.log_n[rows], x.log_d[rows], x.h[rows])


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def _check_domains(mixture: Mapping[str, float], domains: Sequence[str]) -> None:
    unknown = sorted(set(mixture) - set(domains))
    absent = sorted(set(domains) - set(mixture))
    if unknown or absent:
        raise ValueError(
            f"mixture domains do not match the law's: not in the law {unknown}, "
            f"missing from the mixture {absent}"
        )


class ChinchillaLaw(_Law):
    """L(N, D) = E + A/N^alpha + B/D^beta, fitted as Besiroglu et al. refit Hoffmann et al.: summed
    Huber (delta 1e-3) on log loss, L-BFGS from Hoffmann's 4,500-point grid.

    method="screened" (default) evaluates the objective at all 4,500 grid points at once and runs
    L-BFGS only from the `n_keep` best, reaching the same optimum as method="grid" (L-BFGS from every
    grid point) much faster; bench/law_bench.py measures both.
    """

    kind = "chinchilla"

    def __init__(
        self,
        targets: str | Sequence[str] = (LOSS,),
        method: str = "screened",
        n_keep: int = 8,
        n_bootstrap: int = 100,
        huber_delta: float = law_fit.HUBER_DELTA,
        seed: int = 0,
    ) -> None:
        self.targets = targets
        self.method = method
        self.n_keep = n_keep
        self.n_bootstrap = n_bootstrap
        self.huber_delta = huber_delta
        self.seed = seed

    def _search(self, objective, x, y):
        grid = law_fit.hoffmann_grid()
        if self.method == "grid":
            result = law_fit.fit_from_starts(objective, grid)
        elif self.method == "screened":
            batch = chinchilla_batch_objective(x, np.log(y), self.huber_delta)
            result = law_fit.fit_screened(objective, grid, self.n_keep, batch)
        else:
            raise ValueError(f"method must be 'screened' or 'grid', got {self.method!r}")
        settings = {
            "method": f"L-BFGS-B from Hoffmann's 4,500-point grid ({self.method})",
            "n_grid": int(grid.shape[0]),
            "n_keep": self.n_keep if self.method == "screened" else None,
            "lbfgs": dict(law_fit.LBFGS_OPTIONS),
            "objective_scale": objective.scale,
        }
        return result, settings


def chinchilla_batch_objective(
    x: Features, log_y: np.ndarray, delta: float
) -> Callable[[np.ndarray], np.ndarray]:
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
            out[start : start + 512] = law_fit._huber_terms(residual, delta).sum(axis=1)
        return out

    return value


class _MixtureLaw(_Law):
    def __init__(
        self,
        targets: str | Sequence[str] = (LOSS,),
        n_starts: int = 256,
        n_restarts: int = 6,
        niter: int = 8,
        stepsize: float = 0.5,
        n_bootstrap: int = 50,
        huber_delta: float = law_fit.HUBER_DELTA,
        seed: int = 0,
    ) -> None:
        self.targets = targets
        self.n_starts = n_starts
        self.n_restarts = n_restarts
        self.niter = niter
        self.stepsize = stepsize
        self.n_bootstrap = n_bootstrap
        self.huber_delta = huber_delta
        self.seed = seed

    def _search(self, objective, x, y):
        rng = np.random.default_rng(self.seed)
        starts = random_starts(self.kind, x.h.shape[1], y, self.n_starts, rng)
        result = law_fit.fit_basinhopping(
            objective, starts, keep=self.n_restarts, niter=self.niter, stepsize=self.stepsize, seed=self.seed
        )
        settings = {
            "method": "random starts, best n_restarts refined by scipy basinhopping (L-BFGS-B)",
            "n_starts": self.n_starts,
            "n_restarts": self.n_restarts,
            "niter": self.niter,
            "stepsize": self.stepsize,
            "seed": self.seed,
            "lbfgs": dict(law_fit.LBFGS_OPTIONS),
            "objective_scale": objective.scale,
        }
        return result, settings


class AdditiveLaw(_MixtureLaw):
    """Shukor et al.'s additive law: L = E + 1/(sum_i C_i h_i^gamma_i) + A/N^alpha + B/D^beta."""

    kind = "additive"


class JointLaw(_MixtureLaw):
    """Shukor et al.'s joint law: the mixture also scales the N and D terms (A_h, B_h)."""

    kind = "joint"


class MixingLaw(_MixtureLaw):
    """Ye et al.'s data mixing law L(h) = c + k exp(sum_j t_j h_j), one fit per target and per
    distinct (N, D) of the runs table; it predicts only at those (N, D)."""

    kind = "mixing"

    def _fit_groups(self, frame):
        keys = frame[["N", "D"]].to_numpy(dtype=float)
        groups = []
        for n_value, d_value in np.unique(keys, axis=0):
            rows = np.flatnonzero((keys[:, 0] == n_value) & (keys[:, 1] == d_value))
            groups.append((rows, float(n_value), float(d_value)))
        return groups

    def _fit_for(self, target, n=None, d=None):
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
        keys = frame[["N", "D"]].to_numpy(dtype=float)
        out = []
        for n_value, d_value in np.unique(keys, axis=0):
            rows = np.flatnonzero((keys[:, 0] == n_value) & (keys[:, 1] == d_value))
            try:
                out.append((rows, self._fit_for(target, n_value, d_value)))
            except ValueError as exc:
                raise ValueError(f"row {rows[0] + 1}: {exc}") from None
        return out


LAWS: dict[str, type[_Law]] = {
    "chinchilla": ChinchillaLaw,
    "additive": AdditiveLaw,
    "joint": JointLaw,
    "mixing": MixingLaw,
}


def make_law(kind: str, **kwargs: Any) -> _Law:
    """A law estimator by name (chinchilla, additive, joint, mixing)."""
    if kind not in LAWS:
        raise ValueError(f"unknown law {kind!r}; expected one of {sorted(LAWS)}")
    return LAWS[kind](**kwargs)


def load_law(path: str | os.PathLike[str]) -> _Law:
    """Read a law JSON written by `save` / `law fit`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such law file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    try:
        return _Law.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


# --- evaluation ---------------------------------------------------------------------------------


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


def evaluate(
    law: _Law, runs: pd.DataFrame | str | os.PathLike[str], target: str | None = None
) -> dict[str, float]:
    """Metrics of `law` on a runs table (the law's first target unless `target`)."""
    target = target or law.targets_[0]
    frame = load_runs(runs, targets=[target], require_weights=law.form_.uses_mixture)
    predicted = law.predict(frame, target)
    return evaluation_metrics(frame[target].to_numpy(dtype=float), predicted)


# --- budget questions: best mixture, compute-optimal N and D --------------------------------------


def _grad_h(law: _Law, theta: np.ndarray, h: np.ndarray, log_n: float, log_d: float) -> np.ndarray:
    if law.kind == "additive":
        return additive_grad_h(theta, h)
    if law.kind == "joint":
        return joint_grad_h(theta, h, log_n, log_d)
    if law.kind == "mixing":
        return mixing_grad_h(theta, h)
    raise ValueError(f"the {law.kind} law has no mixture to optimise")


@dataclass
class MixtureOptimum:
    """The best mixture for a budget and how much to trust it."""

    weights: dict[str, float]
    loss: float  # weighted objective at the optimum
    losses: dict[str, float]  # per target
    converged: bool
    n_iter: int
    spread: dict[str, dict[str, float]]  # domain -> std, low, high over bootstrap fits
    outside_region: dict[str, list[float]]  # domain -> [min, max] of the training mixtures it leaves
    in_hull: bool  # inside the convex hull of the training mixtures
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "loss": self.loss,
            "losses": self.losses,
            "converged": self.converged,
            "n_iter": self.n_iter,
            "spread": self.spread,
            "outside_region": self.outside_region,
            "in_hull": self.in_hull,
            "warnings": self.warnings,
        }


def _bounds(
    domains: Sequence[str], floor: float | Mapping[str, float], caps: Mapping[str, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    caps = dict(caps or {})
    unknown = sorted(set(caps) - set(domains))
    if unknown:
        raise ValueError(f"caps name domain(s) {unknown} the law does not have; its domains: {list(domains)}")
    if isinstance(floor, Mapping):
        unknown = sorted(set(floor) - set(domains))
        if unknown:
            raise ValueError(f"floor names domain(s) {unknown} the law does not have")
        lower = np.array([float(floor.get(d, 0.0)) for d in domains])
    else:
        lower = np.full(len(domains), float(floor))
    upper = np.array([float(caps.get(d, 1.0)) for d in domains])
    return lower, upper


def in_convex_hull(point: np.ndarray, points: np.ndarray) -> bool:
    """Whether `point` is a convex combination of the rows of `points` (a small LP)."""
    from scipy.optimize import linprog

    if points.shape[0] == 0:
        return False
    m = points.shape[0]
    a_eq = np.vstack([points.T, np.ones((1, m))])
    b_eq = np.concatenate([point, [1.0]])
    result = linprog(np.zeros(m), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    return bool(result.status == 0)


def optimize_mixture(
    law: _Law,
    N: float,
    D: float,
    *,
    floor: float | Mapping[str, float] = 0.0,
    caps: dict[str, float] | None = None,
    targets: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    start: Mapping[str, float] | None = None,
    max_iter: int = 5000,
    tol: float = 1e-9,
) -> MixtureOptimum:
    """The mixture h minimising sum_t w_t L_t(N, D, h) by exponentiated gradient on the simplex,
    with per-domain `floor` and `caps` (domain -> max weight; absent domains are capped at 1).

    The same search runs for every bootstrap fit to give the spread of h; the result says which
    domains leave the range the training mixtures covered and whether h is in their convex hull.
    """
    if not law.form_.uses_mixture:
        raise ValueError(
            f"the {law.kind} law has no mixture to optimise; fit an additive, joint or mixing law"
        )
    for name, value in (("N", N), ("D", D)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be a positive number; got {value}")
    targets = list(targets or law.targets_[:1])
    if weights is None:
        weights = [1.0 / len(targets)] * len(targets)
    if len(weights) != len(targets):
        raise ValueError(f"{len(targets)} target(s) but {len(weights)} weight(s)")
    w = np.asarray(weights, dtype=float)
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"target weights must be non-negative and not all zero, got {list(weights)}")
    domains = law.domains_
    lower, upper = _bounds(domains, floor, caps)
    fits = [law._fit_for(t, N, D) for t in targets]
    log_n, log_d = math.log(N / law.n_scale_), math.log(D / law.d_scale_)
    x0 = np.array([start[d] for d in domains], dtype=float) if start else None

    def solve(thetas: Sequence[np.ndarray]):
        def fun(h: np.ndarray) -> tuple[float, np.ndarray]:
            x = Features(np.array([log_n]), np.array([log_d]), h[None, :])
            value, grad = 0.0, np.zeros_like(h)
            for weight, theta in zip(w, thetas, strict=False):
                loss, _ = law.form_.model(theta, x)
                value += weight * float(loss[0])
                grad += weight * _grad_h(law, theta, h, log_n, log_d)
            return value, grad

        return exponentiated_gradient(fun, x0, lower, upper, max_iter=max_iter, tol=tol)

    best = solve([f.theta for f in fits])
    h = best.x
    per_target = {}
    for t, fit in zip(targets, fits, strict=False):
        per_target[t] = float(
            law.form_.model(fit.theta, Features(np.array([log_n]), np.array([log_d]), h[None, :]))[0][0]
        )
    n_boot = min(f.bootstrap.shape[0] for f in fits)
    boot_h = np.array([solve([f.bootstrap[b] for f in fits]).x for b in range(n_boot)]).reshape(
        -1, len(domains)
    )
    spread = {}
    for j, dom in enumerate(domains):
        col = boot_h[:, j] if boot_h.size else np.array([h[j]])
        spread[dom] = {
            "std": float(np.std(col)),
            "low": float(np.percentile(col, 5)),
            "high": float(np.percentile(col, 95)),
        }
    h_range = law.data_.get("h_range", {})
    outside = {
        d: h_range[d]
        for j, d in enumerate(domains)
        if d in h_range and not (h_range[d][0] - 1e-9 <= h[j] <= h_range[d][1] + 1e-9)
    }
    hull = in_convex_hull(h, law.training_mixtures())
    warnings = []
    if outside:
        warnings.append(
            "the optimum leaves the range of the training mixtures for "
            + ", ".join(
                f"{d} ({h[domains.index(d)]:.3f} not in [{lo:.3f}, {hi:.3f}])"
                for d, (lo, hi) in outside.items()
            )
            + "; the law extrapolates there"
        )
    elif not hull:
        warnings.append(
            "the optimum is outside the convex hull of the training mixtures; the law extrapolates"
        )
    if not best.converged:
        warnings.append(f"mirror descent stopped after {best.n_iter} iterations without converging")
    return MixtureOptimum(
        weights={d: float(v) for d, v in zip(domains, h, strict=False)},
        loss=float(best.fun),
        losses=per_target,
        converged=best.converged,
        n_iter=best.n_iter,
        spread=spread,
        outside_region=outside,
        in_hull=hull,
        warnings=warnings,
    )


def size_terms(law: _Law, theta: np.ndarray, h: np.ndarray | None) -> tuple[float, float, float, float]:
    """(A, alpha, B, beta) of the N and D terms in the law's scaled units, at mixture h."""
    if law.kind == "chinchilla":
        a, b, _, alpha, beta = theta
        return math.exp(a), float(alpha), math.exp(b), float(beta)
    if law.kind == "additive":
        return math.exp(theta[1]), math.exp(theta[2]), math.exp(theta[3]), math.exp(theta[4])
    if law.kind == "joint":
        k = len(law.domains_)
        _, la, lb, g_a, g_b = theta[:5]
        u_a = float(np.exp(theta[5 + 2 * k : 5 + 3 * k]) @ h)
        u_b = float(np.exp(theta[5 + 3 * k : 5 + 4 * k]) @ h)
        return u_a**g_a, math.exp(la), u_b**g_b, math.exp(lb)
    raise ValueError(
        f"the {law.kind} law is fitted at fixed (N, D) and cannot trade N against D; "
        "use a chinchilla, additive or joint law"
    )


def compute_optimal_size(
    a: float, alpha: float, b: float, beta: float, flops_scaled: float
) -> tuple[float, float]:
    """argmin_N A/N^alpha + B/D^beta subject to N D = flops_scaled (= C/6 in the law's units)."""
    n = (alpha * a / (beta * b)) ** (1.0 / (alpha + beta)) * flops_scaled ** (beta / (alpha + beta))
    return n, flops_scaled / n


def compute_optimal(
    law: _Law,
    flops: float,
    mixture: Mapping[str, float] | None = None,
    target: str | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """The N and D minimising the law's loss at C = 6 N D (with a bootstrap interval).

    Mixture laws need a mixture; without one the mean of the training mixtures is used.
    """
    if not (flops > 0 and math.isfinite(flops)):
        raise ValueError(f"flops must be a positive number, got {flops}")
    fit = law._fit_for(target)
    h = None
    if law.form_.uses_mixture:
        if mixture is None:
            h = law.training_mixtures().mean(axis=0)
            mixture = {d: float(v) for d, v in zip(law.domains_, h, strict=False)}
        else:
            _check_domains(mixture, law.domains_)
            h = np.array([mixture[d] for d in law.domains_], dtype=float)
    scaled = flops / 6.0 / (law.n_scale_ * law.d_scale_)

    def solve(theta: np.ndarray) -> tuple[float, float]:
        n_hat, d_hat = compute_optimal_size(*size_terms(law, theta, h), scaled)
        n = n_hat * law.n_scale_
        return n, flops / (6.0 * n)

    n_opt, d_opt = solve(fit.theta)
    frame = law.frame_for(n_opt, d_opt, mixture)
    pred = law.predict_interval(frame, fit.target, level)
    boot = np.array([solve(theta) for theta in fit.bootstrap]).reshape(-1, 2)
    n_low, n_high = _interval(boot[:, :1], np.array([n_opt]), level) if boot.size else ([n_opt], [n_opt])
    d_low, d_high = _interval(boot[:, 1:], np.array([d_opt]), level) if boot.size else ([d_opt], [d_opt])
    return {
        "flops": float(flops),
        "N": n_opt,
        "D": d_opt,
        "tokens_per_param": d_opt / n_opt,
        "loss": float(pred["loss"].iloc[0]),
        "low": float(pred["low"].iloc[0]),
        "high": float(pred["high"].iloc[0]),
        "N_interval": [float(np.ravel(n_low)[0]), float(np.ravel(n_high)[0])],
        "D_interval": [float(np.ravel(d_low)[0]), float(np.ravel(d_high)[0])],
        "mixture": mixture,
        "target": fit.target,
    }
