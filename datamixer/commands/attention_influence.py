"""`datamixer attention-influence heads|score`: retrieval-head detection and standalone scoring (no Beam)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from datamixer.commands._common import emit, info, progress, stage_progress
from datamixer.options import BatchTokens, Device, Dtype, LMPath, TextField

group = typer.Typer(
    help="AttentionInfluence: find a model's retrieval heads; score docs by masking them.",
    no_args_is_help=True,
)


def heads(
    model: LMPath,
    out: Annotated[Path, typer.Option("--out", help="HEADS.json to write.")],
    corpus: Annotated[
        str | None,
        typer.Option("--corpus", help="JSONL glob; `text` gives probe values (default: stdlib docstrings)."),
    ] = None,
    probes: Annotated[
        int | None,
        typer.Option("--probes", help="Number of retrieval probes (default: 64 on CPU, 800 on GPU)."),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            help="Tokens per probe, capped at the model's context (default: 512 on CPU, 4096 on GPU).",
        ),
    ] = None,
    top_fraction: Annotated[float, typer.Option("--top-fraction", help="Fraction of heads kept.")] = 0.05,
    seed: Annotated[int, typer.Option("--seed", help="Seed for keys, values and their order.")] = 0,
    exact_copy: Annotated[
        bool,
        typer.Option(
            "--exact-copy", help="Count a copy only on identical token ids (default: normalised token text)."
        ),
    ] = False,
    device: Device = None,
    dtype: Dtype = "auto",
    batch_tokens: BatchTokens = 16384,
) -> None:
    """Score every head's retrieval behaviour on key-value probes and select the top fraction."""
    from mixer.files import write_json
    from scorers import attention_influence as ai
    from scorers import lm

    start = time.perf_counter()
    loaded, tokenizer = lm.load_causal_lm(model, device, dtype, attn_implementation=ai.register_attention())
    default_probes, default_tokens = ai.probe_defaults(next(loaded.parameters()).device.type)
    sentences = ai.corpus_sentences(corpus) if corpus else ai.stdlib_sentences()
    source = corpus or "python-stdlib-docstrings"
    n_probes = probes if probes is not None else default_probes
    info(
        f"{n_probes} probes of up to {max_tokens or default_tokens} tokens from {len(sentences)} sentences "
        f"({source})"
    )
    with stage_progress("heads detection", total=n_probes, unit="probes") as advance:
        found = ai.detect_heads(
            loaded,
            tokenizer,
            sentences,
            n_probes,
            max_tokens or default_tokens,
            top_fraction,
            seed,
            normalize=not exact_copy,
            batch_tokens=batch_tokens,
            on_batch=advance,
        )
    found.provenance.update(model=str(model), corpus=source)
    write_json(out, found.document())
    emit(_heads_summary(found, out, n_probes, time.perf_counter() - start))


def _heads_summary(found: Any, out: Path, n_probes: int, seconds: float) -> dict[str, Any]:
    """The JSON line of `attention-influence heads` (and its stderr line)."""
    info(
        f"selected {len(found.selected)} of {found.scores.size} heads: {found.selected} "
        f"({found.provenance['probes_per_s']} probes/s)"
    )
    top_scores = sorted((float(s) for s in found.scores.ravel()), reverse=True)
    return {
        "out": str(out),
        "selected": found.selected,
        "n_heads": int(found.scores.size),
        "top_scores": top_scores[: len(found.selected)],
        "probes": n_probes,
        "max_tokens": found.provenance["max_tokens"],
        "copy_ceiling": found.provenance["copy_ceiling"],
        "probes_per_s": found.provenance["probes_per_s"],
        "seconds": round(seconds, 2),
    }


def score(
    model: LMPath,
    heads_file: Annotated[Path, typer.Option("--heads", help="HEADS.json from `attention-influence heads`.")],
    input: Annotated[
        str,
        typer.Option(
            "--input",
            help="JSONL glob; each line an object with `text` "
            "(optional `id`, `domain`; domain defaults to the file name).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
    keep_top: Annotated[float, typer.Option("--keep-top", help="Fraction kept per domain (by score).")] = 0.2,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Chunk length (default: min(model context, 1024)).")
    ] = None,
    text_field: TextField = "text",
    device: Device = None,
    dtype: Dtype = "auto",
    batch_tokens: BatchTokens = 16384,
    docs_per_call: Annotated[int, typer.Option("--docs-per-call", help="Docs bucketed together.")] = 512,
) -> None:
    """Score a JSONL corpus with AttentionInfluence and mark the top fraction per domain (no Beam job)."""
    import numpy as np

    from mixer.files import write_parquet
    from pipeline import schema as S
    from pipeline.attention_influence import score_documents_table
    from pipeline.select import Selection
    from scorers import attention_influence as ai
    from scorers.jsonl import jsonl_documents

    Selection(keep_top=keep_top)  # a bad fraction fails before the model loads
    rows, texts = jsonl_documents(input, text_field)
    scorer = ai.AttentionInfluenceScorer(
        model, heads_file, device=device, dtype=dtype, max_tokens=max_tokens, batch_tokens=batch_tokens
    ).setup()
    info(f"scoring {len(texts)} documents; masked heads {scorer.heads_}")
    start = time.perf_counter()
    table = score_documents_table(
        scorer, rows, texts, keep_top, docs_per_call, track=lambda starts: progress(starts, "scoring")
    )
    seconds = time.perf_counter() - start
    write_parquet(out, table)
    tokens = int(table[S.N_TOKENS].sum())
    scores = table[S.score_column("attention-influence")]
    emit(
        {
            "out": str(out),
            "docs": len(table),
            "kept": int(table[S.KEEP].sum()),
            "tokens": tokens,
            "mean_score": float(np.nanmean(scores)) if len(table) else None,
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "seconds": round(seconds, 2),
        }
    )


def register(app: typer.Typer) -> None:
    group.command("heads")(heads)
    group.command("score")(score)
    app.add_typer(group, name="attention-influence")
