"""One look for every figure: fixed colours per mixture and per domain, legends outside the data,
labelled log axes, PNG bytes out."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

MIXTURE_COLOURS = {
    "optimized": "#1b9e77",
    "natural": "#7570b3",
    "uniform": "#8c8c8c",
    "law_optimal": "#d95f02",
}
MIXTURE_LABELS = {
    "optimized": "optimized (RegMix)",
    "natural": "natural",
    "uniform": "uniform",
    "law_optimal": "law's optimum",
}
MIXTURE_ORDER = tuple(MIXTURE_COLOURS)
# Okabe-Ito, colour-blind safe; domains take them in sorted order, so a domain keeps its colour
# in every figure of a report.
DOMAIN_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
SIZE_STYLES = ("-", "--", "-.", ":")


def ordered_mixtures(names: Sequence[str]) -> list[str]:
    """The compared mixtures in the report's fixed order (chosen first), others after."""
    return [n for n in MIXTURE_ORDER if n in names] + sorted(n for n in set(names) if n not in MIXTURE_ORDER)


def mixture_colour(name: str) -> str:
    return MIXTURE_COLOURS.get(name, "#444444")


def mixture_label(name: str) -> str:
    return MIXTURE_LABELS.get(name, name)


def domain_colours(domains: Sequence[str]) -> dict[str, str]:
    """Domain -> colour, by sorted name (cycling past eight domains)."""
    return {d: DOMAIN_PALETTE[i % len(DOMAIN_PALETTE)] for i, d in enumerate(sorted(set(domains)))}


def size_colours(n: int) -> list[str]:
    """`n` colours from viridis, small to large model."""
    import matplotlib
    import numpy as np

    return [
        matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["viridis"](np.linspace(0, 0.85, max(n, 1)))
    ]


def legend_outside(ax: Any, **kwargs: Any) -> None:
    """A legend to the right of the axes, never over the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False, fontsize=8, **kwargs
        )


def legend_above(ax: Any, ncol: int = 4) -> None:
    """A one-row legend above the axes (for figures that need their width)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(
            loc="lower left",
            bbox_to_anchor=(0.0, 1.01),
            ncol=ncol,
            frameon=False,
            fontsize=8,
            borderaxespad=0,
            handlelength=1.2,
            columnspacing=1.0,
        )


def prediction_legend(ax: Any, above: bool = False) -> None:
    """Legend for the predicted-vs-measured markers, in neutral grey (colour means the mixture)."""
    from matplotlib.lines import Line2D

    grey = "#555555"
    handles = [
        Line2D([], [], marker="o", ls="", mfc="white", color=grey, label="predicted (95% interval)"),
        Line2D([], [], marker="s", ls="", color=grey, label="measured (each seed)"),
    ]
    if above:
        ax.legend(
            handles=handles,
            loc="lower left",
            bbox_to_anchor=(0.0, 1.01),
            ncol=2,
            frameon=False,
            fontsize=8,
            borderaxespad=0,
        )
    else:
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            fontsize=8,
            borderaxespad=0,
        )


def log_axis(ax: Any, axis: str, label: str) -> None:
    """A log-scaled axis whose label says so."""
    getattr(ax, f"set_{axis}scale")("log")
    getattr(ax, f"set_{axis}label")(f"{label} (log scale)")


def figure_png(
    draw: Callable[..., None], width: float = 7.0, height: float = 3.6, nrows: int = 1, dpi: int = 100
) -> bytes:
    """Draw on a fresh figure (`draw(ax)`, or `draw(axes)` with `nrows` > 1) and return PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, 1, figsize=(width, height), dpi=dpi)
    draw(axes)
    for ax in fig.axes:
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
