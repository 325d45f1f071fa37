"""One function per stage: a figure, the full table behind it and the few rows worth reading.

Colours come from `pipeline.report.style`, so a domain or a mixture looks the same in every figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mixer.runs import WEIGHT_PREFIX
from mixer.tree import SEPARATOR, level_frame, weights_by_level
from pipeline import schema
from pipeline.report.page import Section
from pipeline.report.style import (
    SIZE_STYLES,
    domain_colours,
    figure_png,
    legend_outside,
    log_axis,
    mixture_colour,
    mixture_label,
    ordered_mixtures,
    prediction_legend,
    size_colours,
)

# stages14 adds this column to scored-*.parquet (null when the stages kept the document).
DROP_REASON = getattr(schema, "DROP_REASON", "drop_reason")
SCORE_CUTOFF = "below score cut-off"
DEAD_LETTER = "dead letter: "


def selection_section(stats: pd.DataFrame) -> Section:
    """Tokens per domain before and after selection (domain colours; kept solid, input pale)."""
    stats = stats.sort_values(schema.DOMAIN).reset_index(drop=True)
    colours = domain_colours(stats[schema.DOMAIN])

    def draw(ax: Any) -> None:
        x = np.arange(len(stats))
        colour = [colours[d] for d in stats[schema.DOMAIN]]
        ax.bar(x, stats[schema.TOKENS_IN], 0.7, color=colour, alpha=0.3, label="tokens in")
        ax.bar(x, stats[schema.TOKENS_KEPT], 0.7, color=colour, label="tokens kept")
        ax.set_xticks(x, stats[schema.DOMAIN])
        ax.set_ylabel("tokens")
        legend_outside(ax)

    short = stats[
        [
            schema.DOMAIN,
            *[c for c in stats.columns if c.startswith("docs_")],
            schema.TOKENS_IN,
            schema.TOKENS_KEPT,
        ]
    ].copy()
    short["kept share"] = stats[schema.TOKENS_KEPT] / stats[schema.TOKENS_IN].clip(lower=1)
    kept = stats[schema.TOKENS_KEPT].sum() / max(1, stats[schema.TOKENS_IN].sum())
    return Section(
        "domain_stats",
        "Selection: tokens per domain before and after",
        figure_png(draw, 7, 3),
        stats,
        f"{kept:.1%} of tokens kept overall.",
        short,
    )


def drop_counts(scored: pd.DataFrame, dead: pd.DataFrame | None = None) -> pd.DataFrame:
    """Documents per (domain, outcome): kept, each drop reason, the score cut-off, dead letters by stage."""
    outcome = pd.Series("kept", index=scored.index)
    if DROP_REASON in scored.columns:
        reason = scored[DROP_REASON]
        outcome = outcome.where(reason.isna(), reason.astype(str))
        outcome[reason.isna() & ~scored[schema.KEEP]] = SCORE_CUTOFF
    else:
        outcome[~scored[schema.KEEP]] = SCORE_CUTOFF
    frame = pd.DataFrame({schema.DOMAIN: scored[schema.DOMAIN], "outcome": outcome})
    if dead is not None and not dead.empty:
        frame = pd.concat(
            [
                frame,
                pd.DataFrame(
                    {
                        schema.DOMAIN: dead[schema.DOMAIN].fillna("?"),
                        "outcome": DEAD_LETTER + dead[schema.STAGE].astype(str),
                    }
                ),
            ]
        )
    return frame.groupby([schema.DOMAIN, "outcome"]).size().rename("documents").reset_index()


def drops_section(counts: pd.DataFrame) -> Section:
    """Where the documents went, per domain: stacked shares of kept and of each drop reason."""
    wide = counts.pivot_table(index=schema.DOMAIN, columns="outcome", values="documents", fill_value=0)
    order = ["kept", *sorted(c for c in wide.columns if c != "kept")]
    wide = wide[[c for c in order if c in wide.columns]]
    share = wide.div(wide.sum(axis=1), axis=0)
    palette = ["#4d9221", "#b2182b", "#ef8a62", "#fddbc7", "#762a83", "#9970ab", "#c2a5cf", "#999999"]

    def draw(ax: Any) -> None:
        left = np.zeros(len(share))
        for i, column in enumerate(share.columns):
            ax.barh(share.index, share[column], left=left, color=palette[i % len(palette)], label=column)
            left += share[column].to_numpy()
        ax.set_xlabel("share of documents")
        ax.invert_yaxis()
        legend_outside(ax)

    short = wide.reset_index()
    short.columns.name = None
    dropped = 1 - wide.get("kept", pd.Series(0, index=wide.index)).sum() / max(1, wide.to_numpy().sum())
    return Section(
        "drops",
        "Drops by reason",
        figure_png(draw, 7, 0.5 + 0.45 * len(share)),
        counts,
        f"{dropped:.1%} of documents dropped or dead-lettered.",
        short,
    )


def score_section(scores: pd.DataFrame, column: str, cutoffs: Mapping[str, float] | None = None) -> Section:
    """Distribution of one scorer's scores per domain (step histograms) with the selection cut-offs."""
    domains = sorted(scores[schema.DOMAIN].unique())
    colours = domain_colours(domains)
    cutoffs = dict(cutoffs or {})

    def draw(ax: Any) -> None:
        values = scores[column].dropna()
        bins = np.linspace(values.min(), values.max(), 31) if len(values) else 10
        for domain in domains:
            part = scores.loc[scores[schema.DOMAIN] == domain, column].dropna()
            ax.hist(part, bins=bins, histtype="step", lw=1.6, color=colours[domain], label=domain)
            if domain in cutoffs and np.isfinite(cutoffs[domain]):
                ax.axvline(cutoffs[domain], color=colours[domain], ls=":", lw=1)
        ax.set_xlabel(column + (" (dotted: each domain's cut-off)" if cutoffs else ""))
        ax.set_ylabel("documents")
        legend_outside(ax)

    summary = (
        scores.groupby(schema.DOMAIN)
        .agg(
            documents=(column, "size"),
            mean=(column, "mean"),
            median=(column, "median"),
            kept=(schema.KEEP, "mean"),
        )
        .reset_index()
    )
    if cutoffs:
        summary["cutoff"] = summary[schema.DOMAIN].map(cutoffs)
    return Section(f"scores_{column}", f"Scores: {column}", figure_png(draw, 7, 3), summary)


