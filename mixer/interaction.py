"""The interaction matrix: how each domain's weight moves each target, read off a fitted model.

The effect of domain d on target t is the mean, over the training mixtures h, of the model's
change per unit of weight when a step `step` of mass moves into d from all domains in proportion:
(f((1 - s) h + s e_d) - f(h)) / s. Negative: more of d lowers t's loss. A finite step (not a
derivative) so that tree models, flat between splits, are read on the scale they resolve.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mixer.files import atomic_path

STEP = 0.05
COLUMNS = pa.schema([("domain", pa.string()), ("target", pa.string()), ("effect", pa.float64())])


def domain_effects(
    predict: Callable[[np.ndarray], np.ndarray], mixtures: np.ndarray, step: float = STEP
) -> np.ndarray:
    """Mean change of `predict` per unit weight moved into each domain, one value per domain."""
    mixtures = np.asarray(mixtures, dtype=float)
    base = predict(mixtures)
    k = mixtures.shape[1]
    moved = np.concatenate([(1 - step) * mixtures + step * np.eye(k)[d] for d in range(k)])
    shifted = predict(moved).reshape(k, len(mixtures))
    return (shifted - base[None, :]).mean(axis=1) / step


def interaction_matrix(
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]],
    domains: Sequence[str],
    mixtures: np.ndarray,
    step: float = STEP,
) -> pd.DataFrame:
    """Long table (domain, target, effect): one row per domain and target."""
    rows = []
    for target, predict in predictors.items():
        effects = domain_effects(predict, mixtures, step)
        rows += [
            {"domain": str(d), "target": str(target), "effect": float(e)}
            for d, e in zip(domains, effects, strict=True)
        ]
    frame = pd.DataFrame(rows, columns=["domain", "target", "effect"])
    return frame.astype({"domain": "string", "target": "string", "effect": "float64"})


def write_interaction(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the table with exactly the columns domain (string), target (string), effect (float64)."""
    import pyarrow.parquet as pq

    columns = {
        "domain": [str(v) for v in frame["domain"]],
        "target": [str(v) for v in frame["target"]],
        "effect": frame["effect"].to_numpy(dtype="float64"),
    }
    table = pa.Table.from_pydict(columns, schema=COLUMNS)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def plot_interaction(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """A heatmap (targets x domains, diverging colours centred on 0) saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = frame.pivot(index="target", columns="domain", values="effect")
    limit = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
    fig, ax = plt.subplots(figsize=(1 + 0.45 * grid.shape[1], 1.5 + 0.35 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    fig.colorbar(image, ax=ax, label="loss change per unit weight")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
