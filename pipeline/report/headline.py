"""The headline of a demo run, from `comparison.json` and the mixture files: which mixture, how
much better than natural and uniform (predicted and measured), how sure, and what to distrust."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.report.page import Headline, image_html
from pipeline.report.style import (
    figure_png,
    legend_above,
    mixture_colour,
    mixture_label,
    ordered_mixtures,
    prediction_legend,
)


def in_order(rows: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows with a `mixture` key in the report's mixture order."""
    by_name = {r["mixture"]: r for r in rows}
    return [by_name[name] for name in ordered_mixtures(list(by_name))]


def draw_weights(ax: Any, mixtures: Mapping[str, Mapping[str, float]]) -> None:
    """Grouped bars: one group per domain, one bar per mixture (mixture colours)."""
    names = ordered_mixtures(list(mixtures))
    domains = sorted({d for w in mixtures.values() for d in w})
    x = np.arange(len(domains))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [mixtures[name].get(d, 0.0) for d in domains]
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            values,
            width,
            color=mixture_colour(name),
            label=mixture_label(name),
        )
    ax.set_xticks(x, domains)
    ax.set_ylabel("mixture weight")


def draw_losses(ax: Any, rows: list[Mapping[str, Any]]) -> None:
    """Per mixture: the law's prediction with its interval, and each seed's measured loss."""
    rows = in_order(rows)
    for i, row in enumerate(rows):
        colour = mixture_colour(row["mixture"])
        err = [[row["predicted"] - row["low"]], [row["high"] - row["predicted"]]]
        ax.errorbar([i - 0.12], [row["predicted"]], yerr=err, fmt="o", color=colour, mfc="white", capsize=4)
        seeds = list(row.get("measured_seeds", {}).values())
        if seeds:
            ax.scatter([i + 0.12] * len(seeds), seeds, marker="s", color=colour, s=28)
    ax.set_xticks(range(len(rows)), [mixture_label(r["mixture"]) for r in rows], fontsize=9)
    ax.set_ylabel("loss at the target")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    prediction_legend(ax, above=True)


def headline_png(mixtures: Mapping[str, Mapping[str, float]], rows: list[Mapping[str, Any]]) -> bytes:
    def draw(axes: Any) -> None:
        draw_weights(axes[0], mixtures)
        draw_losses(axes[1], rows)
        legend_above(axes[0])

    return figure_png(draw, width=5.4, height=4.5, nrows=2, dpi=90)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def numbers_table(rows: list[Mapping[str, Any]], mixtures: Mapping[str, Mapping[str, float]]) -> str:
    """Mixture, weights, predicted [interval], measured (mean of seeds, each seed)."""
    domains = sorted({d for w in mixtures.values() for d in w})
    head = (
        "<table class=data id=headline-table><tr><th>mixture</th>"
        f"<th>{html.escape(' / '.join(domains))}</th>"
        "<th>predicted [95% interval]</th><th>measured (each seed)</th></tr>"
    )
    body = []
    for row in in_order(rows):
        weights = " / ".join(f"{mixtures.get(row['mixture'], {}).get(d, 0.0):.2f}" for d in domains)
        seeds = ", ".join(f"{v:.4f}" for v in row.get("measured_seeds", {}).values())
        measured = (
            f"<b>{_fmt(row['measured'])}</b> ({seeds})" if row["measured"] is not None else "not trained"
        )
        body.append(
            f"<tr><td style='text-align:left'>{html.escape(mixture_label(row['mixture']))}</td>"
            f"<td>{weights}</td>"
            f"<td><b>{_fmt(row['predicted'])}</b> [{_fmt(row['low'])}, {_fmt(row['high'])}]</td>"
            f"<td>{measured}</td></tr>"
        )
    return head + "".join(body) + "</table>"


def gains_table(gains: list[Mapping[str, Any]]) -> str:
    """Gain over each baseline (positive: the chosen mixture's loss is lower), predicted vs measured."""
    head = (
        "<table class=data id=gains-table><tr><th>gain over</th><th>predicted</th><th>measured</th>"
        "<th>seed noise (1 s.e.)</th><th>beyond noise?</th></tr>"
    )
    body = []
    for g in gains:
        verdict = {True: "<span class=beat>yes</span>", False: "<span class=miss>no</span>", None: "–"}[
            g["beats"]
        ]
        body.append(
            f"<tr><td style='text-align:left'>{html.escape(g['baseline'])}</td>"
            f"<td>{g['predicted']:+.4f}</td><td>{_fmt(g['measured'], '+.4f')}</td>"
            f"<td>{_fmt(g['stderr'], '.4f')}</td><td>{verdict}</td></tr>"
        )
    return head + "".join(body) + "</table>"


def warnings_html(warnings: list[str]) -> str:
    if not warnings:
        return "<div class=warnings>No warnings: no extrapolation, no binding cap, CV Spearman fine.</div>"
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f"<div class=warnings><b>Warnings</b><ul>{items}</ul></div>"


def build_headline(checked: Mapping[str, Any], mixtures: Mapping[str, Mapping[str, float]]) -> Headline:
    """The headline block of a demo run (`checked` is `comparison.json`)."""
    rows = list(checked["mixtures"])
    predicted = {r["mixture"]: r["predicted"] for r in rows}
    chosen = mixtures.get("optimized", {})
    regmix = checked.get("regmix", {})
    lead = (
        f"<p class=lead><b>RegMix ({html.escape(str(regmix.get('model')))}) chose</b> "
        + html.escape(", ".join(f"{d} {w:.2f}" for d, w in sorted(chosen.items())))
        + f" for the target (N = {checked['target']['N']:,.0f}, D = {checked['target']['D']:,.0f} tokens); "
        f"CV Spearman {_fmt(regmix.get('cv_spearman'), '.2f')}.</p>"
    )
    verdicts = "".join(f"<p class=verdict>{html.escape(v)}</p>" for v in checked["verdicts"])
    numbers = (
        numbers_table(rows, mixtures)
        + gains_table(checked["gains"])
        + verdicts
        + f"<p class=verdict>{html.escape(checked['disagreement']['text'])}</p>"
    )
    png = headline_png(
        {k: v for k, v in mixtures.items() if k in predicted or k == "law_optimal"}, [r for r in rows]
    )
    block = (
        f"<section id=headline>{lead}<div class=headline><div class=plot>"
        f"{image_html(png, 'chosen mixture vs natural and uniform; loss at the target')}</div>"
        f"<div class=numbers>{numbers}{warnings_html(checked.get('warnings', []))}</div></div></section>"
    )
    return Headline(png, block, {"predicted": predicted, "gains": checked["gains"]})
