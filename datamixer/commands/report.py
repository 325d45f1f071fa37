"""`datamixer report DIR`: the HTML page and Parquet tables of a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from datamixer.commands._common import emit, info


def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="a `datamixer demo --out` directory, a `score` output directory, a `regmix propose` "
            "output, a `regmix fit` model directory or a `law fit` JSON"
        ),
    ],
    title: Annotated[str, typer.Option("--title")] = "datamixer report",
) -> None:
    """Write DIR/report.html (plots embedded) and DIR/report/*.png + *.parquet (for a law JSON:
    LAW.report.html and LAW.report/ beside it)."""
    from pipeline.report import write_report

    result = write_report(run_dir, title)
    info(f"wrote {result['report']} ({result['kind']}: {len(result['sections'])} sections)")
    emit(result)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
