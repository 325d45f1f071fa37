"""The report a person reads: one self-contained HTML page with PNG plots, built from the Parquet
tables, mixture files and JSON of a run.

A `datamixer demo` directory gets the headline (chosen mixture vs natural and uniform, predicted vs
measured at the target, the two optimisers' disagreement, warnings) and one section per stage; the
output of a single step (`score` directory, `regmix fit` directory, `law fit` JSON) gets its own
sections. `sources` reads, `sections` and `headline` draw, `page` renders, `style` keeps the look.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixer.files import atomic_path, write_parquet
from pipeline.report.page import REPORT_DIR, REPORT_HTML, Headline, Report, Section, render_html
from pipeline.report.sections import (
    law_section,
    mixtures_section,
    proposals_section,
    regression_section,
    score_section,
    selection_section,
    target_section,
)
from pipeline.report.sources import collect, detect

__all__ = [
    "REPORT_DIR",
    "REPORT_HTML",
    "Headline",
    "Report",
    "Section",
    "collect",
    "detect",
    "law_section",
    "mixtures_section",
    "output_paths",
    "proposals_section",
    "regression_section",
    "render_html",
    "score_section",
    "selection_section",
    "target_section",
    "write_report",
]


def output_paths(source: str | Path) -> tuple[Path, Path]:
    """(page, folder of PNGs and Parquet tables): inside a directory, or beside a law JSON."""
    source = Path(source)
    if source.is_file():
        stem = source.with_suffix("")
        return stem.with_name(stem.name + ".report.html"), stem.with_name(stem.name + ".report")
    return source / REPORT_HTML, source / REPORT_DIR


def write_report(source: str | Path, title: str = "datamixer report") -> dict[str, Any]:
    """Write the HTML page and, beside it, each plot's PNG and the full Parquet table behind it."""
    report = collect(source)
    if not report.sections and report.headline is None:
        raise ValueError(f"{source}: nothing to report (missing: {', '.join(report.missing)})")
    page, folder = output_paths(source)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        if report.headline is not None and report.headline.png:
            (tmp / "headline.png").write_bytes(report.headline.png)
        for section in report.sections:
            if section.png:
                (tmp / f"{section.key}.png").write_bytes(section.png)
            write_parquet(tmp / f"{section.key}.parquet", section.table.reset_index(drop=True))
    with atomic_path(page) as tmp:
        tmp.write_text(render_html(report, title, link_dir=folder.name))
    return {
        "report": str(page),
        "kind": report.kind,
        "headline": report.headline is not None,
        "sections": [s.key for s in report.sections],
        "plots": sum(1 for s in report.sections if s.png)
        + int(bool(report.headline and report.headline.png)),
        "missing": report.missing,
    }
