"""Mixture exports for the trainers people already use: pure functions from weights to config text.

| format     | what it is                                                                      |
|------------|---------------------------------------------------------------------------------|
| `json`     | the plain mapping domain -> weight, sorted, summing to 1 after rounding          |
| `yaml`     | the same mapping as YAML                                                         |
| `megatron` | "weight prefix" pairs: Megatron-LM `--data-path`/`--data-args-path`, NeMo `data_prefix` |
| `hf`       | dataset order and `probabilities` for `datasets.interleave_datasets`, as JSON    |
| `olmo`     | OLMo-core source mixture: `source_list.sources[]` with `source_name`, `target_ratio`, `paths` |
| `olmix`    | the `mix:` block of an Olmix launch config, nested by the ':' in leaf names           |

Every exporter takes the weights first and keyword options after, and returns text; the
`*_config` helpers return the underlying object for callers that build configs in Python.
Trainer formats (megatron, hf, olmo) leave out zero-weight domains: Megatron and OLMo reject
them and `interleave_datasets(stopping_strategy="all_exhausted")` never ends on one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from mixer.files import safe_load_yaml
from mixer.mixture import normalize_weights

MAX_DIGITS = 15
FORMATS = ("megatron", "hf", "olmo", "olmix", "json", "yaml")
DEFAULT_DIGITS = 6
# OLMo-core's default max_repetition_ratio is 1 (no repeats); 4 epochs is where repeated data
# stops paying (Muennighoff et al. 2023), the same default as `datamixer budget`.
DEFAULT_MAX_REPETITION = 4.0


def round_weights(weights: Mapping[str, float], digits: int = DEFAULT_DIGITS) -> dict[str, float]:
    """Validated weights rounded to `digits` decimals, sorted by domain, summing to exactly 1.

    The rounding residue goes to the largest weight (ties: first domain in sorted order), so the
    same input always gives the same output and the decimal sum is 1 exactly.
    """
    if not 1 <= digits <= MAX_DIGITS:  # a float holds about 15 significant digits
        raise ValueError(f"--digits must be between 1 and {MAX_DIGITS}, got {digits}")
    normalized = normalize_weights(weights)
    quantum = Decimal(1).scaleb(-digits)
    rounded = {d: Decimal(repr(normalized[d])).quantize(quantum) for d in sorted(normalized)}
    largest = max(rounded, key=rounded.__getitem__)  # max() keeps the first of equals
    rounded[largest] += Decimal(1) - sum(rounded.values())
    if rounded[largest] < 0:
        raise ValueError(f"cannot round weights to {digits} digits without a negative weight")
    return {d: float(w) for d, w in rounded.items()}


def _positive(weights: Mapping[str, float], digits: int) -> dict[str, float]:
    """Rounded weights without the domains whose rounded weight is zero."""
    return {d: w for d, w in round_weights(weights, digits).items() if w > 0}


def read_paths(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read a domains file (YAML/JSON): domain -> one path/prefix or a list of them; or a domain
    tree (`mixer.tree`), whose leaves with `paths` give them."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such paths file")
    data = safe_load_yaml(path.read_text(), path)
    if isinstance(data, Mapping) and isinstance(data.get("domains"), Mapping):
        from mixer.tree import parse_tree

        return {leaf.path: list(leaf.paths) for leaf in parse_tree(data, str(path)).leaves() if leaf.paths}
    if isinstance(data, Mapping) and "paths" in data and isinstance(data["paths"], Mapping):
        data = data["paths"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping domain -> path(s), got {type(data).__name__}")
    return {str(d): _as_list(v, f"{path}: domain {d!r}") for d, v in data.items()}


def _as_list(value: Any, where: str) -> list[str]:
    values = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{where}: expected a path or a non-empty list of paths, got {value!r}")
    return [str(v) for v in values]


def _paths_for(domains: list[str], paths: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """Each domain's paths; without a paths map a domain's name stands for its path."""
    if paths is None:
        return {d: [d] for d in domains}
    missing = [d for d in domains if d not in paths]
    if missing:
        raise ValueError(f"paths map has no entry for domain(s) {missing} (it has {sorted(paths)})")
    return {d: _as_list(paths[d], f"paths for domain {d!r}") for d in domains}


def _format_weight(weight: float) -> str:
    return repr(float(weight))


def to_json(weights: Mapping[str, float], *, digits: int = DEFAULT_DIGITS) -> str:
    """The plain mapping domain -> weight as JSON (sorted keys)."""
    return json.dumps(round_weights(weights, digits), indent=2, sort_keys=True) + "\n"


def to_yaml(weights: Mapping[str, float], *, digits: int = DEFAULT_DIGITS) -> str:
    """The plain mapping domain -> weight as YAML (sorted keys)."""
    return yaml.safe_dump(round_weights(weights, digits), sort_keys=True)


def megatron_blend(
    weights: Mapping[str, float],
    *,
    paths: Mapping[str, Any] | None = None,
    digits: int = DEFAULT_DIGITS,
) -> list[str]:
    """The flat blend list `[w1, prefix1, w2, prefix2, ...]` that Megatron-LM's `--data-path`
    and NeMo's `model.data.data_prefix` read; one dataset prefix per domain."""
    kept = _positive(weights, digits)
    prefixes = _paths_for(list(kept), paths)
    blend: list[str] = []
    for domain, weight in kept.items():
        if len(prefixes[domain]) != 1:
            raise ValueError(
                f"megatron needs one dataset prefix per domain; domain {domain!r} has "
                f"{len(prefixes[domain])}: merge them into one indexed dataset"
            )
        # Megatron names a dataset by its prefix: `web.idx` / `web.bin` stand for `web`.
        prefix = str(prefixes[domain][0])
        prefix = prefix[: -len(".idx")] if prefix.endswith((".idx", ".bin")) else prefix
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError(
                f"megatron splits its blend on whitespace; the dataset prefix {prefix!r} of domain "
                f"{domain!r} is empty or holds whitespace: rename it or give --paths without spaces"
            )
        blend += [_format_weight(weight), prefix]
    return blend


