"""Mixture reuse when data sources change (Olmix, Section 5.1).

When domains are added, removed or revised, the ratios among the unchanged domains of a previous
mixture are kept frozen as one virtual domain; a small swarm over the virtual domain plus the
changed ones replaces a full re-optimisation, and every mixture is recomposed over the real
domains (`expand`) before it is trained, fitted on or scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mixer.mixture import check_known
from mixer.runs import WEIGHT_PREFIX

VIRTUAL = "frozen"


@dataclass(frozen=True)
class Reuse:
    """The real domains, the changed ones, and the frozen ratios among the rest (summing to 1)."""

    domains: tuple[str, ...]
    changed: tuple[str, ...]
    frozen: tuple[str, ...]
    ratios: np.ndarray

    @property
    def reduced_domains(self) -> list[str]:
        """The search space: the virtual domain, then the changed domains."""
        return [VIRTUAL, *self.changed]

    def expand(self, Z: np.ndarray) -> np.ndarray:
        """Reduced mixtures (virtual, changed...) -> mixtures over the real domains."""
        Z = np.atleast_2d(np.asarray(Z, dtype=float))
        X = np.zeros((len(Z), len(self.domains)))
        index = {d: i for i, d in enumerate(self.domains)}
        X[:, [index[d] for d in self.frozen]] = Z[:, :1] * self.ratios[None, :]
        if self.changed:
            X[:, [index[d] for d in self.changed]] = Z[:, 1:]
        return X

    def reduce(self, X: np.ndarray) -> np.ndarray:
        """Mixtures over the real domains -> (virtual = sum of the frozen weights, changed...)."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        index = {d: i for i, d in enumerate(self.domains)}
        virtual = X[:, [index[d] for d in self.frozen]].sum(axis=1, keepdims=True)
        return np.hstack([virtual, X[:, [index[d] for d in self.changed]]])

    def reduced_vector(
        self, mapping: Mapping[str, float], default: float, frozen_total: bool = True
    ) -> np.ndarray:
        """A per-domain mapping (caps, floors, priors) in the reduced space: the virtual domain
        gets the sum over the frozen domains (`frozen_total`) or `default`."""
        virtual = sum(float(mapping.get(d, default)) for d in self.frozen) if frozen_total else default
        return np.array([virtual, *(float(mapping.get(d, default)) for d in self.changed)])


def freeze(previous: Mapping[str, float], domains: Sequence[str], changed: Sequence[str]) -> Reuse:
    """Freeze the ratios of `previous` among the domains not in `changed`.

    A changed domain may be new (absent from `previous`); a domain of `previous` that is not in
    `domains` was removed and is dropped. Every unchanged domain must be in `previous`.
    """
    domains = [str(d) for d in domains]
    changed = [str(d) for d in changed]
    check_known(changed, domains, "--changed", "swarm")
    frozen = [d for d in domains if d not in changed]
    if not frozen:
        raise ValueError("every domain is marked changed: nothing to reuse, run a full swarm")
    missing = [d for d in frozen if d not in previous]
    if missing:
        raise ValueError(
            f"the previous mixture has no weight for unchanged domain(s) {missing}; mark them --changed"
        )
    weights = np.array([float(previous[d]) for d in frozen])
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError("the previous mixture gives the unchanged domains no positive weight")
    return Reuse(tuple(domains), tuple(changed), tuple(frozen), weights / weights.sum())


def expand_frame(reuse: Reuse, reduced: pd.DataFrame) -> pd.DataFrame:
    """A proposals frame over (`h_frozen`, `h_<changed>`...) -> the same rows over the real domains."""
    columns = [WEIGHT_PREFIX + d for d in reuse.reduced_domains]
    full = reuse.expand(reduced[columns].to_numpy(dtype=float))
    frame = pd.DataFrame(full, columns=[WEIGHT_PREFIX + d for d in reuse.domains], index=reduced.index)
    if "mixture" in reduced.columns:
        frame.insert(0, "mixture", reduced["mixture"].to_numpy())
    frame.attrs.update(reduced.attrs)
    return frame


def reduced_bounds(reuse: Reuse, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-domain bounds (real domains) -> bounds in the reduced space. The virtual weight v puts
    v * ratio_d on each frozen domain d, so v <= min cap_d / ratio_d and v >= max floor_d / ratio_d."""
    index = {d: i for i, d in enumerate(reuse.domains)}
    frozen = [index[d] for d in reuse.frozen]
    changed = [index[d] for d in reuse.changed]
    live = reuse.ratios > 0
    v_hi = float(np.min(upper[frozen][live] / reuse.ratios[live], initial=1.0))
    v_lo = float(np.max(lower[frozen][live] / reuse.ratios[live], initial=0.0))
    return np.concatenate([[v_lo], lower[changed]]), np.concatenate([[min(v_hi, 1.0)], upper[changed]])
