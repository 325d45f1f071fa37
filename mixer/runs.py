"""The one loader for mixture and runs tables: validated, with errors that name row and column.

A runs table has one row per (proxy) training run: `N` (parameters), `D` (tokens), the domain
weights as `h_<domain>` columns, and the target losses (`loss`, or `loss_<domain>` per domain).
A mixture table (RegMix's format) has a key column and one weight column per domain.

Olmix swarms read as runs tables too (`read_runs_table`): a directory (or its `ratios.csv`) holding
`ratios.csv` (`run_id`, then one column per domain) and `metrics.csv` (`run_id`, then one column per
metric), joined on `run_id` as Olmix's `load_from_csv` does (allenai/olmix, olmix/fit/loaders.py);
its metadata columns `name` and `index` are skipped and `run`/`run_id` becomes `run`. W&B runs
exports (`read_wandb_csv`) need a column mapping, since every team names its config differently.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype

from mixer.files import read_table
from mixer.mixture import SUM_TOLERANCE

WEIGHT_PREFIX = "h_"
LOSS = "loss"
LOSS_PREFIX = "loss_"
N = "N"
D = "D"
RUN = "run"
OLMIX_RATIOS = "ratios.csv"
OLMIX_METRICS = "metrics.csv"
OLMIX_METADATA = ("name", "index")
OLMIX_KEYS = ("run_id", "run")


def weight_columns(frame: pd.DataFrame, key: str | None = None) -> list[str]:
    """The domain-weight columns: the `h_*` columns if any, else every column but `key`."""
    prefixed = [c for c in frame.columns if str(c).startswith(WEIGHT_PREFIX)]
    if prefixed:
        return prefixed
    return [c for c in frame.columns if c != key]


def domain_name(column: str) -> str:
    """`h_web` -> `web`; other names unchanged."""
    return column[len(WEIGHT_PREFIX) :] if column.startswith(WEIGHT_PREFIX) else column


def _row_label(frame: pd.DataFrame, position: int, key: str | None) -> str:
    if key is not None and key in frame.columns:
        value = frame[key].iloc[position]
        # numpy scalars repr as np.int64(5); a message names the plain value.
        value = value.item() if hasattr(value, "item") else value
        return f"row {position + 1} ({key}={value!r})"
    return f"row {position + 1}"


def validate_weights(
    frame: pd.DataFrame, columns: list[str], key: str | None = None, tol: float = SUM_TOLERANCE
) -> None:
    """Raise ValueError naming the first row whose weights are missing, non-numeric, negative,
    NaN, or do not sum to 1 +/- tol."""
    if not columns:
        raise ValueError("no domain-weight columns found")
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{_row_label(frame, pos, key)}: weight column {column!r} is missing or not a number"
            )
        negative = values < 0
        if negative.any():
            pos = int(np.flatnonzero(negative.to_numpy())[0])
            raise ValueError(
                f"{_row_label(frame, pos, key)}: weight column {column!r} is negative ({values.iloc[pos]})"
            )
    sums = frame[columns].astype(float).sum(axis=1).to_numpy()
    off = np.abs(sums - 1.0) > tol
    if off.any():
        pos = int(np.flatnonzero(off)[0])
        raise ValueError(f"{_row_label(frame, pos, key)}: weights sum to {sums[pos]:.4f}, not 1 +/- {tol}")


def check_positive(frame: pd.DataFrame, column: str, key: str | None = None) -> np.ndarray:
    """The column as floats; ValueError naming the first row that is not a positive number."""
    if column not in frame.columns:
        raise ValueError(f"runs table has no {column!r} column (columns: {list(frame.columns)})")
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{_row_label(frame, pos, key)}: column {column!r} must be a positive number, "
            f"got {frame[column].iloc[pos]!r}"
        )
    return values


def mixture_weights(frame: pd.DataFrame, key: str, source: str = "mixture table") -> pd.DataFrame:
    """Validate a mixture table (a unique `key`, valid weights) and return its weights by `key`."""
    if key not in frame.columns:
        raise ValueError(f"{source}: key column {key!r} not found (columns: {list(frame.columns)})")
    _refuse_duplicate_keys(frame, key, source)
    columns = weight_columns(frame, key)
    try:
        validate_weights(frame, columns, key)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return frame.set_index(key)[columns].astype(float)


def _olmix_part(path: Path, what: str) -> pd.DataFrame:
    frame = pd.read_csv(path)
    key = next((k for k in OLMIX_KEYS if k in frame.columns), None)
    if key is None:
        raise ValueError(
            f"{path}: Olmix {what} needs a 'run_id' (or 'run') column (columns: {list(frame.columns)})"
        )
    frame = frame.drop(columns=[c for c in (*OLMIX_METADATA, *OLMIX_KEYS) if c in frame.columns and c != key])
    frame = frame.rename(columns={key: RUN})
    if frame[RUN].duplicated().any():
        pos = int(np.flatnonzero(frame[RUN].duplicated().to_numpy())[0])
        raise ValueError(f"{path}: {_row_label(frame, pos, RUN)}: duplicate run id")
    return frame


def read_olmix_ratios(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Every run of an Olmix swarm (`ratios.csv`, or the directory holding it), with or without
    metrics yet: `run` and `h_<domain>` columns, validated."""
    path = Path(path)
    ratios = _olmix_part(path / OLMIX_RATIOS if path.is_dir() else path.parent / OLMIX_RATIOS, "ratios")
    ratios = ratios.rename(columns={c: WEIGHT_PREFIX + str(c) for c in ratios.columns if c != RUN})
    validate_weights(ratios, [c for c in ratios.columns if c != RUN], RUN)
    return ratios


