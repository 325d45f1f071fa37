"""The law forms: each one object that owns its model, analytic Jacobian, gradient in h, published
parameters, random starts and size terms. Estimators (`mixer.laws.estimators`) only fit them.

Forms (k domains; every positive parameter is fitted as its log):

* chinchilla (Hoffmann et al. 2022):   L = E + A / N^alpha + B / D^beta
* additive (Shukor et al. 2025, eq. 2.4): L = E + 1 / sum_i C_i h_i^gamma_i + A / N^alpha + B / D^beta
* joint (Shukor et al. 2025, eq. 2.5):    L = E + 1 / sum_i C_i h_i^gamma_i + A_h / N^alpha + B_h / D^beta,
  A_h = (sum_i CA_i h_i)^gamma_A,  B_h = (sum_i CB_i h_i)^gamma_B
* mixing (Ye et al. 2024), at one (N, D): L = c + k exp(sum_j t_j h_j)

The `*_law` functions are the pure forms with analytic Jacobians in the fitted coordinates; the
mixture laws see N and D divided by the geometric means of the training runs (`n_scale`, `d_scale`)
so that log A and alpha are not nearly collinear; the published-form parameters (raw N and D) are
what `public_params` reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

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
    # the distinct (log N, log D) pairs ("size cells"; few: sizes x checkpoints) and each row's cell
    cell_log_n: np.ndarray = field(init=False, repr=False)
    cell_log_d: np.ndarray = field(init=False, repr=False)
    size_index: np.ndarray = field(init=False, repr=False)

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
        cells, cell_index = np.unique(np.column_stack([self.log_n, self.log_d]), axis=0, return_inverse=True)
        object.__setattr__(self, "cell_log_n", cells[:, 0])
        object.__setattr__(self, "cell_log_d", cells[:, 1])
        object.__setattr__(self, "size_index", np.ravel(cell_index))

    def subset(self, rows: np.ndarray) -> Features:
        """The features of `rows` only."""
        return Features(self.log_n[rows], self.log_d[rows], self.h[rows])

    @classmethod
    def at(cls, log_n: float, log_d: float, h: np.ndarray) -> Features:
        """One point (scaled log N, log D, mixture h)."""
        return cls(np.array([log_n]), np.array([log_d]), np.asarray(h, dtype=float)[None, :])


def _softplus_lse(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log-sum-exp over axis 0 and the softmax weights (faster than scipy's for 3 terms)."""
    top = terms.max(axis=0)
    expd = np.exp(terms - top)
    total = expd.sum(axis=0)
    return top + np.log(total), expd / total


def _exp(x: float) -> float:
    """exp that saturates to inf instead of raising: a diverged start must not crash a fit."""
    return float(np.exp(np.clip(x, -745.0, 709.0))) if np.isfinite(x) else float(np.exp(x))


def _per_domain(domains: Sequence[str], values: np.ndarray) -> dict[str, float]:
    return {d: float(v) for d, v in zip(domains, values, strict=False)}


def _exps(x: np.ndarray) -> np.ndarray:
    """exp that saturates at the largest float instead of overflowing (diverged per-domain fits)."""
    return np.exp(np.clip(x, -745.0, 709.0))


# --- the pure forms ----------------------------------------------------------------------------