def proposals_section(
    proposals: pd.DataFrame, mixtures: Mapping[str, Mapping[str, float]] | None = None
) -> Section:
    """Spread of the proposed proxy mixtures per domain, with the compared mixtures marked."""
    weights = proposals[[c for c in proposals.columns if c.startswith("h_")]]
    names = [c[2:] for c in weights.columns]
    colours = domain_colours(names)
    mixtures = dict(mixtures or {})

    def draw(ax: Any) -> None:
        box = ax.boxplot([weights[c] for c in weights.columns], tick_labels=names, patch_artist=True)
        for patch, name in zip(box["boxes"], names, strict=True):
            patch.set(facecolor=colours[name], alpha=0.35)
        for i, name in enumerate(ordered_mixtures(list(mixtures))):
            mix = mixtures[name]
            x = np.arange(1, len(names) + 1) + (i - (len(mixtures) - 1) / 2) * 0.08
            ax.scatter(
                x,
                [mix.get(d, 0.0) for d in names],
                marker="D",
                s=22,
                color=mixture_colour(name),
                label=mixture_label(name),
                zorder=3,
            )
        ax.set_ylabel("weight")
        legend_outside(ax)

    table = weights.describe().T.reset_index(names="column")
    short = table[["column", "min", "50%", "max"]].rename(columns={"50%": "median"})
    return Section(
        "proposals",
        f"Proposed proxy mixtures ({len(proposals)})",
        figure_png(draw, 7, 3),
        table,
        "Boxes: the proxy mixtures the sweep trained; diamonds: the compared mixtures.",
        short,
    )


def level_weights(proposals: pd.DataFrame, level_names: list[str] | None = None) -> pd.DataFrame:
    """Long table (`mixture`, `level`, `node`, `weight`): each proposal's `h_<leaf>` weights summed
    at every level of the tree (leaf names are ':' paths; a flat table is one level)."""
    columns = [c for c in proposals.columns if str(c).startswith(WEIGHT_PREFIX)]
    leaves = [c[len(WEIGHT_PREFIX) :] for c in columns]
    names = list(weights_by_level(dict.fromkeys(leaves, 0.0), level_names))
    frames = []
    for depth, name in enumerate(names):
        wide = level_frame(proposals[["mixture", *columns]], depth)
        long = wide.melt(id_vars="mixture", var_name="node", value_name="weight")
        long["node"] = long["node"].str[len(WEIGHT_PREFIX) :]
        long.insert(1, "level", name)
        frames.append(long)
    return pd.concat(frames, ignore_index=True)


