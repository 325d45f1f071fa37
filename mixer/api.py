"""The small public API a training script or a Hydra config calls.

Every function is a plain function with keyword arguments that returns plain data (a dict or
text), so it works as a Hydra/OmegaConf `_target_`:

    mixture:
      _target_: mixer.load_mixture
      path: mixture.yaml

and from a training script in two lines:

    from mixer import load_mixture
    weights = load_mixture("mixture.yaml")   # {"code": 0.25, "prose": 0.75}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixer import budget as _budget
from mixer import exports as _exports
from mixer.mixture import check_domains, normalize_weights, read_mixture, write_mixture

PathLike = str | os.PathLike[str]


def load_mixture(path: PathLike, domains: list[str] | None = None) -> dict[str, float]:
    """Read and validate a mixture file (YAML/JSON from `regmix optimize` or `law optimize`) and
    return domain -> weight, sorted by domain.

    With `domains` (the datasets the trainer has), the mixture must name exactly those domains.
    """
    weights = read_mixture(path)
    if domains is not None:
        try:
            check_domains(weights, domains, "trainer")
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return {d: weights[d] for d in sorted(weights)}


def _weights(mixture: PathLike | Mapping[str, float]) -> dict[str, float]:
    if isinstance(mixture, Mapping):
        return normalize_weights(mixture)
    return load_mixture(mixture)


def _available(stats: PathLike | Mapping[str, float]) -> dict[str, float]:
    if isinstance(stats, Mapping):
        return {str(d): float(t) for d, t in stats.items()}
    return dict(_budget.read_domain_stats(stats))


def export_mixture(
    mixture: PathLike | Mapping[str, float],
    format: str = "json",
    paths: PathLike | Mapping[str, Any] | None = None,
    tokens: int | str | None = None,
    max_repetition: float | None = None,
    digits: int = _exports.DEFAULT_DIGITS,
) -> str:
    """A mixture (file or mapping) rendered for a trainer: one of megatron, hf, olmo, json, yaml.

    `paths` maps domain -> dataset path(s) or prefix (a mapping or a YAML/JSON file).
    """
    if paths is not None and not isinstance(paths, Mapping):
        paths = _exports.read_paths(paths)
    return _exports.export_text(
        _weights(mixture),
        format,
        paths=paths,
        tokens=None if tokens is None else _budget.parse_tokens(tokens),
        max_repetition=max_repetition,
        digits=digits,
    )


def interleave_config(
    mixture: PathLike | Mapping[str, float],
    paths: PathLike | Mapping[str, Any] | None = None,
    digits: int = _exports.DEFAULT_DIGITS,
) -> dict[str, Any]:
    """Dataset order and probabilities for `datasets.interleave_datasets` (the `hf` export)."""
    if paths is not None and not isinstance(paths, Mapping):
        paths = _exports.read_paths(paths)
    return _exports.hf_config(_weights(mixture), paths=paths, digits=digits)


def budget_caps(
    stats: PathLike | Mapping[str, float],
    tokens: int | str,
    max_epochs: float = _budget.DEFAULT_MAX_EPOCHS,
) -> dict[str, float]:
    """Per-domain weight caps `min(1, max_epochs * tokens_kept / tokens)` from
    `domain_stats.parquet` (or a mapping domain -> tokens available)."""
    return _budget.epoch_caps(_budget.parse_tokens(tokens), _available(stats), max_epochs)


def check_mixture_budget(
    mixture: PathLike | Mapping[str, float],
    stats: PathLike | Mapping[str, float],
    tokens: int | str,
    max_epochs: float = _budget.DEFAULT_MAX_EPOCHS,
    strict: bool = False,
) -> dict[str, Any]:
    """Tokens and epochs per domain; warns (RepetitionWarning) past `max_epochs`, or raises
    ValueError with `strict`."""
    report = _budget.check_budget(
        _weights(mixture), _available(stats), _budget.parse_tokens(tokens), max_epochs, strict
    )
    return report.to_dict()


def read_prior(prior: PathLike | Mapping[str, float] | None) -> dict[str, float] | None:
    """`--prior` as `regmix optimize` reads it: a mapping, a mixture YAML, or a token table."""
    if prior is None or isinstance(prior, Mapping):
        return None if prior is None else dict(prior)
    if Path(prior).suffix.lower() in (".yaml", ".yml"):
        return read_mixture(prior)
    from mixer.runs import load_token_counts

    return load_token_counts(prior)


def regmix_mixture(
    model: PathLike,
    out: PathLike | None = None,
    draws: int | None = None,
    top_k: int | None = None,
    prior: PathLike | Mapping[str, float] | None = None,
    concentration: float | None = None,
    caps: Mapping[str, float] | None = None,
    floors: Mapping[str, float] | None = None,
    target_weights: Mapping[str, float] | None = None,
    search: str = "refine",
    seed: int = 0,
    stats: PathLike | Mapping[str, float] | None = None,
    tokens: int | str | None = None,
    max_epochs: float = _budget.DEFAULT_MAX_EPOCHS,
    summary: bool = False,
) -> dict[str, Any]:
    """RegMix's search over a model `regmix fit` wrote, with the options of `regmix optimize`
    (`--draws`, `--top-k`, `--prior`, `--concentration`, `--caps`, `--floors`, `--target-weights`,
    `--search`, `--seed`, `--out`); None means that command's default.

    With `stats` (domain_stats.parquet or domain -> tokens) and `tokens` (planned training
    tokens), each domain's weight is also capped at `max_epochs * tokens_kept / tokens`.
    Returns domain -> weight, or with `summary` the whole summary `regmix optimize` prints.
    """
    from mixer.regmix import RegMixModel, optimize_regmix

    domains = RegMixModel.load(model).domains
    options: dict[str, Any] = {"n_draws": draws, "top_k": top_k, "concentration": concentration}
    result = optimize_regmix(
        model,
        out=out,
        prior=read_prior(prior),
        caps=_budget.optimizer_caps(domains, caps, stats, tokens, max_epochs),
        floors=floors,
        target_weights=target_weights,
        search=search,
        seed=seed,
        **{k: v for k, v in options.items() if v is not None},
    )
    return result if summary else {d: result["weights"][d] for d in sorted(result["weights"])}


def _law_provenance(
    law: PathLike,
    kind: str,
    N: float,
    planned: int,
    floor: float | Mapping[str, float],
    caps: Mapping[str, float] | None,
    weights: list[float] | None,
    optimum: Any,
) -> dict[str, Any]:
    """What `law optimize` records beside the mixture: the law, the budget, the bounds, the optimum."""
    return {
        "method": f"law optimize ({kind} law, exponentiated gradient)",
        "law": str(law),
        "N": float(N),
        "D": float(planned),
        "floor": dict(floor) if isinstance(floor, Mapping) else float(floor),
        "caps": caps,
        "targets": list(optimum.losses),
        "target_weights": None if weights is None else list(weights),
        "predicted_loss": optimum.loss,
        "spread": optimum.spread,
        "warnings": optimum.warnings,
    }


def law_mixture(
    law: PathLike,
    N: float,
    D: float | str,
    out: PathLike | None = None,
    floor: float | Mapping[str, float] = 0.0,
    caps: Mapping[str, float] | None = None,
    targets: list[str] | None = None,
    weights: list[float] | None = None,
    stats: PathLike | Mapping[str, float] | None = None,
    tokens: int | str | None = None,
    max_epochs: float = _budget.DEFAULT_MAX_EPOCHS,
    summary: bool = False,
) -> dict[str, Any]:
    """The mixture a fitted law (`law fit` JSON) predicts best at N parameters and D tokens, with
    the options of `law optimize` (`--law`, `--N`, `--D`, `--out`, `--floor`, `--caps`,
    `--targets`, `--weights`).

    With `stats`, each domain's weight is also capped at `max_epochs * tokens_kept / tokens`,
    `tokens` being the planned training tokens (default: D). Returns domain -> weight, or with
    `summary` the optimum's details (loss, spread over bootstrap fits, warnings).
    """
    from mixer.laws import load_law, optimize_mixture

    if stats is None and tokens is not None:
        raise ValueError("the data-budget caps need both `stats` (tokens per domain) and `tokens`")
    fitted = load_law(law)
    planned = _budget.parse_tokens(D)
    budget_tokens: int | str | None = None if stats is None else (planned if tokens is None else tokens)
    bounds = _budget.optimizer_caps(list(fitted.domains_), caps, stats, budget_tokens, max_epochs)
    optimum = optimize_mixture(
        fitted, float(N), float(planned), floor=floor, caps=bounds, targets=targets, weights=weights
    )
    mixture = {d: optimum.weights[d] for d in sorted(optimum.weights)}
    if out is not None:  # the provenance `law optimize` writes, plus the budget behind the caps
        provenance = _law_provenance(law, fitted.kind, N, planned, floor, bounds, weights, optimum)
        if budget_tokens is not None:  # set exactly when stats is
            provenance["budget"] = {"tokens": _budget.parse_tokens(budget_tokens), "max_epochs": max_epochs}
        write_mixture(out, mixture, provenance)
    if not summary:
        return mixture
    return {
        **optimum.to_dict(),
        "out": None if out is None else str(out),
        "N": float(N),
        "D": float(planned),
        "law": fitted.kind,
    }
