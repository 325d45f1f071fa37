"""Mixture files: domain -> weight, as YAML or JSON, with optional provenance.

The format written here and read everywhere (training configs, `proxy train`, exports):

    weights:            # domain -> sampling weight, summing to 1
      code: 0.25
      prose: 0.75
    provenance: {...}   # optional: method, model, seed, targets, ...

`read_mixture` also accepts a bare mapping (domain -> weight) and RegMix's released configs
(`train: {train_the_pile_<domain>: weight}`, `valid: ...`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixer.files import safe_load_yaml, write_json, write_yaml

SUM_TOLERANCE = 1e-6


def normalize_weights(weights: Mapping[str, float], tol: float = 0.01) -> dict[str, float]:
    """Validate weights (finite, non-negative, summing to 1 +/- tol) and rescale them to sum 1."""
    if not weights:
        raise ValueError("mixture has no domains")
    clean: dict[str, float] = {}
    for domain, weight in weights.items():
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"domain {domain!r}: weight {weight!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"domain {domain!r}: weight {value} must be finite and >= 0")
        clean[str(domain)] = value
    total = sum(clean.values())
    if abs(total - 1.0) > tol:
        raise ValueError(f"mixture weights sum to {total:.6f}, not 1 +/- {tol}")
    return {domain: value / total for domain, value in clean.items()}


def parse_mixture(data: Any, source: str = "mixture") -> dict[str, float]:
    """Domain -> weight from a parsed YAML/JSON object in any accepted layout."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping, got {type(data).__name__}")
    if "weights" in data:
        data = data["weights"]
    elif "train" in data and isinstance(data["train"], Mapping):
        data = data["train"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: 'weights' must map domain -> weight")
    try:
        return normalize_weights(data)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def read_mixture(path: str | os.PathLike[str]) -> dict[str, float]:
    """Read a mixture file (YAML or JSON) and return validated domain -> weight."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such mixture file")
    text = path.read_text()
    data = json.loads(text) if path.suffix.lower() == ".json" else safe_load_yaml(text, path)
    return parse_mixture(data, str(path))


def write_mixture(
    path: str | os.PathLike[str],
    weights: Mapping[str, float],
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write a mixture as YAML (or JSON if `path` ends in .json), domains sorted, atomically."""
    normalized = normalize_weights(weights)
    body: dict[str, Any] = {"weights": {d: float(normalized[d]) for d in sorted(normalized)}}
    if provenance:
        body["provenance"] = dict(provenance)
    path = Path(path)
    if path.suffix.lower() == ".json":
        return write_json(path, body)
    return write_yaml(path, body)