def levels_section(weights: pd.DataFrame, links: tuple[str, ...] = ()) -> Section:
    """Spread of the proposals' weights per node, one box plot per tree level (`level_weights`);
    a node takes its source's colour, so a subtree reads as one colour down the levels."""
    levels = list(dict.fromkeys(weights["level"]))
    colours = domain_colours(weights["node"].str.split(SEPARATOR).str[0])
    summary = (
        weights.groupby(["level", "node"], sort=False)["weight"].agg(["mean", "min", "max"]).reset_index()
    )

    def draw(axes: Any) -> None:
        for ax, level in zip(np.atleast_1d(axes), levels, strict=True):
            part = weights[weights["level"] == level]
            nodes = list(dict.fromkeys(part["node"]))
            box = ax.boxplot(
                [part.loc[part["node"] == n, "weight"] for n in nodes], tick_labels=nodes, patch_artist=True
            )
            for patch, node in zip(box["boxes"], nodes, strict=True):
                patch.set(facecolor=colours[node.split(SEPARATOR)[0]], alpha=0.45)
            ax.set_title(level, loc="left", fontsize=9)
            ax.set_ylabel("weight")
            ax.tick_params(axis="x", labelrotation=25, labelsize=7)

    proposals = weights["mixture"].nunique()
    title = "Proposed mixtures " + ("by tree level" if len(levels) > 1 else "per domain")
    return Section(
        "proposals_by_level",
        f"{title} ({proposals})",
        figure_png(draw, 7.5, 0.6 + 2.3 * len(levels), nrows=len(levels)),
        weights,
        "Each box: one node's weight (its leaves summed) across the proposals; colour: the node's source.",
        summary,
        links,
    )


def regression_section(cv: pd.DataFrame, metrics: Mapping[str, Any], key: str = "regression") -> Section:
    """Out-of-fold predicted vs true loss of the RegMix regressor; the candidates' CV Spearman."""

    def draw(ax: Any) -> None:
        ax.scatter(cv["true"], cv["predicted"], s=16, color=mixture_colour("optimized"), alpha=0.8)
        lo, hi = cv[["true", "predicted"]].min().min(), cv[["true", "predicted"]].max().max()
        ax.plot([lo, hi], [lo, hi], color="#888888", ls="--", lw=1, label="predicted = true")
        ax.set_xlabel("true loss (proxy)")
        ax.set_ylabel("predicted loss (out of fold)")
        legend_outside(ax)

    candidates = {
        k[len("spearman_") :]: v
        for k, v in metrics.items()
        if k.startswith("spearman_")
        and k not in ("spearman_ci_low", "spearman_ci_high", "spearman_fold_mean")
    }
    short = pd.DataFrame({"regressor": list(candidates), "CV Spearman": list(candidates.values())})
    if short.empty:
        short = pd.DataFrame([{k: v for k, v in metrics.items() if isinstance(v, (int, float))}])
    caption = ", ".join(
        f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and not k.startswith("spearman_")
    )
    chosen = metrics.get("model")
    title = "RegMix: out-of-fold predicted vs true loss" + (f" ({chosen})" if chosen else "")
    return Section(key, title, figure_png(draw, 5.6, 3.6), cv, caption, short)


def interaction_section(effects: pd.DataFrame) -> Section:
    """Heatmap of each domain's effect on each target loss (`interaction.parquet`)."""
    wide = effects.pivot_table(index="domain", columns="target", values="effect")

    def draw(ax: Any) -> None:
        limit = float(np.nanmax(np.abs(wide.to_numpy()))) or 1.0
        image = ax.imshow(wide.to_numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(wide.columns)), wide.columns, rotation=30, ha="right")
        ax.set_yticks(range(len(wide.index)), wide.index)
        ax.set_xlabel("target loss")
        ax.set_ylabel("domain weight")
        ax.figure.colorbar(image, ax=ax, label="effect on loss (red: raises it)")

    short = wide.reset_index()
    short.columns.name = None
    return Section(
        "interaction",
        "Domain effects on each target loss",
        figure_png(draw, 6, 0.8 + 0.4 * len(wide)),
        effects,
        "",
        short,
    )


def fit_by_size(observed: pd.DataFrame) -> pd.DataFrame:
    """Per model size: points, mean and max relative error of the law (`observed`, `predicted`)."""
    error = (observed["predicted"] - observed["observed"]).abs() / observed["observed"]
    return (
        observed.assign(relative_error=error)
        .groupby("N")
        .agg(
            points=("observed", "size"),
            mean_rel_error=("relative_error", "mean"),
            max_rel_error=("relative_error", "max"),
        )
        .reset_index()
    )


