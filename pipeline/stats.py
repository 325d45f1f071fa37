"""Per-domain counts: documents in, scored, kept, dead-lettered; tokens in and kept; documents and
tokens dropped by each stage (language, gopher, c4, duplicate, selection).

`tokens_kept` is what `datamixer regmix propose` reads as a domain's availability.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as S

# Order of the count vector each element contributes.
_FIELDS = (
    S.DOCS_SCORED,
    S.DOCS_KEPT,
    S.TOKENS_IN,
    S.TOKENS_KEPT,
    S.DOCS_DEAD_LETTER,
    *[S.DOCS_DROPPED_PREFIX + stage for stage in S.DROP_STAGES],
    *[S.TOKENS_DROPPED_PREFIX + stage for stage in S.DROP_STAGES],
)
_N_STAGES = len(S.DROP_STAGES)


def _stage_index(reasons: pa.Array, keep: np.ndarray) -> np.ndarray:
    """Index into DROP_STAGES of each document's drop (-1 when kept); no reason and not kept is the
    selection's drop."""
    stages = [S.drop_stage(r) if r is not None else "selection" for r in reasons.to_pylist()]
    index = np.array([S.DROP_STAGES.index(s) for s in stages], np.int64)
    index[keep] = -1
    return index


def scored_counts(table: pa.Table) -> list[tuple[str, np.ndarray]]:
    """(domain, counts) for a table of documents with `keep`, `drop_reason` and `n_tokens`."""
    out = []
    domains = table.column(S.DOMAIN)
    for domain in pc.unique(domains).to_pylist():
        part = table.filter(pc.equal(domains, domain))
        keep = part.column(S.KEEP).to_numpy()
        tokens = part.column(S.N_TOKENS).to_numpy()
        stage = _stage_index(part.column(S.DROP_REASON).combine_chunks(), keep)
        dropped = [(stage == i).sum() for i in range(_N_STAGES)]
        dropped_tokens = [tokens[stage == i].sum() for i in range(_N_STAGES)]
        head = [part.num_rows, keep.sum(), tokens.sum(), tokens[keep].sum(), 0]
        out.append((domain, np.array(head + dropped + dropped_tokens, np.int64)))
    return out


def dead_letter_counts(row: dict[str, Any]) -> tuple[str, np.ndarray]:
    vec = np.zeros(len(_FIELDS), np.int64)
    vec[_FIELDS.index(S.DOCS_DEAD_LETTER)] = 1
    return row[S.DOMAIN] or "", vec


def stats_table(
    counts: Iterable[tuple[str, np.ndarray]],
    domains: Iterable[str],
    cutoffs: dict[str, float] | None = None,
    selection_scorer: str | None = None,
) -> pa.Table:
    """One row per domain (every input domain, even one whose every record was dead-lettered)."""
    by_domain = {d: np.zeros(len(_FIELDS), np.int64) for d in domains}
    for domain, vec in counts:
        by_domain[domain] = by_domain.get(domain, np.zeros(len(_FIELDS), np.int64)) + vec
    rows = []
    for domain in sorted(by_domain):
        rec: dict[str, Any] = dict(zip(_FIELDS, (int(v) for v in by_domain[domain]), strict=True))
        rec[S.DOMAIN] = domain
        rec[S.DOCS_IN] = rec[S.DOCS_SCORED] + rec[S.DOCS_DEAD_LETTER]
        if selection_scorer is not None:
            cut = (cutoffs or {}).get(domain)
            rec[S.CUTOFF_PREFIX + selection_scorer.replace("-", "_")] = (
                None if cut is None or math.isinf(cut) else cut
            )
        rows.append(rec)
    return pa.Table.from_pylist(rows, schema=S.domain_stats_schema(selection_scorer))


def totals(table: pa.Table) -> dict[str, int]:
    """Headline counts over all domains: in, scored, dead_letter, kept, tokens_in, tokens_kept and
    dropped_<stage> (documents) per stage."""

    def total(col: str) -> int:
        return int(pc.sum(table.column(col)).as_py() or 0)

    return {
        "in": total(S.DOCS_IN),
        "scored": total(S.DOCS_SCORED),
        "dead_letter": total(S.DOCS_DEAD_LETTER),
        "kept": total(S.DOCS_KEPT),
        "tokens_in": total(S.TOKENS_IN),
        "tokens_kept": total(S.TOKENS_KEPT),
        **{f"dropped_{stage}": total(S.DOCS_DROPPED_PREFIX + stage) for stage in S.DROP_STAGES},
    }


def write_stats(table: pa.Table, out_dir: str) -> None:
    """domain_stats.parquet and domain_stats.json (list of rows) into `out_dir` (any Beam filesystem)."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(FileSystems.join(out_dir, S.DOMAIN_STATS_FILE)) as fh:
        pq.write_table(table, fh)
    with FileSystems.create(FileSystems.join(out_dir, S.DOMAIN_STATS_JSON)) as fh:
        fh.write((json.dumps(table.to_pylist(), indent=2, sort_keys=True) + "\n").encode())


def read_stats(out_dir: str) -> pa.Table:
    """domain_stats.parquet of `out_dir`. Read as bytes: Arrow reading a Python file object leaves
    I/O threads that call back into Python and abort the process at interpreter exit (exit 134)."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(FileSystems.join(out_dir, S.DOMAIN_STATS_FILE)) as fh:
        return pq.read_table(pa.BufferReader(fh.read()))
