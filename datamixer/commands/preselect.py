"""`datamixer preselect label`: PreSelect positives and negatives for `datamixer fasttext train`."""

from __future__ import annotations

from typing import Annotated

import typer

from datamixer.commands._common import emit, info
from datamixer.options import (
    BEAM_COMMAND,
    BatchTokens,
    Device,
    Dtype,
    IdField,
    Input,
    MaxChars,
    OutDir,
    Runner,
    TextField,
    quiet_beam,
    split_list,
)

preselect_app = typer.Typer(
    help="PreSelect: label documents by how well their loss predicts model ability.", no_args_is_help=True
)


@preselect_app.command("label", context_settings=BEAM_COMMAND)
def label(
    ctx: typer.Context,
    input: Input,
    models: Annotated[
        list[str], typer.Option("--models", help="Causal LM directories or .gguf files, comma-separated.")
    ],
    scores: Annotated[
        list[str],
        typer.Option("--scores", help="One benchmark score per model (higher is better), comma-separated."),
    ],
    out: OutDir,
    top: Annotated[
        float, typer.Option("--top", help="Fraction labelled __label__hq; as many get __label__lq.")
    ] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the last tie-break (id hash).")] = 0,
    runner: Runner = "direct",
    device: Device = None,
    dtype: Dtype = "auto",
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Tokens per chunk (default: min(context, 1024)).")
    ] = None,
    batch_tokens: BatchTokens = 16384,
    threads: Annotated[
        int, typer.Option("--threads", help="torch CPU threads per worker (0: torch's default).")
    ] = 1,
    text_field: TextField = "text",
    id_field: IdField = "id",
    max_chars: MaxChars = 1_000_000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents per Arrow batch.")] = 1024,
) -> None:
    """Score each document's loss under every model, rank models per document, label top and bottom."""
    from pipeline.options import check_flags
    from pipeline.preselect import PreselectConfig, run_preselect_job
    from pipeline.read import ReadOptions
    from scorers.preselect import parse_scores

    quiet_beam()
    check_flags(ctx.args)  # before any input is read: a stray file is an unquoted glob's
    config = PreselectConfig(
        inputs=list(input),
        models=split_list(models),
        scores=parse_scores(split_list(scores)),
        output=str(out),
        top=top,
        seed=seed,
        read=ReadOptions(
            text_field=text_field, id_field=id_field, max_chars=max_chars, batch_size=batch_size
        ),
        device=device,
        dtype=dtype,
        max_tokens=max_tokens,
        batch_tokens=batch_tokens,
        threads=threads or None,
    )
    info(f"PreSelect: {len(config.models)} models on the {runner} runner -> {out}")
    result = run_preselect_job(config, runner=runner, beam_args=list(ctx.args))
    info(
        f"{result['documents']} documents, {result['positives']} positive, {result['negatives']} negative, "
        f"{result['dead_letter']} dead-lettered"
    )
    emit(result)


def register(app: typer.Typer) -> None:
    app.add_typer(preselect_app, name="preselect")
