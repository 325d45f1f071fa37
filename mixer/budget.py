"""Data budget: how many epochs of each domain a mixture asks for, and the weight caps that keep
every domain under a repetition limit.

A domain with weight w in a run of T planned tokens is read w * T tokens; with A tokens available
that is w * T / A epochs. Past about 4 epochs repeated data loses most of its value
(Muennighoff et al. 2023, "Scaling Data-Constrained Language Models"), hence the default limit.
The same limit as a cap on weights, w <= max_epochs * A / T, is what the optimisers take.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mixer.mixture import normalize_weights

if TYPE_CHECKING:  # pandas is imported where a table is built, so the CLI starts fast
    import pandas as pd

DEFAULT_MAX_EPOCHS = 4.0
DOMAIN = "domain"

_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


class RepetitionWarning(UserWarning):
    """A mixture repeats a domain more often than the limit."""


def parse_tokens(value: str | int | float) -> int:
    """A positive token count from `1000000`, `1e9`, `100B`, `2.5T` or `300M`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMbBgGtT]?)\s*", str(value))
        if not match:
            raise ValueError(f"tokens {value!r}: expected a number like 1e9, 300M, 100B or 2T")
        try:
            number = float(match.group(1)) * _SUFFIXES[match.group(2).upper()]
        except ValueError:
            raise ValueError(f"tokens {value!r}: {match.group(1)!r} is not a number") from None
    if not math.isfinite(number) or number < 1:
        raise ValueError(f"tokens must be a positive number, got {value!r}")
    return int(round(number))


def read_domain_stats(path: str | os.PathLike[str]) -> dict[str, float]:
    """Tokens available per domain: `tokens_kept` of `domain_stats.parquet`, or any token table
    `mixer.runs.load_token_counts` reads (`domain,tokens` CSV/Parquet, JSON {domain: tokens})."""
    from mixer.runs import load_token_counts

    return load_token_counts(path)


def _check_budget_args(planned_tokens: float, max_epochs: float) -> None:
    if not (math.isfinite(planned_tokens) and planned_tokens > 0):
        raise ValueError(f"planned tokens must be positive, got {planned_tokens}")
    if not (math.isfinite(max_epochs) and max_epochs > 0):
        raise ValueError(f"max_epochs must be positive, got {max_epochs}")


def epoch_caps(
    planned_tokens: float,
    available: Mapping[str, float],
    max_epochs: float = DEFAULT_MAX_EPOCHS,
    feasible: bool = True,
) -> dict[str, float]:
    """Per-domain weight caps `min(1, max_epochs * available / planned)`.

    Raises ValueError when the caps sum below 1 (no mixture of these domains fits the budget),
    unless `feasible=False` (for callers that replace some caps and check the whole box after).
    """
    _check_budget_args(planned_tokens, max_epochs)
    if not available:
        raise ValueError("no domains with token counts")
    caps = {str(d): min(1.0, max_epochs * float(a) / planned_tokens) for d, a in available.items()}
    total = sum(caps.values())
    if feasible and total < 1.0:
        raise ValueError(
            f"{planned_tokens:.4g} planned tokens need more than {max_epochs:g} epochs of the data: "
            f"all domains together allow {total * planned_tokens / max_epochs:.4g} tokens per epoch "
            f"(caps sum to {total:.4f} < 1)"
        )
    return caps


def merge_caps(*caps: Mapping[str, float] | None) -> dict[str, float] | None:
    """The tightest cap per domain over several cap maps (None when none is given)."""
    given = [c for c in caps if c]
    if not given:
        return None
    merged: dict[str, float] = {}
    for mapping in given:
        for domain, cap in mapping.items():
            merged[domain] = min(float(cap), merged.get(domain, math.inf))
    return merged


