"""The report a person reads: one self-contained HTML page with PNG plots, built from the
Parquet tables and mixture files of a `datamixer demo` output directory.

Every section is drawn from a file that exists in the directory; a missing file leaves its
section out and is listed at the top of the page, so a partial run still gets a report.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mixer.files import atomic_path, write_parquet
from mixer.mixture import read_mixture
from pipeline import layout, schema

REPORT_HTML = "report.html"
REPORT_DIR = "report"


@dataclass
class Section:
    """One block of the page: a title, a PNG plot, the table behind it and a caption."""

    key: str
    title: str
    png: bytes | None
    table: pd.DataFrame
    caption: str = ""


@dataclass
class Report:
    sections: list[Section] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _figure_png(draw: Callable[[object], None], width: float = 7.0, height: float = 4.0) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    draw(ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def domain_stats_section(stats: pd.DataFrame) -> Section:
    """Tokens per domain before and after selection."""
    stats = stats.sort_values(schema.DOMAIN).reset_index(drop=True)

    def draw(ax) -> None:
        x = np.arange(len(stats))
        ax.bar(x - 0.2, stats[schema.TOKENS_IN], 0.4, label="tokens in")
        ax.bar(x + 0.2, stats[schema.TOKENS_KEPT], 0.4, label="tokens kept")
        ax.set_xticks(x, stats[schema.DOMAIN], rotation=30, ha="right")
        ax.set_ylabel("tokens")
        ax.legend()

    kept = stats[schema.TOKENS_KEPT].sum() / max(1, stats[schema.TOKENS_IN].sum())
    return Section("domain_stats", "Domains before and after selection", _figure_png(draw), stats,
                   f"{kept:.1%} of tokens kept overall.")


def score_section(scores: pd.DataFrame, column: str) -> Section:
    """Histogram of one scorer's scores per domain, with the kept share."""
    domains = sorted(scores[schema.DOMAIN].unique())

    def draw(ax) -> None:
        bins = np.linspace(scores[column].min(), scores[column].max(), 31)
        for domain in domains:
            ax.hist(scores.loc[scores[schema.DOMAIN] == domain, column], bins=bins, alpha=0.5,
                    label=domain)
        ax.set_xlabel(column)
        ax.set_ylabel("documents")
        ax.legend()

    summary = (
        scores.groupby(schema.DOMAIN)
        .agg(documents=(column, "size"), mean=(column, "mean"), median=(column, "median"),
             kept=(schema.KEEP, "mean"))
        .reset_index()
    )
    return Section(f"scores_{column}", f"Score distribution: {column}", _figure_png(draw), summary)


def proposals_section(proposals: pd.DataFrame) -> Section:
    """Spread of the proposed proxy mixtures per domain."""
    weights = proposals[[c for c in proposals.columns if c.startswith("h_")]]
    names = [c[2:] for c in weights.columns]

    def draw(ax) -> None:
        ax.boxplot([weights[c] for c in weights.columns], tick_labels=names)
        ax.set_ylabel("weight")
        ax.tick_params(axis="x", rotation=30)

    table = weights.describe().T.reset_index(names="column")
    return Section("proposals", f"Proposed proxy mixtures ({len(proposals)})", _figure_png(draw),
                   table)


def regression_section(cv: pd.DataFrame, metrics: dict[str, float]) -> Section:
    """Out-of-fold predicted vs true loss of the RegMix regressor."""

    def draw(ax) -> None:
        ax.scatter(cv["true"], cv["predicted"], s=12)
        lo, hi = cv[["true", "predicted"]].min().min(), cv[["true", "predicted"]].max().max()
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel("true loss")
        ax.set_ylabel("predicted loss (out of fold)")

    caption = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    return Section("regression", "RegMix regression: out-of-fold predictions", _figure_png(draw, 5, 5),
                   cv, caption)


def mixtures_section(mixtures: dict[str, dict[str, float]]) -> Section:
    """The chosen mixture against the natural and uniform ones."""
    table = pd.DataFrame(mixtures).fillna(0.0).sort_index()

    def draw(ax) -> None:
        x = np.arange(len(table))
        width = 0.8 / len(table.columns)
        for i, name in enumerate(table.columns):
            ax.bar(x + (i - (len(table.columns) - 1) / 2) * width, table[name], width, label=name)
        ax.set_xticks(x, table.index, rotation=30, ha="right")
        ax.set_ylabel("weight")
        ax.legend()

    return Section("mixtures", "Chosen mixture vs natural and uniform", _figure_png(draw),
                   table.reset_index(names="domain"))


def law_section(runs: pd.DataFrame, curves: pd.DataFrame, target: pd.DataFrame | None = None) -> Section:
    """Observed proxy losses by token count (coloured by size), the law's curves per size and
    mixture, and the measured target losses."""

    def draw(ax) -> None:
        for (n, mixture), group in curves.groupby(["N", "mixture"]):
            ax.plot(group["D"], group["predicted"], lw=1, alpha=0.8, label=f"law: {mixture}, N={n:.3g}")
        points = ax.scatter(runs["D"], runs["loss"], c=np.log10(runs["N"]), s=8, cmap="viridis")
        if target is not None and "measured" in target:
            done = target.dropna(subset=["measured"])
            ax.scatter(done["D"], done["measured"], marker="*", s=120, color="C3", label="target, measured")
        ax.figure.colorbar(points, ax=ax, label="log10 N (proxies)")
        ax.set_xscale("log")
        ax.set_xlabel("training tokens D")
        ax.set_ylabel("loss")
        ax.legend(fontsize=6, ncol=2)

    return Section("law", "Scaling law: fit and extrapolation by size", _figure_png(draw, 8, 5), curves)