def read_olmix_swarm(path: str | os.PathLike[str]) -> pd.DataFrame:
    """An Olmix swarm (`ratios.csv` + `metrics.csv`, in a directory or named by either file) as one
    runs table: `run`, `h_<domain>` per ratio column, and the metric columns unchanged.

    Runs present in only one file are left out (as in Olmix) and counted in `frame.attrs`."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    ratios_path, metrics_path = folder / OLMIX_RATIOS, folder / OLMIX_METRICS
    for needed in (ratios_path, metrics_path):
        if not needed.exists():
            raise FileNotFoundError(
                f"{needed}: no such file (an Olmix swarm needs {OLMIX_RATIOS} and "
                f"{OLMIX_METRICS} side by side)"
            )
    ratios = read_olmix_ratios(ratios_path)
    metrics = _olmix_part(metrics_path, "metrics")
    clash = sorted(set(ratios.columns) & set(metrics.columns) - {RUN})
    if clash:
        raise ValueError(f"{folder}: column(s) {clash} appear in both {OLMIX_RATIOS} and {OLMIX_METRICS}")
    joined = ratios.merge(metrics, on=RUN, how="inner", validate="one_to_one")
    unmatched = len(ratios) + len(metrics) - 2 * len(joined)
    if unmatched:
        warnings.warn(
            f"{folder}: {unmatched} run(s) in only one of {OLMIX_RATIOS} and {OLMIX_METRICS} left out",
            stacklevel=2,
        )
    joined.attrs["unmatched_runs"] = unmatched
    return joined


def is_olmix_swarm(path: str | os.PathLike[str]) -> bool:
    """A directory holding `ratios.csv`, or a path to an Olmix `ratios.csv`/`metrics.csv`."""
    path = Path(path)
    if path.is_dir():
        return (path / OLMIX_RATIOS).exists()
    return (
        path.name in (OLMIX_RATIOS, OLMIX_METRICS)
        and (path.parent / OLMIX_RATIOS).exists()
        and (path.parent / OLMIX_METRICS).exists()
    )


def read_runs_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Any runs or mixture table: an Olmix swarm (see `read_olmix_swarm`), or a CSV/Parquet/JSON table."""
    return read_olmix_swarm(path) if is_olmix_swarm(path) else read_table(path)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        if set(value) == {"value"} or ("value" in value and "desc" in value):  # W&B config entries
            _flatten(prefix, value["value"], out)
            return
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value


def _wandb_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Expand the `config` / `summary` columns of W&B's API export recipe (dict literals per row)
    into dotted columns (`config.mix.web`); the UI's flat export passes through unchanged."""
    nested = [c for c in ("config", "summary") if c in frame.columns and not is_numeric_dtype(frame[c])]
    if not nested:
        return frame
    rows = []
    for position, record in enumerate(frame.to_dict("records")):
        flat: dict[str, Any] = {k: v for k, v in record.items() if k not in nested}
        for column in nested:
            _flatten(column, _dict_literal(record[column], f"row {position + 1}: column {column!r}"), flat)
        rows.append(flat)
    return pd.DataFrame(rows)


