"""The one loader for mixture and runs tables: validated, with errors that name row and column.

A runs table has one row per (proxy) training run: `N` (parameters), `D` (tokens), the domain
weights as `h_<domain>` columns, and the target losses (`loss`, or `loss_<domain>` per domain).
A mixture table (RegMix's format) has a key column and one weight column per domain.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from mixer.files import read_table

WEIGHT_PREFIX = "h_"
LOSS = "loss"
LOSS_PREFIX = "loss_"
N = "N"
D = "D"
RUN = "run"
SUM_TOLERANCE = 0.01


def weight_columns(frame: pd.DataFrame, key: str | None = None) -> list[str]:
    """The domain-weight columns: the `h_*` columns if any, else every column but `key`."""
    prefixed = [c for c in frame.columns if str(c).startswith(WEIGHT_PREFIX)]
    if prefixed:
        return prefixed
    return [c for c in frame.columns if c != key]


def domain_name(column: str) -> str:
    """`h_web` -> `web`; other names unchanged."""
    return column[len(WEIGHT_PREFIX):] if column.startswith(WEIGHT_PREFIX) else column


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
                f"{_row_label(frame, pos, key)}: weight column {column!r} is negative "
                f"({values.iloc[pos]})"
            )
    sums = frame[columns].astype(float).sum(axis=1).to_numpy()
    off = np.abs(sums - 1.0) > tol
    if off.any():
        pos = int(np.flatnonzero(off)[0])
        raise ValueError(
            f"{_row_label(frame, pos, key)}: weights sum to {sums[pos]:.4f}, not 1 +/- {tol}"
        )


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


def load_mixtures(path: str | os.PathLike[str], key: str = "index") -> pd.DataFrame:
    """Read a mixture table, validate it, and return the weights indexed by `key`."""
    return mixture_weights(read_table(path), key, str(path))


def load_targets(
    path: str | os.PathLike[str], columns: list[str], key: str = "index"
) -> pd.DataFrame:
    """Read target columns (e.g. losses) indexed by `key`; errors name missing or bad values."""
    frame = read_table(path)
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
    frame = path.copy() if isinstance(path, pd.DataFrame) else read_table(path)
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
TOKEN_COLUMNS = ("tokens", "tokens_kept", "value")


def load_token_counts(path: str | os.PathLike[str] | pd.DataFrame) -> dict[str, float]:
    """Domain -> token count from a `domain,tokens` table (CSV, Parquet, JSON) or a
    `domain_stats.parquet` (`domain`, `tokens_kept`); errors name the row and column."""
    frame = path.copy() if isinstance(path, pd.DataFrame) else read_table(path)
    source = "token table" if isinstance(path, pd.DataFrame) else str(path)
    if "domain" not in frame.columns:
        raise ValueError(f"{source}: no 'domain' column (columns: {list(frame.columns)})")
    column = next((c for c in TOKEN_COLUMNS if c in frame.columns), None)
    if column is None:
        raise ValueError(
            f"{source}: no token-count column; expected one of {list(TOKEN_COLUMNS)} "
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
