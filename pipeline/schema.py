"""Every Parquet column the pipeline writes, with its Arrow type. The one place they are named."""

from __future__ import annotations

import pyarrow as pa

# Column names shared by several tables.
ID = "id"
DOMAIN = "domain"
SOURCE = "source_file"  # the file a document was read from (an input's own `source` field is metadata)
TEXT = "text"
N_TOKENS = "n_tokens"
N_CHARS = "n_chars"
KEEP = "keep"
SCORE_PREFIX = "score_"

# Selection stages (language ID, heuristic filters, dedup) and metadata carried through.
LANGUAGE = "language"
LANGUAGE_SCORE = "language_score"
DROP_REASON = "drop_reason"  # null when the document survives the stages, e.g. "lang:fr", "c4:lorem_ipsum"
DUPLICATE_OF = "duplicate_of"  # id of the document kept in a removed duplicate's place
METADATA = "metadata"  # the input record's other fields, as a JSON object string
# Stages whose drops `domain_stats` counts, in job order; "selection" is the score cut (drop_reason null).
DROP_STAGES = ("language", "gopher", "c4", "duplicate", "selection")
_REASON_STAGE = {"lang": "language", "gopher": "gopher", "c4": "c4", "duplicate": "duplicate"}

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
DOCS_DROPPED_PREFIX = "docs_dropped_"
TOKENS_DROPPED_PREFIX = "tokens_dropped_"

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


def drop_stage(reason: str) -> str:
    """The `domain_stats` stage of a `drop_reason` ("gopher:mean_word_length" -> "gopher")."""
    return _REASON_STAGE[reason.split(":", 1)[0]]


def scored_schema(scorers: list[str], with_text: bool = True) -> pa.Schema:
    """Schema of `scored-*.parquet`: one row per document that was read (scores are null for
    documents a stage dropped before scoring)."""
    fields = [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(DOMAIN, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string()),
        pa.field(N_CHARS, pa.int64(), nullable=False),
        pa.field(N_TOKENS, pa.int64(), nullable=False),
        pa.field(LANGUAGE, pa.string()),
        pa.field(LANGUAGE_SCORE, pa.float64()),
        *[pa.field(score_column(s), pa.float64()) for s in scorers],
        pa.field(DROP_REASON, pa.string()),
        pa.field(DUPLICATE_OF, pa.string()),
        pa.field(KEEP, pa.bool_(), nullable=False),
        pa.field(METADATA, pa.string()),
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
        *[pa.field(DOCS_DROPPED_PREFIX + stage, pa.int64(), nullable=False) for stage in DROP_STAGES],
        *[pa.field(TOKENS_DROPPED_PREFIX + stage, pa.int64(), nullable=False) for stage in DROP_STAGES],
    ]
)


def domain_stats_schema(selection_scorer: str | None = None) -> pa.Schema:
    """`domain_stats.parquet`: the fixed columns, plus `cutoff_<scorer>` when a selection ran.

    `docs_in = docs_scored + docs_dead_letter`, `docs_scored = docs_kept + sum(docs_dropped_<stage>)`
    and `tokens_in = tokens_kept + sum(tokens_dropped_<stage>)` (tokens count readable documents only).
    """
    if selection_scorer is None:
        return DOMAIN_STATS_SCHEMA
    cutoff = CUTOFF_PREFIX + selection_scorer.replace("-", "_")
    return DOMAIN_STATS_SCHEMA.append(pa.field(cutoff, pa.float64()))
