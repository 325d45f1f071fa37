"""Task families: targets grouped (e.g. code, math, prose) and weighted, read from a small YAML.

    families:
      code: {weight: 0.4, targets: [loss_github, loss_stackexchange]}
      prose: {weight: 0.6, targets: {loss_web: 2, loss_books: 1}}

The objective is the weighted mean over families of each family's (weighted) mean target, which
is one weight per target: family weight x target weight / the family's target-weight total.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mixer.files import read_yaml


def family_target_weights(families: Mapping[str, Any]) -> dict[str, float]:
    """Target -> weight (summing to 1) from {family: {weight, targets: list | {target: weight}}}."""
    if not isinstance(families, Mapping) or not families:
        raise ValueError("task families: expected a mapping of family name -> {weight, targets}")
    out: dict[str, float] = {}
    total = 0.0
    for name, spec in families.items():
        if not isinstance(spec, Mapping) or "targets" not in spec:
            raise ValueError(f"task family {name!r}: expected {{weight: w, targets: [...]}}")
        weight = float(spec.get("weight", 1.0))
        targets = spec["targets"]
        inner = (
            {str(t): 1.0 for t in targets}
            if isinstance(targets, list)
            else ({str(t): float(w) for t, w in dict(targets).items()})
        )
        inner_total = sum(inner.values())
        if weight < 0 or not inner or inner_total <= 0 or any(w < 0 for w in inner.values()):
            raise ValueError(f"task family {name!r}: weights must be >= 0 and its targets non-empty")
        for target, w in inner.items():
            out[target] = out.get(target, 0.0) + weight * w / inner_total
        total += weight
    if total <= 0:
        raise ValueError("task families: every family has weight 0")
    return {t: w / total for t, w in out.items()}


def read_families(path: str | os.PathLike[str]) -> dict[str, float]:
    """Target weights from a families YAML (top-level `families:` or the mapping itself)."""
    data = read_yaml(path)
    if isinstance(data, Mapping) and "families" in data:
        data = data["families"]
    try:
        return family_target_weights(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
