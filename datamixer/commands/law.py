"""`datamixer law ...`: fit, evaluate and use loss laws L(N, D, h)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from datamixer.commands._common import emit, info, stage_progress, write_table
from datamixer.options import Caps, MaxEpochs, Stats, TrainTokens, parse_mapping, split_list

group = typer.Typer(
    help="Fit loss laws L(N, D, h) on runs tables; predict, optimise the mixture, "
    "find compute-optimal sizes.",
    no_args_is_help=True,
)


LawJson = Annotated[Path, typer.Option("--law", help="Law JSON written by `law fit`.")]
LawTarget = Annotated[str | None, typer.Option("--target", help="Target column (default: the law's first).")]


def register(app: typer.Typer) -> None:
    """Add the `law` command group."""
    app.add_typer(group, name="law")


@group.command("fit")
def fit_command(
    runs: Annotated[Path, typer.Option("--runs", help="Runs table (CSV/Parquet): N, D, loss, h_<domain>.")],
    law: Annotated[str, typer.Option("--law", help="chinchilla | additive | joint | mixing")],
    out: Annotated[Path, typer.Option("--out", help="Law JSON to write (reports are written beside it).")],
    targets: Annotated[
        list[str] | None, typer.Option("--targets", help="Target column(s), comma-separated (default: loss).")
    ] = None,
    n_restarts: Annotated[
        int | None, typer.Option("--restarts", help="Basin-hopping restarts (mixture laws; default 6).")
    ] = None,
    n_bootstrap: Annotated[
        int | None, typer.Option("--bootstrap", help="Bootstrap refits for intervals (default 100 / 50).")
    ] = None,
    n_starts: Annotated[
        int | None, typer.Option("--starts", help="Random starts screened (mixture laws; default 256).")
    ] = None,
    niter: Annotated[
        int | None, typer.Option("--hops", help="Basin-hopping steps per restart (mixture laws; default 8).")
    ] = None,
    method: Annotated[str, typer.Option("--method", help="chinchilla only: screened | grid.")] = "screened",
    search: Annotated[
        str | None,
        typer.Option(
            "--search",
            help=(
                "Mixture laws: auto (default: least_squares above 512 rows) | least_squares (vectorised) "
                "| scipy_least_squares (one scipy call per start) | basinhopping."
            ),
        ),
    ] = None,
    per_domain: Annotated[
        bool | None,
        typer.Option(
            "--per-domain/--no-per-domain",
            help="Predict a target as the weighted sum of per-domain laws (<target>_<domain>) when the "
            "table has columns that sum to it (default: on for additive and mixing, off for chinchilla "
            "and joint; see docs/laws.md).",
            show_default=False,
        ),
    ] = None,
    size_weight: Annotated[
        float | None,
        typer.Option(
            "--size-weight",
            help="Weight rows by (N / N_min)^w so larger proxies count more (default 1 for laws in N "
            "and D; 0 turns it off).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for starts, basin-hopping and bootstrap.")] = 0,
) -> None:
    """Fit a law on a runs table and write LAW.json, LAW.params.parquet, LAW.residuals.parquet, LAW.png."""
    from mixer.laws import LAWS, make_law
    from mixer.laws.fitting import counting_searches
    from mixer.runs import load_runs
    from pipeline.report.law_fit import write_law_fit_report

    if law not in LAWS:
        raise ValueError(f"--law must be one of {', '.join(LAWS)}, got {law!r}")
    target_list = split_list(targets) or ["loss"]
    options = {
        "n_bootstrap": n_bootstrap,
        "method": method,
        "n_restarts": n_restarts,
        "n_starts": n_starts,
        "niter": niter,
        "search": search,
        "size_weight": size_weight,
    }
    accepted = LAWS[law]._get_param_names()  # each law takes the options that apply to its search
    kwargs = {k: v for k, v in options.items() if v is not None and k in accepted}
    estimator = make_law(law, targets=tuple(target_list), seed=seed, per_domain=per_domain, **kwargs)
    frame = load_runs(runs, targets=target_list, require_weights=estimator.form.uses_mixture)
    info(f"fitting the {law} law on {len(frame)} rows of {runs} (targets: {', '.join(target_list)})")
    started = time.perf_counter()
    with stage_progress(f"{law} law fit", unit="local searches") as advance, counting_searches(advance):
        estimator.fit(frame)
    seconds = time.perf_counter() - started
    for target, parts in estimator.components_.items():
        info(f"{target} = weighted sum of {len(parts)} per-domain laws ({', '.join(parts)})")
    if estimator.size_weight_:
        info(f"rows weighted by (N / N_min)^{estimator.size_weight_:g} (--size-weight 0 turns it off)")
    estimator.save(out)
    paths, metrics = write_law_fit_report(estimator, frame, out, runs.name)
    emit(_fit_summary(estimator, out, paths, metrics, seconds))


def _fit_summary(estimator: Any, out: Path, paths: dict[str, Path], metrics: dict, seconds: float) -> dict:
    """The JSON line of `law fit` (and its progress line): in-sample quality of the law's first
    target; objective and parameters of its first fit (`objective_target`: a per-domain law's
    first component)."""
    fit = estimator.fits_[0]
    info(
        f"objective {fit.diagnostics['objective']:.6g} ({fit.diagnostics['n_at_best']} of "
        f"{fit.diagnostics['n_searches']} searches reached it); in-sample MRE {100 * metrics['mre']:.3f}% "
        f"in {seconds:.1f} s"
    )
    return {
        "law": estimator.kind,
        "out": str(out),
        "n": metrics["n"],
        "mre": metrics["mre"],
        "max_re": metrics["max_re"],
        "spearman": metrics["spearman"],
        "objective": fit.diagnostics["objective"],
        "objective_target": fit.target,
        "params": fit.params if estimator.form.uses_size else None,
        "per_domain": {t: len(parts) for t, parts in estimator.components_.items()},
        "size_weight": estimator.size_weight_,
        "n_fits": len(estimator.fits_),
        "fit_seconds": round(seconds, 3),
        "report": {k: str(v) for k, v in paths.items()},
    }


@group.command("evaluate")
def evaluate_command(
    law_path: LawJson,
    runs: Annotated[Path, typer.Option("--runs", help="Runs table to predict.")],
    target: LawTarget = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Optional Parquet of per-run predictions and residuals.")
    ] = None,
) -> None:
    """Mean and max relative error and Spearman rho of the law's predictions on a runs table."""
    import numpy as np

    from mixer.files import write_parquet
    from mixer.laws import evaluation_metrics, load_law, residuals_table
    from mixer.runs import load_runs

    law = load_law(law_path)
    target = target or law.targets_[0]
    frame = load_runs(runs, targets=[target], require_weights=law.form.uses_mixture)
    observed = frame[target].to_numpy(dtype=float)
    pred = law.predict_interval(frame, target)
    metrics = evaluation_metrics(observed, pred["loss"].to_numpy())
    restarts = law.predict_restarts(frame, target) if law.form.uses_size else np.empty((0, len(frame)))
    restart_mre = [float(np.mean(np.abs(r - observed) / observed)) for r in restarts]
    inside = float(np.mean((observed >= pred["low"].to_numpy()) & (observed <= pred["high"].to_numpy())))
    if out is not None:
        write_parquet(out, residuals_table(law, frame, [target]))
    info(
        f"{law.kind} law on {runs}: MRE {100 * metrics['mre']:.3f}%, max {100 * metrics['max_re']:.3f}%, "
        f"Spearman {metrics['spearman']:.4f} over {metrics['n']} rows"
    )
    emit(
        {
            **metrics,
            "target": target,
            "law": law.kind,
            "interval_coverage": inside,
            "mre_restarts": restart_mre,
            "out": str(out) if out else None,
        }
    )