def optimizer_caps(
    domains: list[str],
    caps: Mapping[str, float] | None = None,
    stats: str | os.PathLike[str] | Mapping[str, float] | None = None,
    tokens: int | float | str | None = None,
    max_epochs: float = DEFAULT_MAX_EPOCHS,
) -> dict[str, float] | None:
    """The caps an optimiser over `domains` takes: `caps` tightened, when `stats` (a
    domain_stats.parquet / token table, or domain -> tokens) and `tokens` (planned training
    tokens) are given, by `max_epochs * tokens_kept / tokens` per domain. None when neither."""
    if (stats is None) != (tokens is None):
        raise ValueError("the data-budget caps need both `stats` (tokens per domain) and `tokens`")
    if stats is None:
        return dict(caps) if caps else None
    assert tokens is not None  # given together with stats (checked above)
    available = dict(stats) if isinstance(stats, Mapping) else read_domain_stats(stats)
    missing = [d for d in domains if d not in available]
    if missing:
        raise ValueError(
            f"domain stats have no row for domain(s) {missing} (stats cover {sorted(available)})"
        )
    budget = epoch_caps(parse_tokens(tokens), {d: available[d] for d in domains}, max_epochs)
    return merge_caps(caps, budget)


@dataclass
class BudgetReport:
    """Tokens and epochs per domain for one mixture and one planned run."""

    planned_tokens: int
    max_epochs: float
    table: pd.DataFrame  # domain, weight, tokens_planned, tokens_available, epochs, cap, over_limit
    over_limit: list[str] = field(default_factory=list)

    def message(self) -> str:
        """One line naming each domain over the limit, or an empty string."""
        rows = self.table.set_index(DOMAIN).loc[self.over_limit]
        parts = [
            f"{d}: {r.epochs:.2f} epochs ({r.tokens_planned:.4g} of {r.tokens_available:.4g} tokens, "
            f"weight {r.weight:.4f} > cap {r.cap:.4f})"
            for d, r in rows.iterrows()
        ]
        if not parts:
            return ""
        return f"domain(s) repeated more than {self.max_epochs:g} epochs: " + "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        """Plain headline figures (for JSON)."""
        table = self.table.set_index(DOMAIN)
        return {
            "planned_tokens": self.planned_tokens,
            "max_epochs": self.max_epochs,
            "epochs": table["epochs"].to_dict(),
            "tokens_planned": table["tokens_planned"].to_dict(),
            "tokens_available": table["tokens_available"].to_dict(),
            "caps": table["cap"].to_dict(),
            "over_limit": list(self.over_limit),
        }


def budget_report(
    weights: Mapping[str, float],
    available: Mapping[str, float],
    planned_tokens: float,
    max_epochs: float = DEFAULT_MAX_EPOCHS,
) -> BudgetReport:
    """Tokens planned, tokens available, epochs and cap per domain of the mixture."""
    import pandas as pd

    _check_budget_args(planned_tokens, max_epochs)
    weights = normalize_weights(weights)
    missing = [d for d in weights if d not in available]
    if missing:
        raise ValueError(
            f"domain stats have no row for mixture domain(s) {missing} (stats cover {sorted(available)})"
        )
    domains = sorted(weights)
    w = np.array([weights[d] for d in domains])
    a = np.array([float(available[d]) for d in domains])
    planned = w * planned_tokens
    with np.errstate(divide="ignore", invalid="ignore"):
        epochs = np.where(planned > 0, planned / a, 0.0)
    caps = np.minimum(1.0, max_epochs * a / planned_tokens)
    over = epochs > max_epochs * (1 + 1e-9)
    table = pd.DataFrame(
        {
            DOMAIN: domains,
            "weight": w,
            "tokens_planned": planned,
            "tokens_available": a,
            "epochs": epochs,
            "cap": caps,
            "over_limit": over,
        }
    )
    over_limit = [d for d, o in zip(domains, over, strict=True) if o]
    return BudgetReport(int(planned_tokens), float(max_epochs), table, over_limit)


def check_budget(
    weights: Mapping[str, float],
    available: Mapping[str, float],
    planned_tokens: float,
    max_epochs: float = DEFAULT_MAX_EPOCHS,
    strict: bool = False,
) -> BudgetReport:
    """`budget_report`, warning (RepetitionWarning) or, with `strict`, raising ValueError when a
    domain would be repeated more than `max_epochs` times."""
    report = budget_report(weights, available, planned_tokens, max_epochs)
    if report.over_limit:
        if strict:
            raise ValueError(report.message())
        warnings.warn(report.message(), RepetitionWarning, stacklevel=2)
    return report
