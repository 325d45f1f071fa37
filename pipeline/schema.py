"""Every Parquet column the pipeline writes, with its Arrow type. The one place they are named."""

from __future__ import annotations

import pyarrow as pa

# Column names shared by several tables.
ID = "id"
DOMAIN = "domain"
SOURCE = "source"
TEXT = "text"
N_TOKENS = "n_tokens"
N_CHARS = "n_chars"
KEEP = "keep"
SCORE_PREFIX = "score_"

# Dead-letter columns.
RAW = "raw"
ERROR = "error"
STAGE = "stage"
RECORD = "record"  # 1-based line (JSONL) or row (Parquet) number within `source`
RAW_MAX_CHARS = 1000

# Domain statistics columns. `tokens_kept` is what `datamixer regmix propose` reads as availability.
DOCS_IN = "docs_in"
DOCS_SCORED = "docs_scored"
DOCS_KEPT = "docs_kept"
DOCS_DEAD_LETTER = "docs_dead_letter"
TOKENS_IN = "tokens_in"
TOKENS_KEPT = "tokens_kept"
CUTOFF_PREFIX = "cutoff_"

# PreSelect columns (`datamixer preselect label` -> strengths.parquet).
BPC_PREFIX = "bpc_"  # bits per character of one model on the document
STRENGTH = "strength"  # concordant model pairs / all pairs
CORRELATION = "loss_score_r"  # Pearson of -bpc with the models' scores (tie-break)
TIEBREAK = "tiebreak"
LABEL = "label"
STRENGTHS_FILE = "strengths.parquet"

SCORED_PREFIX = "scored"
DEAD_LETTER_PREFIX = "dead_letter"
DOMAIN_STATS_FILE = "domain_stats.parquet"
DOMAIN_STATS_JSON = "domain_stats.json"


def score_column(scorer: str) -> str:
    """Column holding a scorer's score, e.g. `score_fasttext`, `score_attention_influence`."""
    return SCORE_PREFIX + scorer.replace("-", "_")


def scored_schema(scorers: list[str], with_text: bool = True) -> pa.Schema:
    """Schema of `scored-*.parquet`: one row per document that was read and scored."""
    fields = [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(DOMAIN, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string()),
        pa.field(N_CHARS, pa.int64(), nullable=False),
        pa.field(N_TOKENS, pa.int64(), nullable=False),
        *[pa.field(score_column(s), pa.float64()) for s in scorers],
        pa.field(KEEP, pa.bool_(), nullable=False),
    ]
    if with_text:
        fields.append(pa.field(TEXT, pa.string()))
    return pa.schema(fields)


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field(DOMAIN, pa.string()),
        pa.field(SOURCE, pa.string()),
        pa.field(RECORD, pa.int64()),
        pa.field(ID, pa.string()),
        pa.field(STAGE, pa.string(), nullable=False),
        pa.field(RAW, pa.string()),
        pa.field(ERROR, pa.string(), nullable=False),
    ]
)

DOMAIN_STATS_SCHEMA = pa.schema(
    [
        pa.field(DOMAIN, pa.string(), nullable=False),
        pa.field(DOCS_IN, pa.int64(), nullable=False),
        pa.field(DOCS_SCORED, pa.int64(), nullable=False),
        pa.field(DOCS_KEPT, pa.int64(), nullable=False),
        pa.field(DOCS_DEAD_LETTER, pa.int64(), nullable=False),
        pa.field(TOKENS_IN, pa.int64(), nullable=False),
        pa.field(TOKENS_KEPT, pa.int64(), nullable=False),
    ]
)


def domain_stats_schema(selection_scorer: str | None = None) -> pa.Schema:
    """`domain_stats.parquet`: the fixed columns, plus `cutoff_<scorer>` when a selection ran.

    `docs_in = docs_scored + docs_dead_letter`; tokens count scored documents only.
    """
    if selection_scorer is None:
        return DOMAIN_STATS_SCHEMA
    cutoff = CUTOFF_PREFIX + selection_scorer.replace("-", "_")
    return DOMAIN_STATS_SCHEMA.append(pa.field(cutoff, pa.float64()))