def chinchilla_law(theta: np.ndarray, x: Features) -> tuple[np.ndarray, np.ndarray]:
    """log L and its Jacobian for theta = (log A, log B, log E, alpha, beta) (Besiroglu's order)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * x.log_n, b - beta * x.log_d, np.full_like(x.log_n, e)])
    log_loss, w = _softplus_lse(terms)
    jac = np.column_stack([w[0], w[1], w[2], -w[0] * x.log_n, -w[1] * x.log_d])
    return log_loss, jac


def mixture_term(c: np.ndarray, g: np.ndarray, x: Features) -> tuple[np.ndarray, np.ndarray]:
    """1/S with S = sum_i C_i h_i^gamma_i at each distinct mixture, and its derivatives in
    (c, g) = (log C, log gamma): c and g are (k,) or a batch (B, k); the results (..., u) and (..., u, 2k)."""
    gamma = np.exp(g)[..., None, :]
    log_h, k = x.log_h, x.log_h.shape[-1]
    powered = gamma * log_h  # in place from here: this runs at every step of every vectorised fit
    powered += c[..., None, :]
    np.exp(powered, out=powered)
    powered[..., ~x.positive] = 0.0  # C_i h_i^gamma_i, 0 where h_i = 0
    inv = 1.0 / powered.sum(axis=-1)
    derivatives = np.empty((*powered.shape[:-1], 2 * k))
    d_c = np.multiply(-(inv**2)[..., None], powered, out=derivatives[..., :k])
    np.multiply(d_c, log_h, out=derivatives[..., k:])
    derivatives[..., k:] *= gamma
    return inv, derivatives


@dataclass(frozen=True)
class Blocks:
    """A law's prediction at every row and its Jacobian in two blocks: columns that depend on the
    row's size cell (`rows`, (..., c, r): one row per distinct (N, D), `row_index` giving each table
    row's; None when they vary by table row, c = n) and columns that depend only on the row's mixture
    (`mixtures`, (..., u, s), one row per distinct mixture). `row_columns` and `mixture_columns` say
    which entries of theta they are; fitting builds the normal equations from the blocks without
    the full (..., n, p) Jacobian."""

    prediction: np.ndarray
    rows: np.ndarray
    mixtures: np.ndarray
    row_columns: np.ndarray
    mixture_columns: np.ndarray
    row_index: np.ndarray | None = None

    def jacobian(self, x: Features) -> np.ndarray:
        """The full Jacobian (..., n, p), columns in theta's order."""
        rows = self.rows if self.row_index is None else self.rows[..., self.row_index, :]
        blocks = np.concatenate([rows, self.mixtures[..., x.mixture_index, :]], axis=-1)
        order = np.argsort(np.concatenate([self.row_columns, self.mixture_columns]))
        if np.array_equal(order, np.arange(order.size)):
            return blocks
        return np.ascontiguousarray(blocks[..., order])  # C order, as before: the same BLAS sums


def additive_blocks(theta: np.ndarray, x: Features) -> Blocks:
    """The additive law and its Jacobian blocks for theta = (log E, log A, log alpha, log B, log beta,
    log C (k), log gamma (k)), (p,) or a batch (B, p) of parameter vectors (the prediction is then
    (B, n)): one vectorised call for many starts or many per-domain targets."""
    k = x.h.shape[1]
    e, a, la, b, lb = (theta[..., i, None] for i in range(5))
    alpha, beta = np.exp(la), np.exp(lb)
    big_e = np.exp(e)
    t_n = np.exp(a - alpha * x.cell_log_n)
    t_d = np.exp(b - beta * x.cell_log_d)
    inv, d_mixture = mixture_term(theta[..., 5 : 5 + k], theta[..., 5 + k : 5 + 2 * k], x)
    cell = x.size_index
    loss = (big_e + inv)[..., x.mixture_index] + t_n[..., cell] + t_d[..., cell]  # E + 1/S per mixture
    rows = _stack([big_e, t_n, -t_n * x.cell_log_n * alpha, t_d, -t_d * x.cell_log_d * beta])
    return Blocks(loss, rows, d_mixture, np.arange(5), np.arange(5, 5 + 2 * k), cell)


