"""The report `datamixer law fit` writes beside a law: parameter and residual tables and the
predicted-vs-observed plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixer.files import atomic_path, write_parquet
from pipeline.layout import law_report_paths
from pipeline.report.style import figure_png


def law_fit_png(residuals: pd.DataFrame, title: str) -> bytes:
    """Predicted vs observed loss, one colour per model size."""

    def draw(ax: Any) -> None:
        import matplotlib.pyplot as plt

        sizes = sorted(residuals["N"].unique())
        colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(sizes), 1)))
        for colour, size in zip(colours, sizes, strict=False):
            part = residuals[residuals["N"] == size]
            ax.scatter(
                part["observed"], part["predicted"], s=12, color=colour, label=f"N = {size:.3g}", alpha=0.8
            )
        low = float(min(residuals["observed"].min(), residuals["predicted"].min()))
        high = float(max(residuals["observed"].max(), residuals["predicted"].max()))
        ax.plot([low, high], [low, high], color="grey", lw=1, ls="--")
        ax.set_xlabel("observed loss")
        ax.set_ylabel("predicted loss")
        ax.set_title(title, fontsize=9)
        if len(sizes) <= 12:
            ax.legend(fontsize=7, loc="upper left")

    return figure_png(draw, 5.5, 5)


def write_law_fit_report(
    law: Any, frame: pd.DataFrame, out: Path, source: str
) -> tuple[dict[str, Path], dict[str, float]]:
    """Write the parameter and residual tables and the fit plot of a fitted law beside `out`;
    return their paths and the in-sample metrics of the law's first target."""
    from mixer.laws import evaluation_metrics, params_table, residuals_table

    paths = law_report_paths(out)
    residuals = residuals_table(law, frame)
    write_parquet(paths["params"], params_table(law))
    write_parquet(paths["residuals"], residuals)
    first = residuals[residuals["target"] == law.targets_[0]]
    metrics = evaluation_metrics(first["observed"].to_numpy(), first["predicted"].to_numpy())
    title = f"{law.kind} law on {source}: in-sample MRE {100 * metrics['mre']:.2f}%"
    with atomic_path(paths["plot"]) as tmp:
        tmp.write_bytes(law_fit_png(first, title))
    return paths, metrics