def to_megatron(weights: Mapping[str, float], **options: Any) -> str:
    """`megatron_blend` (the same keyword options) with one "weight prefix" pair per line: the file
    `--data-args-path` reads, or the words to paste after `--data-path`."""
    blend = megatron_blend(weights, **options)
    return "".join(f"{w} {p}\n" for w, p in zip(blend[::2], blend[1::2], strict=True))


def allocate_tokens(weights: Mapping[str, float], tokens: int) -> dict[str, int]:
    """Integer tokens per domain summing to `tokens` (largest remainder, ties by domain name)."""
    if tokens <= 0:
        raise ValueError(f"tokens must be positive, got {tokens}")
    normalized = normalize_weights(weights)
    exact = {d: normalized[d] * tokens for d in sorted(normalized)}
    floors = {d: int(v) for d, v in exact.items()}
    order = sorted(exact, key=lambda d: (-(exact[d] - floors[d]), d))
    for domain in order[: tokens - sum(floors.values())]:
        floors[domain] += 1
    return floors


def hf_config(
    weights: Mapping[str, float],
    *,
    paths: Mapping[str, Any] | None = None,
    tokens: int | None = None,
    digits: int = DEFAULT_DIGITS,
) -> dict[str, Any]:
    """`datasets` (order) and `probabilities` for `datasets.interleave_datasets`; with `paths`,
    `data_files` per domain for `load_dataset`; with `tokens`, each domain's token target."""
    kept = _positive(weights, digits)
    config: dict[str, Any] = {"datasets": list(kept), "probabilities": list(kept.values())}
    if paths is not None:
        config["data_files"] = _paths_for(list(kept), paths)
    if tokens is not None:
        config["tokens"] = allocate_tokens(kept, tokens)
    return config


def to_hf(weights: Mapping[str, float], **options: Any) -> str:
    """`hf_config` (the same keyword options) as JSON."""
    return json.dumps(hf_config(weights, **options), indent=2) + "\n"


def olmo_config(
    weights: Mapping[str, float],
    *,
    paths: Mapping[str, Any] | None = None,
    tokens: int | None = None,
    max_repetition: float = DEFAULT_MAX_REPETITION,
    digits: int = DEFAULT_DIGITS,
) -> dict[str, Any]:
    """An OLMo-core `SourceMixtureDatasetConfig` body: `source_list.sources[]` with
    `source_name`, `target_ratio`, `paths`, `max_repetition_ratio`, and `requested_tokens`."""
    if max_repetition < 1:
        raise ValueError(f"max_repetition must be >= 1 (OLMo-core's rule), got {max_repetition}")
    kept = _positive(weights, digits)
    source_paths = _paths_for(list(kept), paths)
    sources = [
        {
            "source_name": domain,
            "target_ratio": weight,
            "paths": source_paths[domain],
            "max_repetition_ratio": float(max_repetition),
        }
        for domain, weight in kept.items()
    ]
    config: dict[str, Any] = {"source_list": {"sources": sources}}
    if tokens is not None:
        if tokens <= 0:
            raise ValueError(f"tokens must be positive, got {tokens}")
        config["requested_tokens"] = int(tokens)
    return config


def to_olmo(weights: Mapping[str, float], **options: Any) -> str:
    """`olmo_config` (the same keyword options) as YAML."""
    return yaml.safe_dump(olmo_config(weights, **options), sort_keys=False)


