"""`datamixer score`: the Beam scoring job (read, validate, tokenize, score, select, write)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from datamixer.commands._common import emit, info, stage_progress


def domain_inputs(inputs: list[str], domains: list[str], config: Path | None) -> dict[str, list[str]]:
    """domain -> globs from `--input/--domain` pairs (one --domain may cover every --input) or a YAML file
    (`{domain: glob or [globs]}`, optionally under `domains:`; relative globs are relative to the file)."""
    if config is not None:
        if inputs or domains:
            raise ValueError("give either --config or --input/--domain, not both")
        from mixer.files import read_yaml

        if not config.is_file():
            raise FileNotFoundError(f"{config}: no such config file")
        data = read_yaml(config) or {}
        data = data.get("domains", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or not data:
            raise ValueError(f"{config}: expected a mapping of domain -> glob or list of globs")
        out: dict[str, list[str]] = {}
        for domain, globs in data.items():
            globs = [globs] if isinstance(globs, str) else globs
            if not isinstance(globs, list) or not all(isinstance(g, str) for g in globs) or not globs:
                raise ValueError(f"{config}: domain {domain!r} must map to a glob or a list of globs")
            out[str(domain)] = [
                g if "://" in g or Path(g).is_absolute() else str(config.parent / g) for g in globs
            ]
        return out
    if not inputs:
        raise ValueError("no inputs: give --input GLOB --domain NAME (repeatable) or --config domains.yaml")
    if len(domains) == 1:
        domains = domains * len(inputs)
    if len(domains) != len(inputs):
        raise ValueError(
            f"got {len(inputs)} --input and {len(domains)} --domain; give one --domain per "
            "--input, or a single --domain for all of them"
        )
    out = {}
    for glob, domain in zip(inputs, domains, strict=True):
        out.setdefault(domain, []).append(glob)
    return out


def parse_scorer_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--scorer-option must be KEY=VALUE; got {pair!r}")
        options[key] = value
    return options


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
    scorer: Annotated[str, typer.Option("--scorer", help="Registered scorer name.")] = "fasttext",
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
    runner: Annotated[
        str,
        typer.Option(
            "--runner", help="direct, portable, dataflow, spark or flink; Beam flags for it go after `--`."
        ),
    ] = "direct",
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="tokenizer.json for token counts (default: byte-level BPE trained on the input, "
            "saved in the output).",
        ),
    ] = None,
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Vocabulary of the trained BPE.")] = 8192,
    text_field: Annotated[str, typer.Option("--text-field")] = "text",
    id_field: Annotated[str, typer.Option("--id-field")] = "id",
    max_chars: Annotated[
        int, typer.Option("--max-chars", help="Longest document, in characters.")
    ] = 1_000_000,
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
) -> None:
    """Score every document, select per domain; write scored-*, dead_letter-*.parquet and domain_stats."""
    from pipeline.job import ScoreJobConfig, run_score_job
    from pipeline.progress import document_progress
    from pipeline.read import ReadOptions
    from pipeline.registry import ScorerConfig
    from pipeline.select import Selection

    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    job = ScoreJobConfig(
        inputs=domain_inputs(input or [], domain or [], config),
        output=str(output),
        scorer=ScorerConfig(scorer, model, label, {
            **parse_scorer_options(scorer_option or []), **({"heads": str(heads)} if heads else {})}),
        selection=Selection(keep_top=keep_top, threshold=threshold),
        read=ReadOptions(
            text_field=text_field,
            id_field=id_field,
            max_chars=max_chars,
            oversize=oversize,
            batch_size=batch_size,
        ),
        tokenizer=tokenizer,
        num_shards=num_shards,
        with_text=not no_text,
        vocab_size=vocab_size,
    )
    info(f"scoring {len(job.inputs)} domain(s) with {scorer} on the {runner} runner")
    with document_progress(stage_progress) as settle:
        result = run_score_job(job, runner=runner, beam_args=list(ctx.args))
        settle(result["scored"])
    info(
        f"{result['in']} in, {result['scored']} scored, {result['dead_letter']} dead-lettered, "
        f"{result['kept']} kept -> {output}"
    )
    for warning in result["warnings"]:
        info(f"warning: {warning}")
    emit(result)


def register(app: typer.Typer) -> None:
    app.command("score", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(score)