def _dict_literal(text: Any, where: str) -> Any:
    """A Python dict literal as `repr` writes it; bare nan/inf (which repr writes) read as floats."""
    if not isinstance(text, str):
        return {} if text is None or (isinstance(text, float) and np.isnan(text)) else text
    bare = re.sub(r"\b(nan|inf)\b", lambda m: {"nan": "None", "inf": "1e999"}[m.group(1)], text)
    for attempt in (text, bare):
        try:
            return ast.literal_eval(attempt)
        except (ValueError, SyntaxError):
            continue
    raise ValueError(f"{where} is not a dict literal: {text[:80]!r}")


def read_wandb_csv(
    path: str | os.PathLike[str] | pd.DataFrame,
    weights: str,
    targets: Mapping[str, str],
    columns: Mapping[str, str] | None = None,
    run: str | None = None,
) -> pd.DataFrame:
    """A runs table from a W&B runs export (CSV): config columns for weights, summary columns
    for losses.

    `weights` is a column pattern whose `*` is the domain (`mix.*`, `config.train.weights.*`);
    `targets` maps our target name to its column (`{"loss": "eval/loss"}`); `columns` maps other
    runs-table columns (`{"N": "config.model.params", "D": "config.tokens"}`). `run` names the id
    column (default: `ID`, `id`, `Name` or `name`, whichever comes first). Every run keeps its row;
    a missing or non-numeric weight or target is an error naming the row.
    """
    frame = path.copy() if isinstance(path, pd.DataFrame) else read_table(path)
    frame = _wandb_columns(frame)
    if "*" not in weights:
        raise ValueError(f"weights pattern {weights!r} needs a '*' standing for the domain, e.g. 'mix.*'")
    prefix, _, suffix = weights.partition("*")
    matched = [c for c in frame.columns if fnmatch.fnmatchcase(str(c), weights)]
    if not matched:
        raise ValueError(f"no column matches weights pattern {weights!r} (columns: {list(frame.columns)})")
    run = run or next((c for c in ("ID", "id", "Name", "name") if c in frame.columns), None)
    if run is None or run not in frame.columns:
        raise ValueError(f"no run id column {run!r}; pass one of {list(frame.columns)}")
    out = pd.DataFrame({RUN: frame[run].astype(str)})
    for column in matched:
        domain = str(column)[len(prefix) : len(str(column)) - len(suffix) or None]
        out[WEIGHT_PREFIX + domain] = pd.to_numeric(frame[column], errors="coerce").fillna(0.0)
    missing = [c for c in [*targets.values(), *(columns or {}).values()] if c not in frame.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the W&B export (columns: {list(frame.columns)})")
    for name, column in {**dict(columns or {}), **dict(targets)}.items():
        out[name] = frame[column]
    validate_weights(out, [c for c in out.columns if c.startswith(WEIGHT_PREFIX)], RUN)
    for name in targets:
        check_positive(out, name, RUN)
    return out


def load_mixtures(path: str | os.PathLike[str], key: str = "index") -> pd.DataFrame:
    """Read a mixture table (or an Olmix swarm), validate it, and return the weights by `key`."""
    return mixture_weights(read_runs_table(path), key, str(path))


def load_targets(path: str | os.PathLike[str], columns: list[str], key: str = "index") -> pd.DataFrame:
    """Read target columns (e.g. losses) indexed by `key`; errors name missing or bad values."""
    frame = read_runs_table(path)
    missing = [c for c in [key, *columns] if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} not found (columns: {list(frame.columns)})")
    _refuse_duplicate_keys(frame, key, str(path))
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: {_row_label(frame, pos, key)}: {column!r} is not a number")
    return frame.set_index(key)[columns].astype(float)


def _refuse_duplicate_keys(frame: pd.DataFrame, key: str | None, source: str) -> None:
    """A key that appears twice would be counted (and trained on) twice: name its second row."""
    if key is None or key not in frame.columns:
        return
    duplicated = frame[key].duplicated().to_numpy()
    if duplicated.any():
        pos = int(np.flatnonzero(duplicated)[0])
        raise ValueError(f"{source}: {_row_label(frame, pos, key)}: duplicate key (each {key} once)")


def join_on_key(mixtures: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """Inner-join mixtures and targets on their index; error if a mixture has no target."""
    missing = mixtures.index.difference(targets.index)
    if len(missing):
        raise ValueError(f"{len(missing)} mixture(s) have no target row, e.g. key {missing[0]!r}")
    return mixtures.join(targets, how="inner")


def load_runs(
    path: str | os.PathLike[str] | pd.DataFrame,
    targets: list[str] | None = None,
    require_weights: bool = True,
) -> pd.DataFrame:
    """Read and validate a runs table (`N`, `D`, `h_*`, `loss` or the given target columns)."""
    frame = path.copy() if isinstance(path, pd.DataFrame) else read_runs_table(path)
    source = "runs table" if isinstance(path, pd.DataFrame) else str(path)
    if frame.empty:
        raise ValueError(f"{source}: no runs (the table has no rows)")
    key = RUN if RUN in frame.columns else None
    _refuse_duplicate_keys(frame, key, source)
    for column in (N, D, *(targets or [LOSS])):
        check_positive(frame, column, key)
    weights = [c for c in frame.columns if str(c).startswith(WEIGHT_PREFIX)]
    if require_weights:
        if not weights:
            raise ValueError("runs table has no h_<domain> weight columns")
        validate_weights(frame, weights, key)
    return frame.reset_index(drop=True)


# Token-count columns accepted by `load_token_counts`, in order of preference. `tokens_kept` is
# what `datamixer score` writes to domain_stats.parquet (pipeline.schema.TOKENS_KEPT); `value`
# is what a JSON mapping {domain: tokens} reads as.
TOKEN_TABLE_COLUMNS = ("tokens", "tokens_kept", "value")


def _olmix_priors(path: str | os.PathLike[str]) -> pd.DataFrame | None:
    """Olmix's priors JSON (`relative_sizes`, `total_tokens`, `token_counts`, alone or under
    `priors` in a launch metadata file; olmix/fit/loaders.py `load_priors_from_json`) as a token table."""
    if Path(path).suffix.lower() != ".json" or not Path(path).exists():
        return None
    data = json.loads(Path(path).read_text())
    data = data.get("priors", data) if isinstance(data, Mapping) else data
    if not isinstance(data, Mapping) or not isinstance(data.get("token_counts"), Mapping):
        return None
    counts = data["token_counts"]
    return pd.DataFrame({"domain": list(counts), "tokens": list(counts.values())})


def load_token_counts(path: str | os.PathLike[str] | pd.DataFrame) -> dict[str, float]:
    """Domain -> token count from a `domain,tokens` table (CSV, Parquet, JSON), a
    `domain_stats.parquet` (`domain`, `tokens_kept`) or Olmix's priors JSON (`token_counts`);
    errors name the row and column."""
    frame = path.copy() if isinstance(path, pd.DataFrame) else _olmix_priors(path)
    frame = read_table(path) if frame is None else frame
    source = "token table" if isinstance(path, pd.DataFrame) else str(path)
    if "domain" not in frame.columns:
        raise ValueError(f"{source}: no 'domain' column (columns: {list(frame.columns)})")
    column = next((c for c in TOKEN_TABLE_COLUMNS if c in frame.columns), None)
    if column is None:
        raise ValueError(
            f"{source}: no token-count column; expected one of {list(TOKEN_TABLE_COLUMNS)} "
            f"(columns: {list(frame.columns)})"
        )
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{source}: {_row_label(frame, pos, 'domain')}: {column!r} must be a number >= 0, "
            f"got {frame[column].iloc[pos]!r}"
        )
    domains = frame["domain"].astype(str)
    if domains.duplicated().any():
        pos = int(np.flatnonzero(domains.duplicated().to_numpy())[0])
        raise ValueError(f"{source}: {_row_label(frame, pos, 'domain')}: duplicate domain")
    if values.sum() <= 0:
        raise ValueError(f"{source}: token counts sum to 0")
    return dict(zip(domains, values.tolist(), strict=True))