def _read_mixture_arg(path: Path | None) -> dict[str, float] | None:
    from mixer.mixture import read_mixture

    return read_mixture(path) if path is not None else None


@group.command("predict")
def predict_command(
    law_path: LawJson,
    n: Annotated[float, typer.Option("--N", help="Model parameters (non-embedding), e.g. 1e9.")],
    d: Annotated[float, typer.Option("--D", help="Training tokens, e.g. 1e11.")],
    mixture: Annotated[
        Path | None, typer.Option("--mixture", help="Mixture YAML/JSON (required for mixture laws).")
    ] = None,
    target: LawTarget = None,
    level: Annotated[float, typer.Option("--level", help="Interval level from the bootstrap fits.")] = 0.95,
) -> None:
    """Predicted loss at (N, D[, h]) with its bootstrap interval."""
    from mixer.laws import load_law

    law = load_law(law_path)
    weights = _read_mixture_arg(mixture)
    frame = law.frame_for(n, d, weights)
    pred = law.predict_interval(frame, target, level)
    row = pred.iloc[0]
    info(
        f"{law.kind} law: loss {row['loss']:.4f} [{row['low']:.4f}, {row['high']:.4f}] "
        f"at N={n:.3g}, D={d:.3g}"
    )
    emit(
        {
            "loss": float(row["loss"]),
            "low": float(row["low"]),
            "high": float(row["high"]),
            "level": level,
            "N": n,
            "D": d,
            "target": target or law.targets_[0],
            "law": law.kind,
            "mixture": weights,
        }
    )