def target_section(predictions: pd.DataFrame) -> Section:
    """Predicted (with interval) vs measured loss of each mixture at the target size."""

    def draw(ax) -> None:
        x = np.arange(len(predictions))
        err = np.vstack([predictions["predicted"] - predictions["low"],
                         predictions["high"] - predictions["predicted"]])
        ax.errorbar(x - 0.1, predictions["predicted"], yerr=err, fmt="o", label="predicted")
        if "measured" in predictions and predictions["measured"].notna().any():
            ax.scatter(x + 0.1, predictions["measured"], marker="s", color="C3", label="measured")
        ax.set_xticks(x, predictions["mixture"])
        ax.set_ylabel("loss at target (N, D)")
        ax.legend()

    return Section("target", "Target model: predicted vs measured loss", _figure_png(draw, 6, 4),
                   predictions)


def collect(run_dir: Path) -> Report:
    """Build every section whose input exists in `run_dir`."""
    report = Report()
    paths = layout.RunLayout(run_dir)

    def need(path: Path) -> bool:
        if path.exists():
            return True
        report.missing.append(str(path.relative_to(run_dir)))
        return False

    if need(paths.domain_stats):
        report.sections.append(domain_stats_section(pd.read_parquet(paths.domain_stats)))
    shards = sorted(paths.scored.glob(f"{schema.SCORED_PREFIX}-*.parquet"))
    if shards:
        frame = pd.concat([pd.read_parquet(p, columns=None) for p in shards], ignore_index=True)
        for column in [c for c in frame.columns if c.startswith(schema.SCORE_PREFIX)]:
            report.sections.append(score_section(frame, column))
    if need(paths.proposals):
        report.sections.append(proposals_section(pd.read_parquet(paths.proposals)))
    if need(paths.regmix_cv):
        import json

        metrics = json.loads(paths.regmix_metrics.read_text()) if paths.regmix_metrics.exists() else {}
        report.sections.append(regression_section(pd.read_parquet(paths.regmix_cv), metrics))
    named = {name: path for name, path in paths.compared_mixtures().items() if need(path)}
    if named:
        report.sections.append(mixtures_section({k: read_mixture(v) for k, v in named.items()}))
    if need(paths.runs) and need(paths.law_curves):
        target = pd.read_parquet(paths.target) if paths.target.exists() else None
        report.sections.append(law_section(pd.read_parquet(paths.runs), pd.read_parquet(paths.law_curves),
                                           target))
    if need(paths.target):
        report.sections.append(target_section(pd.read_parquet(paths.target)))
    return report


def _table_html(frame: pd.DataFrame, max_rows: int = 30) -> str:
    shown = frame.head(max_rows)
    body = shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="data")
    more = f"<p class=note>{len(frame) - max_rows} more rows in the Parquet table.</p>" if len(
        frame) > max_rows else ""
    return body + more


def render_html(report: Report, title: str) -> str:
    """The page: plots embedded as data URIs, so the file stands alone."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table.data{border-collapse:collapse;font-size:0.85em}"
        "table.data td,table.data th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
        "img{max-width:100%}.note{color:#666}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if report.missing:
        parts.append("<p class=note>Not in this run: " + ", ".join(map(html.escape, report.missing)))
    for section in report.sections:
        parts.append(f"<section id='{section.key}'><h2>{html.escape(section.title)}</h2>")
        if section.png:
            data = base64.b64encode(section.png).decode()
            parts.append(f"<img class=plot alt='{html.escape(section.title)}' "
                         f"src='data:image/png;base64,{data}'>")
        if section.caption:
            parts.append(f"<p>{html.escape(section.caption)}</p>")
        parts.append(_table_html(section.table))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, title: str = "datamixer report") -> dict[str, object]:
    """Write `report.html`, and `report/` with each plot's PNG and the Parquet table behind it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    report = collect(run_dir)
    if not report.sections:
        raise ValueError(f"{run_dir}: nothing to report (missing: {', '.join(report.missing)})")
    with atomic_path(run_dir / REPORT_DIR) as tmp:
        tmp.mkdir()
        for section in report.sections:
            if section.png:
                (tmp / f"{section.key}.png").write_bytes(section.png)
            write_parquet(tmp / f"{section.key}.parquet", section.table.reset_index(drop=True))
    with atomic_path(run_dir / REPORT_HTML) as tmp:
        tmp.write_text(render_html(report, title))
    return {
        "report": str(run_dir / REPORT_HTML),
        "sections": [s.key for s in report.sections],
        "plots": sum(1 for s in report.sections if s.png),
        "missing": report.missing,
    }