def _stack(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Per-row columns, each broadcastable to (..., n), as one (..., n, r) block."""
    return np.stack(np.broadcast_arrays(*columns), axis=-1)


def additive_law(theta: np.ndarray, x: Features) -> tuple[np.ndarray, np.ndarray]:
    """L and its Jacobian for theta = (log E, log A, log alpha, log B, log beta, log C (k), log gamma (k));
    theta (p,) or a batch (B, p) (`additive_blocks`)."""
    blocks = additive_blocks(theta, x)
    return blocks.prediction, blocks.jacobian(x)


def joint_blocks(theta: np.ndarray, x: Features) -> Blocks:
    """The joint law and its Jacobian blocks for theta = (log E, log alpha, log beta, gamma_A, gamma_B,
    log C (k), log gamma (k), log CA (k), log CB (k)); theta (p,) or a batch (B, p)."""
    k = x.h.shape[1]
    e, la, lb, g_a, g_b = (theta[..., i, None] for i in range(5))
    ca, cb = theta[..., 5 + 2 * k : 5 + 3 * k], theta[..., 5 + 3 * k : 5 + 4 * k]
    alpha, beta = np.exp(la), np.exp(lb)
    big_e = np.exp(e)
    weighted_a = x.h * np.exp(ca)[..., None, :]
    weighted_b = x.h * np.exp(cb)[..., None, :]
    u_a, u_b = weighted_a.sum(axis=-1), weighted_b.sum(axis=-1)
    log_u_a, log_u_b = np.log(u_a), np.log(u_b)
    t_n = np.exp(g_a * log_u_a - alpha * x.log_n)
    t_d = np.exp(g_b * log_u_b - beta * x.log_d)
    inv, d_mixture = mixture_term(theta[..., 5 : 5 + k], theta[..., 5 + k : 5 + 2 * k], x)
    loss = big_e + inv[..., x.mixture_index] + t_n + t_d
    rows = np.concatenate(
        [
            _stack([big_e, -t_n * x.log_n * alpha, -t_d * x.log_d * beta, t_n * log_u_a, t_d * log_u_b]),
            (t_n * g_a / u_a)[..., None] * weighted_a,
            (t_d * g_b / u_b)[..., None] * weighted_b,
        ],
        axis=-1,
    )
    row_columns = np.concatenate([np.arange(5), np.arange(5 + 2 * k, 5 + 4 * k)])
    return Blocks(loss, rows, d_mixture, row_columns, np.arange(5, 5 + 2 * k))


def joint_law(theta: np.ndarray, x: Features) -> tuple[np.ndarray, np.ndarray]:
    """L and its Jacobian for the joint law's theta (`joint_blocks`); theta (p,) or a batch (B, p)."""
    blocks = joint_blocks(theta, x)
    return blocks.prediction, blocks.jacobian(x)


def mixing_law(theta: np.ndarray, x: Features) -> tuple[np.ndarray, np.ndarray]:
    """Ye et al.'s L = c + k exp(sum_j t_j h_j) and its Jacobian for theta = (log c, log k, t (k))."""
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
    gamma = np.exp(g)
    # in log space: a per-domain fit can drive a domain that does not matter to C_i = exp(3e5) with
    # gamma_i = 1e9, where C_i h_i^gamma_i is exp(3e5 - 2e9) = 0, not inf x 0 = nan
    with np.errstate(divide="ignore"):
        log_h = np.log(h)
    s = np.sum(np.exp(c + gamma * log_h))  # a numpy float: overflow gives inf, not an exception
    return -np.exp(c + g + (gamma - 1.0) * log_h) / s**2


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


# --- the form objects ---------------------------------------------------------------------------


class LawForm:
    """A law's formula in fitted coordinates and everything the estimators ask of it.

    A subclass sets the class attributes and implements `model`, `public_params`,
    `random_starts`; mixture forms add `grad_h`, size forms `size_terms`.
    """

    name: ClassVar[str]
    formula: ClassVar[str]
    uses_mixture: ClassVar[bool]  # reads h_<domain> columns
    uses_size: ClassVar[bool]  # L varies with N and D (else fitted at fixed (N, D))
    log_residual: ClassVar[bool] = False  # Huber on log L (chinchilla) or on L (mixture laws)
    scaled: ClassVar[bool] = True  # N and D divided by the training runs' geometric means
    # search="auto" uses least squares on large tables only for forms where it was checked to reach
    # basin-hopping's optimum or a lower one (bench/law_bench.py)
    auto_least_squares: ClassVar[bool] = False
    n_fixed: ClassVar[int]  # parameters whatever the domains
    n_per_domain: ClassVar[int] = 0  # and per domain

    def model(self, theta: np.ndarray, x: Features) -> tuple[np.ndarray, np.ndarray]:
        """Prediction (log L if `log_residual`) and its Jacobian in theta."""
        raise NotImplementedError

    # forms with `blocks` are fitted by the vectorised least squares (`fitting.fit_least_squares_batch`)
    has_blocks: ClassVar[bool] = False

    def loss(self, theta: np.ndarray, x: Features) -> np.ndarray:
        """The predicted loss L itself."""
        value, _ = self.model(theta, x)
        return np.exp(value) if self.log_residual else value

    def n_params(self, k: int) -> int:
        """The number of fitted parameters for `k` domains."""
        return self.n_fixed + self.n_per_domain * k

    def public_params(
        self, theta: np.ndarray, domains: Sequence[str], n_scale: float, d_scale: float
    ) -> dict[str, Any]:
        """The published-form parameters (raw N and D) of a fitted theta."""
        raise NotImplementedError

    def blocks(self, theta: np.ndarray, x: Features) -> Blocks:
        """The prediction and Jacobian blocks of a batch of thetas (B, p) (`has_blocks` forms)."""
        raise ValueError(f"the {self.name} law has no Jacobian blocks")

    def random_starts(self, k: int, y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` random starting points in the fitted coordinates, scaled to the observed losses `y`."""
        raise ValueError(f"no random starts for the {self.name} law")

    def grad_h(self, theta: np.ndarray, h: np.ndarray, log_n: float, log_d: float) -> np.ndarray:
        """dL/dh at one (scaled log N, log D, h)."""
        raise ValueError(f"the {self.name} law has no mixture to optimise")

    def size_terms(self, theta: np.ndarray, h: np.ndarray | None) -> tuple[float, float, float, float]:
        """(A, alpha, B, beta) of the N and D terms in the law's scaled units, at mixture h."""
        raise ValueError(
            f"the {self.name} law is fitted at fixed (N, D) and cannot trade N against D; "
            "use a chinchilla, additive or joint law"
        )


def _uniform(rng: np.random.Generator, n: int):
    return lambda lo, hi, size=None: rng.uniform(lo, hi, size=(n,) if size is None else (n, size))


class ChinchillaForm(LawForm):
    name = "chinchilla"
    formula = "L = E + A/N^alpha + B/D^beta"
    uses_mixture, uses_size, log_residual = False, True, True
    n_fixed = 5
    scaled = False  # Hoffmann's grid lives in raw units

    def model(self, theta, x):
        return chinchilla_law(theta, x)

    def public_params(self, theta, domains, n_scale, d_scale):
        a, b, e, alpha, beta = np.asarray(theta, dtype=float)
        return {"E": _exp(e), "A": _exp(a), "B": _exp(b), "alpha": alpha, "beta": beta}

    def size_terms(self, theta, h):
        a, b, _, alpha, beta = theta
        return math.exp(a), float(alpha), math.exp(b), float(beta)


class AdditiveForm(LawForm):
    name = "additive"
    formula = "L = E + 1/(sum_i C_i h_i^gamma_i) + A/N^alpha + B/D^beta"
    uses_mixture, uses_size = True, True
    n_fixed, n_per_domain = 5, 2
    auto_least_squares = True  # RedPajama, 1,098 rows: a lower optimum, 4-5x less CPU

    has_blocks = True

    def model(self, theta, x):
        return additive_law(theta, x)

    def blocks(self, theta, x):
        return additive_blocks(theta, x)

    def public_params(self, theta, domains, n_scale, d_scale):
        theta = np.asarray(theta, dtype=float)
        k = len(domains)
        e, a, la, b, lb = theta[:5]
        alpha, beta = _exp(la), _exp(lb)
        return {
            "E": _exp(e),
            "A": _exp(a + alpha * math.log(n_scale)),
            "alpha": alpha,
            "B": _exp(b + beta * math.log(d_scale)),
            "beta": beta,
            "C": _per_domain(domains, _exps(theta[5 : 5 + k])),
            "gamma": _per_domain(domains, _exps(theta[5 + k :])),
        }

    def random_starts(self, k, y, n, rng):
        low, u = float(np.min(y)), _uniform(rng, n)
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

    def grad_h(self, theta, h, log_n, log_d):
        return additive_grad_h(theta, h)

    def size_terms(self, theta, h):
        return math.exp(theta[1]), math.exp(theta[2]), math.exp(theta[3]), math.exp(theta[4])


class JointForm(LawForm):
    name = "joint"
    formula = (
        "L = E + 1/(sum_i C_i h_i^gamma_i) + A_h/N^alpha + B_h/D^beta, "
        "A_h = (sum_i CA_i h_i)^gamma_A, B_h = (sum_i CB_i h_i)^gamma_B"
    )
    uses_mixture, uses_size = True, True
    n_fixed, n_per_domain = 5, 4

    has_blocks = True

    def model(self, theta, x):
        return joint_law(theta, x)

    def blocks(self, theta, x):
        return joint_blocks(theta, x)

    def public_params(self, theta, domains, n_scale, d_scale):
        theta = np.asarray(theta, dtype=float)
        k = len(domains)
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
            "C": _per_domain(domains, _exps(theta[5 : 5 + k])),
            "gamma": _per_domain(domains, _exps(theta[5 + k : 5 + 2 * k])),
            "CA": _per_domain(domains, _exps(theta[5 + 2 * k : 5 + 3 * k] + shift_a)),
            "CB": _per_domain(domains, _exps(theta[5 + 3 * k : 5 + 4 * k] + shift_b)),
        }

    def random_starts(self, k, y, n, rng):
        low, u = float(np.min(y)), _uniform(rng, n)
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

    def grad_h(self, theta, h, log_n, log_d):
        return joint_grad_h(theta, h, log_n, log_d)

    def size_terms(self, theta, h):
        k = h.size
        _, la, lb, g_a, g_b = theta[:5]
        u_a = float(np.exp(theta[5 + 2 * k : 5 + 3 * k]) @ h)
        u_b = float(np.exp(theta[5 + 3 * k : 5 + 4 * k]) @ h)
        return u_a**g_a, math.exp(la), u_b**g_b, math.exp(lb)


class MixingForm(LawForm):
    name = "mixing"
    formula = "L = c + k exp(sum_j t_j h_j) at fixed (N, D)"
    uses_mixture, uses_size = True, False
    n_fixed, n_per_domain = 2, 1
    scaled = False

    def model(self, theta, x):
        return mixing_law(theta, x)

    def public_params(self, theta, domains, n_scale, d_scale):
        theta = np.asarray(theta, dtype=float)
        return {"c": _exp(theta[0]), "k": _exp(theta[1]), "t": _per_domain(domains, theta[2:])}

    def random_starts(self, k, y, n, rng):
        low, u = float(np.min(y)), _uniform(rng, n)
        return np.column_stack([np.log(u(0.3, 0.99) * low), np.log(u(0.01, 0.7) * low), u(-3.0, 3.0, k)])

    def grad_h(self, theta, h, log_n, log_d):
        return mixing_grad_h(theta, h)


# The registry: adding a law is a LawForm subclass above plus one line here (see CONTRIBUTING.md).
FORMS: dict[str, LawForm] = {
    form.name: form for form in (ChinchillaForm(), AdditiveForm(), JointForm(), MixingForm())
}
