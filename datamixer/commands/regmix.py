"""`datamixer regmix`: propose proxy mixtures, fit/evaluate/predict regressors, optimise a mixture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from datamixer.commands._common import emit, info, write_table
from datamixer.options import (
    MIXTURE_SUFFIXES,
    Caps,
    Changed,
    Floors,
    MaxEpochs,
    Reuse,
    Seed,
    Stats,
    TrainTokens,
    parse_mapping,
    split_list,
)

group = typer.Typer(
    help="RegMix (Liu et al. 2024): proxy mixtures, loss regressors, and the mixture search.",
    no_args_is_help=True,
)


# `regmix propose` options of the flat sampler; over a tree each level sets its own.
FLAT_DEFAULTS: dict[str, Any] = {
    "temperature": 0.5,
    "min_concentration": 0.1,
    "max_concentration": 5.0,
    "min_weight": 2e-4,
    "round_to": None,
}


@group.command("propose")
def propose(
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    tokens: Annotated[
        Path | None,
        typer.Option("--tokens", help="domain,tokens table (CSV/Parquet/JSON) or domain_stats.parquet"),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="number of proxy mixtures")] = 512,
    proxy_tokens: Annotated[
        float, typer.Option("--proxy-tokens", help="tokens each proxy run trains on")
    ] = 1e9,
    max_epochs: Annotated[
        float, typer.Option("--max-epochs", help="cap: max epochs over a domain's tokens")
    ] = 15.0,
    temperature: Annotated[
        float, typer.Option("--temperature", help="prior = token share ** temperature")
    ] = FLAT_DEFAULTS["temperature"],
    min_concentration: Annotated[float, typer.Option("--min-concentration")] = FLAT_DEFAULTS[
        "min_concentration"
    ],
    max_concentration: Annotated[float, typer.Option("--max-concentration")] = FLAT_DEFAULTS[
        "max_concentration"
    ],
    min_weight: Annotated[
        float, typer.Option("--min-weight", help="weights below this become 0")
    ] = FLAT_DEFAULTS["min_weight"],
    round_to: Annotated[
        float | None, typer.Option("--round-to", help="rounding grid (default: --min-weight; 0: off)")
    ] = None,
    dedup_l1: Annotated[
        float, typer.Option("--dedup-l1", help="drop mixtures within this L1 of another")
    ] = 1e-5,
    caps: Caps = None,
    floors: Floors = None,
    reuse: Reuse = None,
    changed: Changed = None,
    tree: Annotated[
        Path | None, typer.Option("--tree", help="domain tree YAML: sample level by level (docs/swarms.md)")
    ] = None,
    existing: Annotated[
        Path | None, typer.Option("--existing", help="runs already trained: keep new mixtures away from them")
    ] = None,
    min_distance: Annotated[
        float | None,
        typer.Option("--min-distance", help="L1 from --existing runs (default: half their NN median)"),
    ] = None,
    uncertain: Annotated[
        str | None,
        typer.Option("--uncertain", help="target column of --existing: pick where a GP is least sure"),
    ] = None,
    nonzero: Annotated[
        str | None, typer.Option("--nonzero", help="domains (or tree nodes) that must stay non-zero: d1,d2")
    ] = None,
    seed: Seed = 0,
) -> None:
    """Sample proxy mixtures (RegMix's capped Dirichlet sampler, or level by level over --tree) into
    DIR/proposals.parquet (docs/swarms.md).

    With --reuse PREVIOUS.yaml --changed d1,d2 (Olmix's mixture reuse), the unchanged domains keep
    their previous ratios as one virtual domain: a small swarm over it and the changed domains."""
    from mixer.files import write_yaml
    from mixer.runs import load_token_counts
    from mixer.sampler import domain_caps, write_proposals
    from mixer.tree import read_tree

    if tokens is None and tree is None:
        raise ValueError("give --tokens, --tree, or both")
    counts = load_token_counts(tokens) if tokens is not None else None
    domain_tree = read_tree(tree) if tree is not None else None
    frozen = _reuse(reuse, changed, list(counts or {}))
    cap_map, floor_map = parse_mapping(caps, "--caps"), parse_mapping(floors, "--floors")
    must = split_list(nonzero)
    flat = {
        "temperature": temperature,
        "min_concentration": min_concentration,
        "max_concentration": max_concentration,
        "min_weight": min_weight,
        "round_to": round_to,
    }
    settings: dict[str, Any] = {"proxy_tokens": proxy_tokens, "max_epochs": max_epochs, "dedup_l1": dedup_l1}
    if domain_tree is None:
        settings.update(flat)
    else:
        _refuse_flat_options(flat, bool(floor_map), frozen is not None)
    info(f"sampling {n} mixtures{' over ' + str(tree) if tree else ''}")
    if frozen is not None:
        if existing is not None or must:
            raise ValueError("--reuse does not combine with --existing or --nonzero yet")
        frame = _propose_reused(frozen, counts, n, cap_map, floor_map, seed, settings)
        summary: dict[str, Any] = {}
    else:
        from mixer.extend import propose_swarm

        floor_option: dict[str, Any] = {"floors": floor_map} if floor_map else {}
        frame, summary = propose_swarm(
            n,
            counts,
            domain_tree,
            existing,
            min_distance,
            uncertain,
            must,
            seed=seed,
            caps=cap_map,
            **floor_option,
            **settings,
        )
    files = {"tokens": tokens, "tree": tree, "existing": existing, "reuse": reuse}
    changes = list(frozen.changed) if frozen else []
    given = {"caps": cap_map, "floors": floor_map, "nonzero": must, "changed": changes}
    provenance = {"method": "regmix-propose", "seed": seed, **settings}
    provenance |= {k: str(v) for k, v in files.items() if v is not None}
    provenance |= {k: v for k, v in given.items() if v}
    proposals = write_proposals(frame, out, provenance)
    leaf_counts = domain_tree.leaf_tokens(counts) if domain_tree is not None else counts
    if domain_tree is not None:
        write_yaml(out / "tree.yaml", domain_tree.to_dict(leaf_counts))
    assert leaf_counts is not None  # --tokens or --tree, checked above
    effective_caps = {**domain_caps(leaf_counts, proxy_tokens, max_epochs), **cap_map}
    emit(_proposal_summary(frame, out, proposals, seed, effective_caps, summary))


def _refuse_flat_options(flat: dict[str, Any], floors: bool, reuse: bool) -> None:
    """With --tree, a flat-sampler option given on the command line is an error naming it."""
    given = [f"--{k.replace('_', '-')}" for k, v in flat.items() if v != FLAT_DEFAULTS[k]]
    given += [name for name, is_set in (("--floors", floors), ("--reuse", reuse)) if is_set]
    if given:
        raise ValueError(
            f"{', '.join(given)}: set per level in the tree file (levels: temperature, "
            "min_strength, max_strength, min_weight), or use --nonzero"
        )


def _proposal_summary(frame, out: Path, proposals: Path, seed: int, effective_caps: dict, summary: dict):
    """The JSON line of `regmix propose`."""
    from mixer.runs import domain_name

    weight_columns = [c for c in frame.columns if str(c).startswith("h_")]
    return {
        "n": len(frame),
        "domains": len(weight_columns),
        "out": str(out),
        "caps_binding": sorted(d for d, c in effective_caps.items() if c < 1.0),
        "proposals": str(proposals),
        "mixtures_dir": str(out / "mixtures"),
        "seed": seed,
        "max_epochs_proposed": float(frame["max_epochs"].max()),
        **summary,
        "max_weight": {domain_name(c): float(frame[c].max()) for c in weight_columns},
    }


@group.command("fit")
def fit(
    mixtures: Annotated[Path, typer.Option("--mixtures", help="mixture table (CSV/Parquet) or runs table")],
    losses: Annotated[
        Path, typer.Option("--losses", help="loss table joined on --key (may be the same runs table)")
    ],
    target: Annotated[list[str], typer.Option("--target", help="loss column to predict; repeat for several")],
    out: Annotated[Path, typer.Option("--out", help="model directory to write")],
    key: Annotated[str, typer.Option("--key", help="column joining mixtures and losses")] = "index",
    model: Annotated[
        str,
        typer.Option(
            "--model", help="law-blend (alias ensemble) | lightgbm | law-lightgbm | mixing-law | gp | linear"
        ),
    ] = "law-blend",
    select: Annotated[
        str | None, typer.Option("--select", help="choose the model by: cv | cross-scale (overrides --model)")
    ] = None,
    scale: Annotated[
        str | None, typer.Option("--scale", help="size/token column for cross-scale checks (default: N, D)")
    ] = None,
    candidates: Annotated[
        str | None, typer.Option("--candidates", help="models compared by --select and across scale: m1,m2")
    ] = None,
    cv_folds: Annotated[int, typer.Option("--cv-folds", help="k-fold CV on the training runs (0: off)")] = 5,
    seed: Seed = 0,
) -> None:
    """Fit one regressor per target; report CV Spearman (95% CI) beside the trivial baseline, and
    rank accuracy across scale when the runs hold two or more model sizes."""
    from mixer.regmix import MODELS, canonical_model, fit_regmix

    model = canonical_model(model)
    info(
        f"fitting {select and f'the best by {select}' or model} on {mixtures} -> {', '.join(target)} "
        f"({cv_folds}-fold CV)"
    )
    models = split_list(candidates) or list(MODELS)
    _, summary = fit_regmix(
        mixtures,
        losses,
        list(target),
        key=key,
        model=model,
        out=out,
        cv_folds=cv_folds,
        seed=seed,
        select=select,
        scale=scale,
        candidates=models,
    )
    for name, metrics in summary["cv"].items():
        _say_metrics(name, f"  {name}: {summary['model']} CV", metrics, "CV")
    for name, per_model in summary.get("cross_scale", {}).items():
        for kind, metrics in per_model.items():
            info(
                f"  {name}: {kind} fitted at {summary['scale_column']}={metrics['fit_scale']:g}, "
                f"spearman at "
                f"{metrics['scale']:g}: {metrics['spearman']:.4f}" + _baseline_text(metrics)
            )
        _say_warning(name, per_model[summary["model"]], "cross-scale")
    if len(target) == 1 and summary["cv"]:
        summary.update({f"cv_{k}": v for k, v in summary["cv"][target[0]].items()})
    emit(summary)


def _say_metrics(name: str, label: str, metrics: dict[str, Any], where: str) -> None:
    """One stderr line of a target's fit metrics beside the trivial baseline, and the warning when the
    model does not beat it."""
    info(
        f"{label}: n={metrics['n']} spearman {metrics['spearman']:.4f} "
        f"[{metrics['spearman_ci_low']:.4f}, {metrics['spearman_ci_high']:.4f}], "
        f"pearson {metrics['pearson']:.4f}, mse {metrics['mse']:.5f}" + _baseline_text(metrics)
    )
    _say_warning(name, metrics, where)


def _say_warning(name: str, metrics: dict[str, Any], where: str) -> None:
    from mixer.model_selection import baseline_warning

    warning = baseline_warning(name, metrics, where)
    if warning:
        info(warning)


def _baseline_text(metrics: dict[str, Any]) -> str:
    if metrics.get("baseline") is None:
        return "; no trivial baseline (no domain matches the target's name)"
    return (
        f"; trivial baseline {metrics['baseline_spearman']:.4f} (gap {metrics['gap']:+.4f}, "
        f"95% CI [{metrics['gap_ci_low']:+.4f}, {metrics['gap_ci_high']:+.4f}])"
    )


def _is_mixture_file(path: Path) -> bool:
    """One mixture rather than a table: a YAML file, or JSON holding ours (`{"weights": ...}`) or Olmix's
    `*_optimal.json` (`[{"domain", "weight"}, ...]`), told apart by the parsed structure."""
    suffix = path.suffix.lower()
    if suffix in MIXTURE_SUFFIXES:
        return True
    if suffix != ".json" or not path.is_file():
        return False
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        return "weights" in data
    records = data if isinstance(data, list) else [None]
    return all(isinstance(r, dict) and {"domain", "weight"} <= set(r) for r in records)


def _load_for_model(model_dir: Path, mixtures: Path, key: str):
    """The model and the mixtures to score: a table indexed by `key`, or one mixture file."""
    import pandas as pd

    from mixer.mixture import read_mixture
    from mixer.regmix import RegMixModel
    from mixer.runs import load_mixtures

    model = RegMixModel.load(model_dir)
    if _is_mixture_file(mixtures):
        weights = read_mixture(mixtures)
        frame = pd.DataFrame([weights], index=pd.Index([mixtures.stem], name=key))
    else:
        frame = load_mixtures(mixtures, key)
    return model, frame


@group.command("evaluate")
def evaluate(
    model_dir: Annotated[Path, typer.Option("--model", help="model directory written by `regmix fit`")],
    mixtures: Annotated[Path, typer.Option("--mixtures")],
    losses: Annotated[Path, typer.Option("--losses")],
    target: Annotated[
        list[str] | None, typer.Option("--target", help="loss column (default: the model's targets)")
    ] = None,
    key: Annotated[str, typer.Option("--key")] = "index",
    target_weights: Annotated[
        str | None, typer.Option("--target-weights", help="also score this weighted sum of targets: t=w,...")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the bootstrap CI")] = 0,
) -> None:
    """Score a fitted model on held-out runs: n, spearman (95% CI), pearson, mse, beside the
    trivial baseline (minus the target domain's weight; for a weighted sum of targets, minus the
    weighted sum of their domains' weights); warn when the model does not beat it."""
    from mixer.metrics import regression_metrics
    from mixer.model_selection import compare_to_baseline
    from mixer.regmix import RegMixModel, load_training_table

    model = RegMixModel.load(model_dir)
    targets = list(target or model.targets)
    unknown = [t for t in targets if t not in model.targets]
    if unknown:
        raise ValueError(f"target(s) {unknown} not fitted in {model_dir}; it has {model.targets}")
    weights, values = load_training_table(mixtures, losses, targets, key)
    predictions = model.predict(weights)
    X = weights.to_numpy(dtype=float)

    def scored(target_weights: dict[str, float]) -> dict[str, Any]:
        """Held-out metrics of the weighted sum of targets, beside the trivial baseline."""
        y = sum(w * values[t].to_numpy() for t, w in target_weights.items())
        pred = sum(w * predictions[t].to_numpy() for t, w in target_weights.items())
        return {
            **regression_metrics(y, pred, seed=seed),
            **compare_to_baseline(y, pred, X, model.domains, target_weights, seed),
        }

    per_target = {t: scored({t: 1.0}) for t in targets}
    first = per_target[targets[0]]
    for name, metrics in per_target.items():
        _say_metrics(name, name, metrics, "held-out")
    result: dict[str, Any] = {**first, "target": targets[0], "model": str(model_dir)}
    if len(targets) > 1:
        result["per_target"] = per_target
    if target_weights:
        from mixer.regmix import resolve_target_weights

        tw = resolve_target_weights(targets, parse_mapping(target_weights, "--target-weights"))
        combined = {**scored(tw), "target_weights": tw}
        info(f"weighted targets: spearman {combined['spearman']:.4f}" + _baseline_text(combined))
        _say_warning("weighted targets", combined, "held-out")
        result["combined"] = combined
    emit(result)


@group.command("predict")
def predict(
    model_dir: Annotated[Path, typer.Option("--model")],
    mixtures: Annotated[Path, typer.Option("--mixtures", help="mixture table, or one mixture YAML/JSON")],
    key: Annotated[str, typer.Option("--key")] = "index",
    out: Annotated[
        Path | None, typer.Option("--out", help="write predictions here (.parquet or .csv)")
    ] = None,
) -> None:
    """Predict each target for each mixture."""
    model, frame = _load_for_model(model_dir, mixtures, key)
    predictions = model.predict(frame)
    predictions.index = frame.index
    result: dict[str, Any] = {
        "n": len(predictions),
        "targets": model.targets,
        "mean": {t: float(predictions[t].mean()) for t in model.targets},
    }
    if len(predictions) == 1:
        result["prediction"] = {t: float(predictions[t].iloc[0]) for t in model.targets}
    if out is not None:
        write_table(out, predictions.reset_index())
        result["out"] = str(out)
    emit(result)


@group.command("optimize")
def optimize(
    model_dir: Annotated[Path, typer.Option("--model")],
    out: Annotated[
        Path, typer.Option("--out", help="mixture YAML to write (JSON and top-k Parquet beside it)")
    ],
    draws: Annotated[int, typer.Option("--draws", help="Dirichlet draws to search")] = 1_000_000,
    top_k: Annotated[int, typer.Option("--top-k", help="average this many best draws")] = 100,
    prior: Annotated[
        str | None, typer.Option("--prior", help="token table or mixture YAML (default: training mean)")
    ] = None,
    concentration: Annotated[float, typer.Option("--concentration", help="Dirichlet(prior x this)")] = 1.0,
    caps: Caps = None,
    floors: Floors = None,
    target_weights: Annotated[
        str | None, typer.Option("--target-weights", help="target=w,... (default: equal)")
    ] = None,
    search: Annotated[str, typer.Option("--search", help="refine (surrogate-guided) | brute")] = "refine",
    stats: Stats = None,
    train_tokens: TrainTokens = None,
    max_epochs: MaxEpochs = 4.0,
    proposer: Annotated[
        str, typer.Option("--proposer", help="simulate (RegMix top-k) | exact (SLSQP; smooth models)")
    ] = "simulate",
    kl_reg: Annotated[float, typer.Option("--kl-reg", help="penalty x KL(mixture || prior), as Olmix")] = 0.0,
    worst: Annotated[
        bool, typer.Option("--worst", help="propose the worst mixture under the model (a counterfactual run)")
    ] = False,
    uncertainty_penalty: Annotated[
        float,
        typer.Option(
            "--uncertainty-penalty",
            help="penalty x GP sd (gp) or L2 distance to the nearest training mixture",
        ),
    ] = 0.0,
    families: Annotated[
        Path | None, typer.Option("--families", help="task-family YAML: targets grouped and weighted")
    ] = None,
    reuse: Reuse = None,
    changed: Changed = None,
    seed: Seed = 0,
) -> None:
    """Search for the mixture with the lowest predicted loss (RegMix: simulate, average top-k;
    or solve it exactly), with Olmix's KL regulariser, task families and mixture reuse."""
    from mixer.api import read_prior
    from mixer.budget import optimizer_caps
    from mixer.families import read_families
    from mixer.regmix import RegMixModel, optimize_regmix

    if out.suffix.lower() not in MIXTURE_SUFFIXES:
        raise ValueError(f"--out must end in .yaml or .yml, got {out}")
    if families and target_weights:
        raise ValueError("give --families or --target-weights, not both")
    domains = RegMixModel.load(model_dir).domains
    info(f"searching {draws:,} mixtures ({search}, proposer {proposer}) with {model_dir}")
    summary = optimize_regmix(
        model_dir,
        out,
        n_draws=draws,
        top_k=top_k,
        prior=read_prior(prior or None),
        caps=optimizer_caps(domains, parse_mapping(caps, "--caps"), stats, train_tokens, max_epochs),
        floors=parse_mapping(floors, "--floors"),
        target_weights=(
            read_families(families) if families else parse_mapping(target_weights, "--target-weights")
        ),
        concentration=concentration,
        search=search,
        seed=seed,
        proposer=proposer,
        kl_reg=kl_reg,
        worst=worst,
        uncertainty_penalty=uncertainty_penalty,
        reuse=_reuse(reuse, changed, domains),
    )
    _say_optimum(summary)
    emit(summary)


def _say_optimum(summary: dict[str, Any]) -> None:
    """The search's result on stderr, with a warning when the mixture leaves the training region."""
    for name, proposal in (summary["proposals"] or {}).items():
        info(f"  {name}: predicted {proposal['predicted']:.4f}, KL to prior {proposal['kl_to_prior']:.4f}")
    info(
        f"predicted {summary['predicted']:.4f}; top-{summary['top_k']} predictions "
        f"{summary['topk_predicted_min']:.4f}..{summary['topk_predicted_max']:.4f}, "
        f"mean L1 to the average {summary['topk_l1_to_mean']:.3f}; scored {summary['n_evaluated']:,} draws"
    )
    if not summary["in_training_hull"]:
        info(
            f"warning: the mixture lies outside the convex hull of the training mixtures "
            f"(uncertainty, {summary['uncertainty_kind']}: {summary['uncertainty']:.4f})"
        )
    if summary["outside_training"]:
        info(
            f"warning: the mixture leaves the region of the training mixtures (nearest L1 "
            f"{summary['nearest_training_l1']:.3f} vs typical {summary['training_nn_l1_q']:.3f}; "
            f"outside range: {summary['outside_range']}); trees predict flat there"
        )


def _propose_reused(frozen, counts, n, caps, floors, seed, settings):
    """Propose over (virtual frozen domain, changed domains), then recompose over every domain; with
    the epochs each mixture asks of each domain."""
    import numpy as np
    import pandas as pd

    from mixer.reuse import VIRTUAL, expand_frame, reduced_bounds
    from mixer.sampler import domain_caps, epochs_table, propose_mixtures

    if counts is None:
        raise ValueError("--reuse needs --tokens (the token counts of every domain)")

    domains = list(frozen.domains)
    upper = np.array(
        [
            {**domain_caps(counts, settings["proxy_tokens"], settings["max_epochs"]), **caps}[d]
            for d in domains
        ]
    )
    lower = np.array([floors.get(d, 0.0) for d in domains])
    low, high = reduced_bounds(frozen, lower, upper)
    names = frozen.reduced_domains
    reduced_counts = {
        VIRTUAL: sum(counts[d] for d in frozen.frozen),
        **{d: counts[d] for d in frozen.changed},
    }
    reduced = propose_mixtures(
        reduced_counts,
        n,
        seed=seed,
        caps=dict(zip(names, high.tolist(), strict=True)),
        floors={d: v for d, v in zip(names, low.tolist(), strict=True) if v > 0},
        **settings,
    )
    frame = expand_frame(frozen, reduced)
    return pd.concat([frame, epochs_table(frame, counts, settings["proxy_tokens"])], axis=1)


def _reuse(previous: Path | None, changed: str | None, domains: list[str]):
    """The frozen-ratio reuse of `previous` (None without --reuse); --changed is required with it."""
    from mixer.mixture import read_mixture
    from mixer.reuse import freeze

    if previous is None:
        if changed:
            raise ValueError("--changed needs --reuse PREVIOUS.yaml")
        return None
    names = split_list(changed)
    if not names:
        raise ValueError("--reuse needs --changed d1,d2 (the domains added or revised)")
    return freeze(read_mixture(previous), domains, names)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="regmix")
