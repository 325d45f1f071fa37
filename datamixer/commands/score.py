"""`datamixer score`: the Beam scoring job (read, validate, language ID, filters, tokenize, score, dedup,
select, write)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from datamixer.commands._common import emit, info, stage_progress
from datamixer.options import (
    BEAM_COMMAND,
    IdField,
    MaxChars,
    Runner,
    TextField,
    parse_pairs,
    quiet_beam,
    split_list,
)
from pipeline.direct_workers import SINGLE_THREADED_BLAS
from pipeline.domains import domain_inputs


def _scorer_config(name: str, model: str | None, label: str, options: list[str] | None, heads: Path | None):
    """The `ScorerConfig` of --scorer, --model, --label, --scorer-option KEY=VALUE and --heads."""
    from pipeline.registry import ScorerConfig

    settings: dict[str, Any] = dict(parse_pairs(options, "--scorer-option"))
    return ScorerConfig(name, model, label, {**settings, **({"heads": str(heads)} if heads else {})})


def score(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", help="Output directory (replaced atomically).")],
    input: Annotated[
        list[str] | None,
        typer.Option("--input", help="Glob of JSONL(.gz/.zst) or Parquet files (repeatable)."),
    ] = None,
    domain: Annotated[
        list[str] | None, typer.Option("--domain", help="Domain of each --input (or one for all).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML: domain -> glob or list of globs.")
    ] = None,
    scorer: Annotated[
        str | None,
        typer.Option("--scorer", help="Registered scorer name (default: fasttext with --model, else none)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Scorer model (fastText .bin, model directory or .gguf).")
    ] = None,
    label: Annotated[
        str, typer.Option("--label", help="Label whose probability is the fastText score.")
    ] = "__label__hq",
    keep_top: Annotated[
        float | None, typer.Option("--keep-top", help="Keep this fraction of each domain by score.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Keep documents scoring >= this.")
    ] = None,
    runner: Runner = "direct",
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="tokenizer.json for token counts (default: byte-level BPE trained on the input, "
            "saved in the output).",
        ),
    ] = None,
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Vocabulary of the trained BPE.")] = 8192,
    text_field: TextField = "text",
    id_field: IdField = "id",
    max_chars: MaxChars = 1_000_000,
    oversize: Annotated[
        str, typer.Option("--oversize", help="dead-letter or truncate documents over --max-chars.")
    ] = "dead-letter",
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Documents per Arrow batch between steps.")
    ] = 4096,
    num_shards: Annotated[
        int, typer.Option("--num-shards", help="Output shards per kind (0: 4, or 1 per 256 MiB of input).")
    ] = 0,
    no_text: Annotated[
        bool, typer.Option("--no-text", help="Leave the text out of scored-*.parquet.")
    ] = False,
    scorer_option: Annotated[
        list[str] | None, typer.Option("--scorer-option", help="KEY=VALUE for the scorer (repeatable).")
    ] = None,
    heads: Annotated[
        Path | None, typer.Option("--heads", help="HEADS.json (attention-influence scorer).")
    ] = None,
    languages: Annotated[
        str | None, typer.Option("--languages", help="Keep only these languages, e.g. en,de (ISO 639-1).")
    ] = None,
    language_model: Annotated[
        str | None,
        typer.Option(
            "--language-model",
            help="lingua (default), lingua-high, langid, or a fastText lid.176.bin/GlotLID path; "
            "alone it only annotates `language`.",
        ),
    ] = None,
    filters: Annotated[
        str | None,
        typer.Option("--filters", help="gopher,c4 (or gopher_quality, gopher_repetition) or a YAML file."),
    ] = None,
    dedup: Annotated[str | None, typer.Option("--dedup", help="exact or minhash.")] = None,
    dedup_scope: Annotated[
        str, typer.Option("--dedup-scope", help="domain (within each domain) or global.")
    ] = "domain",
    dedup_bands: Annotated[int, typer.Option("--dedup-bands", help="MinHash LSH bands.")] = 14,
    dedup_rows: Annotated[
        int, typer.Option("--dedup-rows", help="MinHash values per band (threshold ~ (1/bands)^(1/rows)).")
    ] = 8,
    keep_fields: Annotated[
        str | None,
        typer.Option(
            "--keep-fields",
            help="Input fields kept in the `metadata` column, comma-separated (default: all; '' none).",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Direct runner: keep each finished input file (or block of a large one) and output "
            "shard beside the output and, after a kill, do only the rest (same options; see "
            "docs/reliability.md).",
        ),
    ] = False,
) -> None:
    """Language ID, filters, dedup, score and select per domain (each optional); write scored-*,
    dead_letter-*.parquet and domain_stats (per-stage drops)."""
    for name, value in SINGLE_THREADED_BLAS.items():  # before numpy loads (see pipeline.direct_workers)
        os.environ.setdefault(name, value)
    from pipeline.dedup import DedupOptions
    from pipeline.filters import parse_filters
    from pipeline.job import ScoreJobConfig, run_score_job
    from pipeline.langid import LanguageOptions
    from pipeline.options import check_flags
    from pipeline.progress import document_progress
    from pipeline.read import ReadOptions, count_records
    from pipeline.select import Selection

    quiet_beam()
    check_flags(ctx.args)  # before any input is read: a stray file is an unquoted glob's
    if scorer is None and model is not None:
        scorer = "fasttext"
    language = None
    if languages is not None or language_model is not None:
        codes = tuple(split_list(languages))
        language = LanguageOptions(languages=codes, model=language_model or "lingua")
    fields = None if keep_fields is None else tuple(split_list(keep_fields))
    job = ScoreJobConfig(
        inputs=domain_inputs(input or [], domain or [], config),
        output=str(output),
        scorer=None if scorer is None else _scorer_config(scorer, model, label, scorer_option, heads),
        language=language,
        filters=parse_filters(filters),
        dedup=None
        if dedup is None
        else DedupOptions(method=dedup, scope=dedup_scope, bands=dedup_bands, rows=dedup_rows),
        selection=Selection(keep_top=keep_top, threshold=threshold),
        read=ReadOptions(
            text_field=text_field,
            id_field=id_field,
            max_chars=max_chars,
            oversize=oversize,
            batch_size=batch_size,
            keep_fields=fields,
        ),
        tokenizer=tokenizer,
        num_shards=num_shards,
        with_text=not no_text,
        vocab_size=vocab_size,
        resume=resume,
    )
    stages = (("language ID", language), ("filters", job.filters), ("dedup", dedup), (scorer, job.scorer))
    steps = [str(name) for name, on in stages if on]
    info(f"{len(job.inputs)} domain(s): {', '.join(steps) or 'read and count'} on the {runner} runner")
    total = count_records(job.inputs, exclude=None if "://" in job.output else job.output)
    with document_progress(stage_progress, total=total) as settle:
        result = run_score_job(job, runner=runner, beam_args=list(ctx.args))
        settle(result["in"])
    if resume:
        info(
            f"resumed {result['units_resumed']} finished unit(s) ({result['files_resumed']} whole file(s)); "
            f"scored {result['units_scored']} unit(s)"
        )
    info(
        f"{result['in']} in, {result['scored']} scored, {result['dead_letter']} dead-lettered, "
        f"{result['kept']} kept -> {output}"
    )
    for warning in result["warnings"]:
        info(f"warning: {warning}")
    emit(result)


def register(app: typer.Typer) -> None:
    app.command("score", context_settings=BEAM_COMMAND)(score)
