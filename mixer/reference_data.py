"""Turn the shared reference data (`../shared/data`) into runs tables that `law fit` reads.

* `chinchilla_runs`: Hoffmann et al.'s Figure 4 points as digitised by Besiroglu et al.:
  N = `Model Size`, D = `Training FLOP` / (6 N), loss.
* `mixinglaws_runs`: Ye et al.'s RedPajama experiment, one row per (training run, checkpoint):
  N = `n_params_nonembed`, D = `tokens`, `h_<domain>` from the run path, `loss` = the 22 Pile
  validation losses weighted by `valid_weight.json`, and each of those 22 as `loss_<Pile domain>`.

Two traps in the tidy CSV: its `mixture` column is rounded to six significant digits
(`0.1484375` -> `0.148438`, `0.0` -> `0`), so the weights are parsed from the run path
(`70M_RP_17-0.5-0.0625-...`), which keeps every digit; and run 999's path (`...-0.168375-...`)
sums to 1.0199 (LLaMA's 0.1484375 mistyped), so that target-scale run is renormalised when asked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mixer.files import read_table
from mixer.runs import WEIGHT_PREFIX

# Neither redpajama_proportions.txt nor the data README names the 7 domains. This order is read off
# the data: regressing each Pile validation loss on the 7 weights (70M/160M, step 30k), StackExchange
# loss falls fastest with weight 6, ArXiv with 4, PG19/BookCorpus2 with 5, Wikipedia with 7 and
# Github with 3; weights 1-2 are the two web crawls, the first the larger (0.67 in run 999, the
# RedPajama default). Names are RedPajama's own subset names.
REDPAJAMA_DOMAINS = ("common_crawl", "c4", "github", "arxiv", "book", "stackexchange", "wikipedia")
MIXINGLAWS_TIDY = "mixinglaws_tidy_upto410M.csv"
VALID_WEIGHT = "valid_weight.json"
TARGET_RUN_ID = 900  # run ids above this are the authors' target-scale mixtures
SOURCES = ("mixinglaws-redpajama", "chinchilla")


def default_data_dir() -> Path:
    """`../shared/data` beside the repository (overridable with DATAMIXER_SHARED_DATA)."""
    env = os.environ.get("DATAMIXER_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def chinchilla_runs(data_dir: str | os.PathLike[str] | None = None, lowest: int | None = 240) -> pd.DataFrame:
    """The Chinchilla points as a runs table (`run`, `N`, `D`, `loss`); `lowest` keeps the n
    lowest-loss points, as Besiroglu et al. did (None keeps all 245)."""
    path = Path(data_dir or default_data_dir()) / "chinchilla" / "svg_extracted_data.csv"
    frame = read_table(path)
    missing = {"Model Size", "Training FLOP", "loss"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    if lowest is not None:
        frame = frame.nsmallest(lowest, "loss", keep="first")
    n = frame["Model Size"].to_numpy(dtype=float)
    runs = pd.DataFrame(
        {
            "run": [f"chinchilla_{i}" for i in frame.index],
            "N": n,
            "D": frame["Training FLOP"].to_numpy(dtype=float) / (6.0 * n),
            "loss": frame["loss"].to_numpy(dtype=float),
        }
    )
    return runs.reset_index(drop=True)


def parse_run_weights(run: str, n_domains: int) -> list[float]:
    """The weights in a mixinglaws run path `<size>_RP_<id>-w1-w2-...`, at full precision."""
    parts = run.split("-")
    if len(parts) != n_domains + 1:
        raise ValueError(f"run {run!r}: expected {n_domains} weights after the run id")
    try:
        return [float(p) for p in parts[1:]]
    except ValueError:
        raise ValueError(f"run {run!r}: weights are not numbers") from None


def mixinglaws_runs(
    data_dir: str | os.PathLike[str] | None = None,
    sizes: list[str] | None = None,
    include_target_runs: bool = False,
) -> pd.DataFrame:
    """Ye et al.'s RedPajama runs as a runs table, one row per (run, checkpoint).

    Columns: run, mixture, size, step, N, D, h_<domain> (7), loss, loss_<Pile domain> (22).
    `sizes` keeps only those size labels (e.g. ["70M", "160M"]); target-scale runs (id > 900) are
    left out unless `include_target_runs` (run 999's weights are then renormalised, see above).
    """
    root = Path(data_dir or default_data_dir()) / "mixinglaws"
    tidy = pd.read_csv(
        root / MIXINGLAWS_TIDY,
        dtype={"run": str, "run_id": str, "mixture": str, "size_label": str, "checkpoint": str},
    )
    weights = json.loads((root / VALID_WEIGHT).read_text())
    frame = tidy[tidy["experiment"] == "RedPajama"]
    if sizes is not None:
        unknown = sorted(set(sizes) - set(frame["size_label"]))
        if unknown:
            raise ValueError(f"unknown size label(s) {unknown}; have {sorted(set(frame['size_label']))}")
        frame = frame[frame["size_label"].isin(sizes)]
    if not include_target_runs:
        frame = frame[frame["run_id"].astype(int) <= TARGET_RUN_ID]
    wide = frame.pivot_table(index=["run", "step"], columns="valid_domain", values="loss", aggfunc="first")
    missing_domains = sorted(set(weights) - set(wide.columns))
    if missing_domains:
        raise ValueError(f"{root / MIXINGLAWS_TIDY}: no losses for validation domain(s) {missing_domains}")
    # a checkpoint missing any of the 22 validation losses has no overall loss: drop it
    wide = wide[list(weights)].dropna()
    meta = frame.drop_duplicates(["run", "step"]).set_index(["run", "step"])
    meta = meta.loc[wide.index]
    h = np.array([parse_run_weights(run, len(REDPAJAMA_DOMAINS)) for run, _ in wide.index])
    h = h / h.sum(axis=1, keepdims=True)
    overall = wide.to_numpy() @ np.array([weights[d] for d in wide.columns]) / sum(weights.values())
    runs = pd.DataFrame(
        {
            "run": [f"{run}@{int(step)}" for run, step in wide.index],
            "mixture": [run.split("_", 1)[1].split("-", 1)[0] for run, _ in wide.index],
            "size": meta["size_label"].to_numpy(),
            "step": [int(step) for _, step in wide.index],
            "N": meta["n_params_nonembed"].to_numpy(dtype=float),
            "D": meta["tokens"].to_numpy(dtype=float),
        }
    )
    for j, domain in enumerate(REDPAJAMA_DOMAINS):
        runs[WEIGHT_PREFIX + domain] = h[:, j]
    runs["loss"] = overall
    for domain in wide.columns:
        runs[f"loss_{domain}"] = wide[domain].to_numpy()
    order = np.lexsort((runs["step"], runs["run"], runs["N"]))
    return runs.iloc[order].reset_index(drop=True)


def reference_runs(
    source: str,
    data_dir: str | os.PathLike[str] | None = None,
    sizes: list[str] | None = None,
    include_target_runs: bool = False,
    lowest: int | None = 240,
) -> pd.DataFrame:
    """The runs table of one reference `source` (see SOURCES)."""
    if source == "mixinglaws-redpajama":
        return mixinglaws_runs(data_dir, sizes=sizes, include_target_runs=include_target_runs)
    if source == "chinchilla":
        return chinchilla_runs(data_dir, lowest=lowest)
    raise ValueError(f"unknown reference source {source!r}; use one of {SOURCES}")