def olmix_repetition(
    weights: Mapping[str, float], tokens: int, available: Mapping[str, float], max_repetition: float
) -> dict[str, float]:
    """Each domain's repetition factor as Olmix's generator sets it: the epochs the run needs
    (weight x tokens / available), rounded up to 1e-3, at least 1; past `max_repetition` an error."""
    missing = sorted(d for d in weights if d not in available)
    if missing:
        raise ValueError(f"no available token count for domain(s) {missing}")
    out = {}
    for domain, weight in weights.items():
        need = weight * tokens / float(available[domain]) if available[domain] > 0 else math.inf
        if need > max_repetition:
            raise ValueError(
                f"domain {domain!r} needs {need:.2f} epochs of its data, over the "
                f"repetition limit {max_repetition:g}; see `datamixer budget`"
            )
        out[domain] = max(1.0, math.ceil(need * 1000 - 1e-9) / 1000)
    return out


def olmix_mix(
    weights: Mapping[str, float],
    *,
    tokens: int | None = None,
    available: Mapping[str, float] | None = None,
    max_repetition: float = DEFAULT_MAX_REPETITION,
    digits: int = DEFAULT_DIGITS,
) -> dict[str, Any]:
    """The nested `mix:` block of an Olmix launch config (allenai/olmix, configs/examples/launch):
    leaf names split on ':' into source -> topic -> ...; each node's `weight` is its share of its
    parent (Olmix multiplies them down the path). Each leaf's `repetition_factor` is
    `max_repetition`, or with `tokens` and `available` what the run needs (`olmix_repetition`)."""
    if max_repetition < 1:
        raise ValueError(f"max_repetition must be >= 1 (Olmix's repetition_factor), got {max_repetition}")
    if (tokens is None) != (available is None):
        raise ValueError("per-domain repetition factors need both planned tokens and available tokens")
    kept = _positive(weights, digits)
    factors = olmix_repetition(kept, tokens, available, max_repetition) if tokens and available else {}
    tree: dict[str, Any] = {}  # inner nodes are dicts, leaves their domain name
    for domain in kept:
        *parents, leaf = domain.split(":")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"domain {domain!r} sits below domain {part!r}; Olmix leaves cannot nest")
        if leaf in node:
            raise ValueError(f"domain {domain!r} has domains below it; Olmix leaves cannot nest")
        node[leaf] = domain

    def total(node: Any) -> float:
        return sum(total(c) for c in node.values()) if isinstance(node, dict) else kept[node]

    def render(node: Any, parent_total: float) -> dict[str, Any]:
        own = total(node)
        body: dict[str, Any] = {"weight": round(own / parent_total, digits)}
        if isinstance(node, dict):
            body.update({name: render(child, own) for name, child in node.items()})
        else:
            body["repetition_factor"] = float(factors.get(node, max_repetition))
        return body

    return {name: render(child, 1.0) for name, child in tree.items()}


def to_olmix(weights: Mapping[str, float], **options: Any) -> str:
    """`olmix_mix` (the same keyword options) as YAML under a top-level `mix:` key, ready to paste
    into a launch config."""
    return yaml.safe_dump({"mix": olmix_mix(weights, **options)}, sort_keys=False)


EXPORTERS: dict[str, Callable[..., str]] = {
    "megatron": to_megatron,
    "hf": to_hf,
    "olmo": to_olmo,
    "olmix": to_olmix,
    "json": to_json,
    "yaml": to_yaml,
}
# Which keyword options each format has a place for.
_OPTIONS = {
    "megatron": {"paths"},
    "hf": {"paths", "tokens"},
    "olmo": {"paths", "tokens", "max_repetition"},
    "olmix": {"tokens", "available", "max_repetition"},
    "json": set(),
    "yaml": set(),
}


def export_text(
    weights: Mapping[str, float],
    format: str,
    *,
    paths: Mapping[str, Any] | None = None,
    tokens: int | None = None,
    max_repetition: float | None = None,
    available: Mapping[str, float] | None = None,
    digits: int = DEFAULT_DIGITS,
) -> str:
    """Render `weights` in one of FORMATS; an option the format has no place for is an error."""
    if format not in EXPORTERS:
        raise ValueError(f"unknown export format {format!r}; choose one of {list(FORMATS)}")
    given = {"paths": paths, "tokens": tokens, "max_repetition": max_repetition, "available": available}
    options = {k: v for k, v in given.items() if v is not None}
    unused = sorted(set(options) - _OPTIONS[format])
    if unused:
        raise ValueError(f"format {format!r} has no place for option(s) {unused}")
    return EXPORTERS[format](weights, digits=digits, **options)