def law_section(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    target: pd.DataFrame | None = None,
    fit: pd.DataFrame | None = None,
) -> Section:
    """The law's loss over D for each compared mixture (colour) and size (line style), the proxies'
    observed losses, and the target's measured losses (stars)."""
    sizes = sorted(curves["N"].unique())
    styles = {n: SIZE_STYLES[i % len(SIZE_STYLES)] for i, n in enumerate(sizes)}

    def draw(ax: Any) -> None:
        from matplotlib.lines import Line2D

        for (n, mixture), group in curves.groupby(["N", "mixture"]):
            ax.plot(group["D"], group["predicted"], ls=styles[n], lw=1.3, color=mixture_colour(mixture))
        ax.scatter(runs["D"], runs["loss"], s=7, color="#bbbbbb", zorder=1)
        if target is not None and target["measured"].notna().any():
            for row in target.dropna(subset=["measured"]).itertuples():
                ax.scatter(
                    row.D, row.measured, marker="*", s=110, color=mixture_colour(row.mixture), zorder=3
                )
        handles = [
            Line2D([], [], color=mixture_colour(m), lw=2, label=mixture_label(m))
            for m in ordered_mixtures(list(curves["mixture"].unique()))
        ]
        handles += [
            Line2D([], [], color="#444444", ls=styles[n], label=f"law at N = {n:,.0f}") for n in sizes
        ]
        handles += [
            Line2D([], [], marker="o", ls="", color="#bbbbbb", label="proxy runs (observed)"),
            Line2D([], [], marker="*", ls="", ms=10, color="#444444", label="target (measured)"),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
        log_axis(ax, "x", "training tokens D")
        ax.set_ylabel("loss (mean over domains)")

    caption = (
        "The largest N is the target size: the law was fitted on the proxies (grey points); "
        "its curves at the target size and beyond the proxies' D are extrapolation."
    )
    return Section(
        "law", "Scaling law: fit and extrapolation by size", figure_png(draw, 8, 3.8), curves, caption, fit
    )


def target_section(predictions: pd.DataFrame, final: pd.DataFrame | None = None) -> Section:
    """Predicted (with interval) vs measured loss of each mixture at the target, every seed shown."""
    rows = predictions.reset_index(drop=True)

    def draw(ax: Any) -> None:
        for i, row in rows.iterrows():
            colour = mixture_colour(row["mixture"])
            ax.errorbar(
                [i - 0.1],
                [row["predicted"]],
                yerr=[[row["predicted"] - row["low"]], [row["high"] - row["predicted"]]],
                fmt="o",
                mfc="white",
                color=colour,
                capsize=4,
            )
            if final is not None:
                seeds = final.loc[final["mixture"] == row["mixture"], "loss"]
                ax.scatter(
                    [i + 0.1] * len(seeds),
                    seeds,
                    marker="s",
                    s=26,
                    color=colour,
                )
        ax.set_xticks(range(len(rows)), [mixture_label(m) for m in rows["mixture"]])
        ax.set_ylabel("loss at the target (N, D)")
        prediction_legend(ax)

    short = rows[[c for c in ("mixture", "predicted", "low", "high", "measured") if c in rows.columns]]
    return Section(
        "target",
        "Target model: predicted vs measured loss",
        figure_png(draw, 7, 3.2),
        final if final is not None else predictions,
        "",
        short,
    )


def mixtures_section(mixtures: Mapping[str, Mapping[str, float]]) -> Section:
    """The compared mixtures' weights per domain (stacked bars, domain colours)."""
    table = pd.DataFrame(mixtures).fillna(0.0).sort_index()
    colours = domain_colours(table.index)

    def draw(ax: Any) -> None:
        bottom = np.zeros(len(table.columns))
        labels = [mixture_label(c) for c in table.columns]
        for domain, row in table.iterrows():
            ax.bar(labels, row.to_numpy(), 0.6, bottom=bottom, color=colours[domain], label=domain)
            bottom += row.to_numpy()
        ax.set_ylabel("weight")
        legend_outside(ax)

    return Section("mixtures", "Mixtures compared", figure_png(draw, 6, 3), table.reset_index(names="domain"))


def mixtures_by_level_section(mixtures: Mapping[str, Mapping[str, float]]) -> Section:
    """The compared mixtures' weights summed at each level of a tree of ':'-named domains: one
    stacked bar per mixture and level, each node in its source's colour."""
    rows = [
        {"level": level, "node": node, "mixture": name, "weight": weight}
        for name, mix in mixtures.items()
        for level, nodes in weights_by_level(mix).items()
        for node, weight in nodes.items()
    ]
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["level", "node"], columns="mixture", values="weight", sort=False)
    wide = wide[ordered_mixtures(list(wide.columns))].reset_index()
    wide.columns.name = None
    levels = list(dict.fromkeys(table["level"]))
    colours = domain_colours(table["node"].str.split(SEPARATOR).str[0])
    names = ordered_mixtures(list(mixtures))

    def draw(ax: Any) -> None:
        for i, level in enumerate(levels):
            bottom = np.zeros(len(names))
            for _, row in wide[wide["level"] == level].iterrows():
                x = np.arange(len(names)) * (len(levels) + 1) + i
                heights = row[names].to_numpy(dtype=float)
                source = row["node"].split(SEPARATOR)[0]
                ax.bar(x, heights, 0.85, bottom=bottom, color=colours[source], edgecolor="white", lw=0.6)
                bottom += heights
        ticks = [m * (len(levels) + 1) + i for m in range(len(names)) for i in range(len(levels))]
        ax.set_xticks(ticks, [lv for _ in names for lv in levels], fontsize=7)
        for m, name in enumerate(names):
            centre = m * (len(levels) + 1) + (len(levels) - 1) / 2
            ax.text(centre, 1.03, mixture_label(name), ha="center", fontsize=8, color=mixture_colour(name))
        for source, colour in colours.items():
            ax.bar([0], [0], color=colour, label=source)
        ax.set_ylabel("weight")
        legend_outside(ax)

    return Section(
        "mixtures_by_level",
        "Mixtures compared, by tree level",
        figure_png(draw, 8, 3.2),
        table,
        "Each bar: one mixture at one level, split by node (white lines); colour: the node's source.",
        wide,
    )


