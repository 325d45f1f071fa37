"""`datamixer demo`: the whole method end to end on the bundled corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from datamixer.commands._common import emit, info, stage_progress
from datamixer.options import Seed


def demo(
    out: Annotated[Path, typer.Option("--out", help="output directory (replaced stage by stage)")] = Path(
        "out/demo"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="small runs, about a minute on 2 cores")] = False,
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="train the target on each compared mixture")
    ] = True,
    workers: Annotated[
        int | None, typer.Option("--workers", help="sweep processes (default: all cores)")
    ] = None,
    seed: Seed = 0,
) -> None:
    """Corpus -> score and select (Beam) -> propose -> proxy sweep -> RegMix -> law -> target -> report."""
    from pipeline.demo import DemoConfig, run_demo

    config = DemoConfig.quick() if quick else DemoConfig()
    config = DemoConfig(**{**config.__dict__, "seed": seed, "workers": workers, "validate": validate})
    result = run_demo(out, config, log=info, track=stage_progress)
    info("")
    print_comparison(result)
    info(f"report: {result['report']}")
    emit(result)


def print_comparison(result: dict) -> None:
    """Predicted beside measured for each mixture, then the plain verdicts and the optimisers' gap."""
    checked = result["comparison"]
    info(f"chosen by {result['chosen_by']}: {result['mixture']}")
    info(f"  {'mixture':12s} {'predicted [interval]':>26s}   measured (per seed)")
    for row in checked["mixtures"]:
        seeds = ", ".join(f"{v:.4f}" for v in row["measured_seeds"].values())
        measured = f"{row['measured']:.4f} ({seeds})" if row["measured"] is not None else "not trained"
        interval = f"{row['predicted']:.4f} [{row['low']:.4f}, {row['high']:.4f}]"
        info(f"  {row['mixture']:12s} {interval:>26s}   {measured}")
    for sentence in checked["verdicts"]:
        info(sentence)
    info(checked["disagreement"]["text"])
    for warning in checked["warnings"]:
        info(f"warning: {warning}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
