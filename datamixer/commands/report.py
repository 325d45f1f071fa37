"""`datamixer report DIR`: the HTML page and Parquet tables of a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from datamixer.commands._common import emit, info


def report(
    run_dir: Annotated[Path, typer.Argument(help="a `datamixer demo --out` directory")],
    title: Annotated[str, typer.Option("--title")] = "datamixer report",
) -> None:
    """Write DIR/report.html (plots embedded) and DIR/report/*.png + *.parquet."""
    from pipeline.report import write_report

    result = write_report(run_dir, title)
    info(f"wrote {result['report']} ({len(result['sections'])} sections)")
    emit(result)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