def law_fit_section(residuals: pd.DataFrame, kind: str) -> Section:
    """A fitted law's predicted vs observed loss on its training rows, one colour per model size."""
    sizes = sorted(residuals["N"].unique())
    colours = dict(zip(sizes, size_colours(len(sizes)), strict=True))

    def draw(ax: Any) -> None:
        for n in sizes:
            part = residuals[residuals["N"] == n]
            ax.scatter(part["observed"], part["predicted"], s=12, color=colours[n], label=f"N = {n:,.0f}")
        lo = float(residuals[["observed", "predicted"]].min().min())
        hi = float(residuals[["observed", "predicted"]].max().max())
        ax.plot([lo, hi], [lo, hi], color="#888888", ls="--", lw=1, label="predicted = observed")
        ax.set_xlabel("observed loss")
        ax.set_ylabel("predicted loss")
        legend_outside(ax)

    by_size = fit_by_size(residuals)
    caption = (
        f"{kind} law, in-sample mean relative error "
        f"{(residuals['predicted'] - residuals['observed']).abs().div(residuals['observed']).mean():.2%}."
    )
    return Section(
        "law_fit", "Law fit: predicted vs observed", figure_png(draw, 6, 3.6), residuals, caption, by_size
    )


def law_extrapolation_section(curves: pd.DataFrame, residuals: pd.DataFrame | None = None) -> Section:
    """The law's loss over D at the fitted sizes and beyond (`curves`: N, D, predicted, fitted)."""
    sizes = sorted(curves["N"].unique())
    colours = dict(zip(sizes, size_colours(len(sizes)), strict=True))

    def draw(ax: Any) -> None:
        for n, group in curves.groupby("N"):
            fitted = bool(group["fitted"].iloc[0])
            ax.plot(
                group["D"],
                group["predicted"],
                color=colours[n],
                ls="-" if fitted else "--",
                label=f"N = {n:,.0f}" + ("" if fitted else " (extrapolated)"),
            )
        if residuals is not None:
            ax.scatter(
                residuals["D"], residuals["observed"], s=7, color="#bbbbbb", label="observed", zorder=1
            )
        log_axis(ax, "x", "training tokens D")
        ax.set_ylabel("predicted loss")
        legend_outside(ax)

    short = curves.loc[curves.groupby("N")["D"].idxmax(), ["N", "D", "predicted", "fitted"]]
    return Section(
        "law_extrapolation",
        "Law: extrapolation by size",
        figure_png(draw, 7, 3.6),
        curves,
        "Solid: sizes the law was fitted on; dashed: larger sizes (4x and 16x the largest).",
        short,
    )
