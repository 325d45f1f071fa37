"""The page: a headline block, then one section per stage (a figure, a short table, a link to the
full Parquet table), rendered as one self-contained HTML file (plots inlined as data URIs)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

import pandas as pd

REPORT_HTML = "report.html"
REPORT_DIR = "report"
SHORT_ROWS = 8

CSS = """
body{font-family:system-ui,sans-serif;max-width:76em;margin:0 auto;padding:0.4em 1.2em;color:#222}
h1{font-size:1.35em;margin:0.2em 0}
h2{font-size:1.1em;margin:1.4em 0 0.3em;border-bottom:1px solid #ddd}
table.data{border-collapse:collapse;font-size:0.85em;margin:0.3em 0}
table.data td,table.data th{padding:2px 8px;border-bottom:1px solid #e4e4e4;text-align:right}
table.data th{background:#f5f5f5}
img{max-width:100%}
.note{color:#666;font-size:0.85em}
.lead{margin:0.2em 0 0.4em}
.headline{display:flex;flex-wrap:wrap;gap:0.4em 1.2em;align-items:flex-start}
.headline .plot{flex:0 0 auto}
.headline .numbers{flex:1 1 0;min-width:28em;font-size:0.88em}
.headline table.data td{white-space:nowrap}
.verdict{margin:0.25em 0}
.beat{color:#1b7e3e}.miss{color:#b03a2e}
.warnings{background:#fff6db;border-left:4px solid #e6a700;padding:0.2em 0.8em;margin:0.4em 0;
  font-size:0.88em}
.warnings ul{margin:0.2em 0;padding-left:1.2em}
"""


@dataclass
class Section:
    """One block of the page: a title, a PNG plot, the full table behind it (saved as Parquet),
    the few rows worth reading (`short`, default the first rows of `table`), a caption and links to
    the input files it was drawn from (relative to the page)."""

    key: str
    title: str
    png: bytes | None
    table: pd.DataFrame
    caption: str = ""
    short: pd.DataFrame | None = None
    links: tuple[str, ...] = ()


@dataclass
class Headline:
    """The answer at the top: a figure and ready-made HTML for the numbers beside it."""

    png: bytes | None
    html: str
    values: dict[str, object] = field(default_factory=dict)


@dataclass
class Report:
    sections: list[Section] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    headline: Headline | None = None
    kind: str = "run"


def table_html(frame: pd.DataFrame) -> str:
    """A compact HTML table, floats to 4 significant digits."""
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="data", na_rep="")


def image_html(png: bytes, alt: str, css_class: str = "plot") -> str:
    data = base64.b64encode(png).decode()
    return f"<img class={css_class} alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def section_html(section: Section, link_dir: str) -> str:
    """A section: figure, caption, the short table and a link to the full one."""
    parts = [f"<section id='{section.key}'><h2>{html.escape(section.title)}</h2>"]
    if section.png:
        parts.append(image_html(section.png, section.title))
    if section.caption:
        parts.append(f"<p>{html.escape(section.caption)}</p>")
    short = section.short if section.short is not None else section.table.head(SHORT_ROWS)
    if not short.empty:
        parts.append(table_html(short))
    if section.links:
        anchors = ", ".join(f"<a href='{html.escape(p)}'>{html.escape(p)}</a>" for p in section.links)
        parts.append(f"<p class=note>Drawn from {anchors}</p>")
    link = f"{link_dir}/{section.key}.parquet"
    parts.append(
        f"<p class=note>Full table ({len(section.table)} rows): "
        f"<a href='{html.escape(link)}'>{html.escape(link)}</a></p></section>"
    )
    return "".join(parts)


def render_html(report: Report, title: str, link_dir: str = REPORT_DIR) -> str:
    """The page: headline first, then the sections; no external resources."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if report.headline is not None:
        parts.append(report.headline.html)
    for section in report.sections:
        parts.append(section_html(section, link_dir))
    if report.missing:
        parts.append("<p class=note>Not in this run: " + ", ".join(map(html.escape, report.missing)) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