@group.command("optimize")
def optimize_command(
    law_path: LawJson,
    n: Annotated[float, typer.Option("--N", help="Model parameters of the target run.")],
    d: Annotated[float, typer.Option("--D", help="Training tokens of the target run.")],
    out: Annotated[Path, typer.Option("--out", help="Mixture YAML (or .json) to write.")],
    floor: Annotated[float, typer.Option("--floor", help="Minimum weight of every domain.")] = 0.0,
    caps: Caps = None,
    targets: Annotated[
        list[str] | None, typer.Option("--targets", help="Targets to trade off (comma-separated).")
    ] = None,
    weights: Annotated[
        list[str] | None, typer.Option("--weights", help="Their weights (comma-separated).")
    ] = None,
    stats: Stats = None,
    train_tokens: TrainTokens = None,
    max_epochs: MaxEpochs = 4.0,
) -> None:
    """The mixture minimising the (weighted) predicted loss at (N, D) of an additive, joint or mixing law,
    by mirror descent on the simplex; data-budget caps use --train-tokens (default: --D)."""
    from mixer.api import law_mixture

    target_list = split_list(targets) or None
    weight_list = [float(w) for w in split_list(weights)] or None
    if weight_list is not None and target_list is None:
        raise ValueError("--weights needs --targets")
    result = law_mixture(
        law_path,
        n,
        d,
        out=out,
        floor=floor,
        caps=parse_mapping(caps, "--caps") or None,
        targets=target_list,
        weights=weight_list,
        stats=stats,
        tokens=train_tokens,
        max_epochs=max_epochs,
        summary=True,
    )
    for message in result["warnings"]:
        info(f"warning: {message}")
    spread = {dom: s["std"] for dom, s in result["spread"].items()}
    info("weights: " + ", ".join(f"{k} {v:.3f} (+/- {spread[k]:.3f})" for k, v in result["weights"].items()))
    emit(result)


@group.command("compute-optimal")
def compute_optimal_command(
    law_path: LawJson,
    flops: Annotated[float, typer.Option("--flops", help="Training compute C in FLOPs (C = 6 N D).")],
    mixture: Annotated[
        Path | None, typer.Option("--mixture", help="Mixture (mixture laws; default: mean training mixture).")
    ] = None,
    target: LawTarget = None,
) -> None:
    """The N and D that minimise the predicted loss of a chinchilla, additive or joint law for a compute
    budget C = 6 N D."""
    from mixer.laws import compute_optimal, load_law

    law = load_law(law_path)
    result = compute_optimal(law, flops, _read_mixture_arg(mixture), target)
    info(
        f"C = {flops:.3g}: N = {result['N']:.4g}, D = {result['D']:.4g} ({result['tokens_per_param']:.1f} "
        f"tokens/param), loss {result['loss']:.4f}"
    )
    emit({**result, "law": law.kind})


@group.command("reference-runs")
def reference_runs_command(
    source: Annotated[str, typer.Option("--source", help="mixinglaws-redpajama | chinchilla")],
    out: Annotated[Path, typer.Option("--out", help="Runs table to write (.parquet or .csv).")],
    sizes: Annotated[
        list[str] | None, typer.Option("--sizes", help="mixinglaws: size labels to keep, e.g. 70M,160M,305M.")
    ] = None,
    include_target_runs: Annotated[
        bool,
        typer.Option(
            "--include-target-runs", help="mixinglaws: keep the authors' target-scale runs (id > 900)."
        ),
    ] = False,
    lowest: Annotated[
        int, typer.Option("--lowest", help="chinchilla: keep the n lowest-loss points (0: all).")
    ] = 240,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Shared data folder (default: ../shared/data).")
    ] = None,
) -> None:
    """Write a runs table built from the shared reference data (Ye et al.'s RedPajama runs, Chinchilla)."""
    from mixer.reference_data import reference_runs

    frame = reference_runs(
        source,
        data_dir,
        sizes=split_list(sizes) or None,
        include_target_runs=include_target_runs,
        lowest=lowest or None,
    )
    write_table(out, frame)
    domains = [c[2:] for c in frame.columns if c.startswith("h_")]
    info(f"{source}: {len(frame)} rows, N {frame['N'].min():.3g}-{frame['N'].max():.3g}, domains {domains}")
    n_values = sorted({float(v) for v in frame["N"]})
    emit(
        {
            "source": source,
            "out": str(out),
            "n": len(frame),
            "domains": domains,
            "N_values": n_values if len(n_values) <= 20 else None,
        }
    )
