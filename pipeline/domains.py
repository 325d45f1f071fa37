"""Which files belong to which domain: `--input/--domain` pairs or a domains YAML file."""

from __future__ import annotations

import os
from pathlib import Path


def read_domains_yaml(config: str | os.PathLike[str]) -> dict[str, list[str]]:
    """domain -> globs from a YAML file (`{domain: glob or [globs]}`, optionally under `domains:`);
    relative globs are relative to the file."""
    from mixer.files import read_yaml  # refuses YAML aliases (no billion-laughs expansion)

    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no such config file")
    data = read_yaml(config) or {}
    data = data.get("domains", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{config}: expected a mapping of domain -> glob or list of globs")
    out: dict[str, list[str]] = {}
    for domain, globs in data.items():
        globs = [globs] if isinstance(globs, str) else globs
        if not isinstance(globs, list) or not all(isinstance(g, str) for g in globs) or not globs:
            raise ValueError(f"{config}: domain {domain!r} must map to a glob or a list of globs")
        out[str(domain)] = [
            g if "://" in g or Path(g).is_absolute() else str(config.parent / g) for g in globs
        ]
    return out


def domain_inputs(
    inputs: list[str], domains: list[str], config: str | os.PathLike[str] | None = None
) -> dict[str, list[str]]:
    """domain -> globs from `--input/--domain` pairs (one --domain may cover every --input) or a YAML file."""
    if config is not None:
        if inputs or domains:
            raise ValueError("give either --config or --input/--domain, not both")
        return read_domains_yaml(config)
    if not inputs:
        raise ValueError("no inputs: give --input GLOB --domain NAME (repeatable) or --config domains.yaml")
    if len(domains) == 1:
        domains = domains * len(inputs)
    if len(domains) != len(inputs):
        raise ValueError(
            f"got {len(inputs)} --input and {len(domains)} --domain; give one --domain per "
            "--input, or a single --domain for all of them"
        )
    out: dict[str, list[str]] = {}
    for glob, domain in zip(inputs, domains, strict=True):
        out.setdefault(domain, []).append(glob)
    return out
