"""Whether a law can be identified from a runs table: refuse fits whose parameters the data cannot pin.

A law with more parameters than runs, or a size term fitted on one model size (or one token count),
"fits" any such table exactly and predicts nothing; these are refused before fitting.
"""

from __future__ import annotations

import pandas as pd


def check_identifiable(kind: str, n_params: int, runs: pd.DataFrame, uses_size: bool) -> None:
    """Raise ValueError (in the user's words) when `runs` cannot identify the `kind` law's parameters."""
    if len(runs) < n_params:
        raise ValueError(
            f"the {kind} law has {n_params} parameters but the runs table has {len(runs)} row(s): "
            f"it cannot be identified; give at least {n_params} runs or fit a smaller law"
        )
    if not uses_size:
        return
    for column, what in (("N", "model size"), ("D", "token count")):
        if column in runs.columns and runs[column].nunique() < 2:
            raise ValueError(
                f"every run has the same {what} ({column}={runs[column].iloc[0]}): the {kind} law's "
                f"{column} term cannot be identified; give runs at two or more values of {column}"
            )
