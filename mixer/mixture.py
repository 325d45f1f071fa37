"""Mixture files: domain -> weight, as YAML or JSON, with optional provenance.

The format written here and read everywhere (training configs, `proxy train`, exports):

    weights:            # domain -> sampling weight, summing to 1
      code: 0.25
      prose: 0.75
    provenance: {...}   # optional: method, model, seed, targets, ...

`read_mixture` also accepts a bare mapping (domain -> weight), RegMix's released configs
(`train: {train_the_pile_<domain>: weight}`, `valid: ...`), and two Olmix formats (allenai/olmix):
its fit output `*_optimal.json`, a list of `{"domain": ..., "weight": ...}`
(olmix/plots/plotting.py, `plot_and_log_weights`), and the `mix:` block of its launch configs, flat
(`dclm:software_development: {weight, repetition_factor}`) or nested, where a leaf's weight is the
product of the weights down its path (olmix/aliases.py, `_flatten_mix_node`); leaves are named by
their path joined with ':'.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mixer.files import safe_load_yaml, write_json, write_yaml

SUM_TOLERANCE = 0.01  # a mixture's or a run's weights sum to 1 within this


def nonnegative_number(value: Any, what: str) -> float:
    """`value` as a float; ValueError naming `what` (e.g. "domain 'web': weight") unless it is a
    finite number >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} {number} must be finite and >= 0")
    return number


def normalize_weights(weights: Mapping[str, float], tol: float = SUM_TOLERANCE) -> dict[str, float]:
    """Validate weights (finite, non-negative, summing to 1 +/- tol) and rescale them to sum 1."""
    if not weights:
        raise ValueError("mixture has no domains")
    clean = {str(d): nonnegative_number(w, f"domain {d!r}: weight") for d, w in weights.items()}
    total = sum(clean.values())
    if abs(total - 1.0) > tol:
        raise ValueError(f"mixture weights sum to {total:.6f}, not 1 +/- {tol}")
    return {domain: value / total for domain, value in clean.items()}


def check_known(names: Iterable[str], domains: Sequence[str], what: str, owner: str = "mixture") -> None:
    """ValueError naming the `names` (keys of a cap, floor, prior... map) not among `domains` (the
    `owner`'s: law, model, tree, token table)."""
    unknown = sorted(set(names) - set(domains))
    if unknown:
        raise ValueError(
            f"{what} names unknown domain(s) {unknown}: the {owner} does not have them "
            f"(its domains: {list(domains)})"
        )


def check_domains(names: Iterable[str], domains: Sequence[str], owner: str) -> None:
    """ValueError unless a mixture's domains `names` are exactly `domains` (the `owner`'s)."""
    unknown = sorted(set(names) - set(domains))
    absent = sorted(set(domains) - set(names))
    if unknown or absent:
        raise ValueError(
            f"mixture domains do not match the {owner}'s: not in the {owner} {unknown}, "
            f"not in the mixture {absent}"
        )


MIX_PROPERTIES = ("weight", "repetition_factor")


def flatten_mix(mix: Mapping[str, Any], prefix: str = "", weight: float = 1.0) -> dict[str, float]:
    """Olmix's `mix:` block (flat or nested) as leaf -> weight; nested weights multiply."""
    out: dict[str, float] = {}
    for name, node in mix.items():
        path = f"{prefix}:{name}" if prefix else str(name)
        if not isinstance(node, Mapping):
            out[path] = weight * float(node)
            continue
        try:
            own = weight * float(node.get("weight", 1.0))
        except (TypeError, ValueError):
            raise ValueError(f"mix entry {path!r}: weight {node.get('weight')!r} is not a number") from None
        children = {k: v for k, v in node.items() if k not in MIX_PROPERTIES}
        out.update(flatten_mix(children, path, own) if children else {path: own})
    return out


def _from_records(data: list[Any], source: str) -> dict[str, float]:
    """Olmix's `*_optimal.json`: a list of {"domain": name, "weight": w}."""
    out: dict[str, float] = {}
    for position, record in enumerate(data):
        if not isinstance(record, Mapping) or "domain" not in record or "weight" not in record:
            raise ValueError(
                f"{source}: entry {position + 1} must be {{'domain': ..., 'weight': ...}}, got {record!r}"
            )
        if str(record["domain"]) in out:
            raise ValueError(f"{source}: entry {position + 1}: domain {record['domain']!r} repeats")
        out[str(record["domain"])] = record["weight"]
    return out


def parse_mixture(data: Any, source: str = "mixture") -> dict[str, float]:
    """Domain -> weight from a parsed YAML/JSON object in any accepted layout."""
    if isinstance(data, list):
        data = _from_records(data, source)
    elif isinstance(data, Mapping) and "weights" not in data and isinstance(data.get("mix"), Mapping):
        try:
            data = flatten_mix(data["mix"])
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
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
