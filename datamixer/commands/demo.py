"""`datamixer demo`: the whole method end to end on the bundled corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from datamixer.commands._common import emit, info


def demo(
    out: Annotated[Path, typer.Option("--out", help="output directory (replaced stage by stage)")] = Path(
        "out/demo"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="small runs, about a minute on 2 cores")] = False,
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="train the target on optimized and natural")
    ] = True,
    workers: Annotated[
        int | None, typer.Option("--workers", help="sweep processes (default: all cores)")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Corpus -> score and select (Beam) -> propose -> proxy sweep -> RegMix -> law -> target -> report."""
    from pipeline.demo import DemoConfig, run_demo

    config = DemoConfig.quick() if quick else DemoConfig()
    config = DemoConfig(**{**config.__dict__, "seed": seed, "workers": workers, "validate": validate})
    result = run_demo(out, config, log=info)
    info("")
    info(f"optimized mixture: {result['mixture']}")
    for name, loss in result["predicted"].items():
        measured = result["measured"].get(name)
        shown = f"{measured:.4f}" if measured is not None else "not trained"
        info(f"  {name:10s} predicted {loss:.4f}   measured {shown}")
    info(f"report: {result['report']}")
    emit(result)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
