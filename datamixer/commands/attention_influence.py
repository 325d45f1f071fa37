"""`datamixer attention-influence heads|score`: retrieval-head detection and standalone scoring (no Beam)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

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
    info(
        f"selected {len(found.selected)} of {found.scores.size} heads: {found.selected} "
        f"({found.provenance['probes_per_s']} probes/s)"
    )
    emit(
        {
            "out": str(out),
            "selected": found.selected,
            "n_heads": int(found.scores.size),
            "top_scores": sorted((float(s) for s in found.scores.ravel()), reverse=True)[
                : len(found.selected)
            ],
            "probes": n_probes,
            "max_tokens": found.provenance["max_tokens"],
            "copy_ceiling": found.provenance["copy_ceiling"],
            "probes_per_s": found.provenance["probes_per_s"],
            "seconds": round(time.perf_counter() - start, 2),
        }
    )


def _read_jsonl(pattern: str, text_field: str) -> tuple[list[dict], list[str]]:
    from scorers.jsonl import jsonl_records

    rows, texts = [], []
    for path, number, record in jsonl_records(pattern, text_field):
        text = record[text_field]
        if not isinstance(text, str):
            raise ValueError(f"{path}:{number}: {text_field!r} is not a string")
        rows.append(
            {
                "id": str(record.get("id", f"{Path(path).name}:{number}")),
                "domain": str(record.get("domain", Path(path).name.split(".")[0])),
                "source": path,
            }
        )
        texts.append(text)
    return rows, texts


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
    """Score a JSONL corpus with AttentionInfluence and mark the top fraction per domain (no Beam)."""
    import numpy as np
    import pandas as pd

    from mixer.files import write_parquet
    from pipeline import schema as S
    from pipeline.select import top_fraction_cutoff
    from scorers import attention_influence as ai

    if not 0.0 <= keep_top <= 1.0:
        raise ValueError(f"--keep-top must be a fraction in [0, 1]; got {keep_top}")
    rows, texts = _read_jsonl(input, text_field)
    scorer = ai.AttentionInfluenceScorer(
        model, heads_file, device=device, dtype=dtype, max_tokens=max_tokens, batch_tokens=batch_tokens
    ).setup()
    info(f"scoring {len(texts)} documents; masked heads {scorer.heads_}")
    start = time.perf_counter()
    parts = [
        scorer.score_documents(texts[i : i + docs_per_call])
        for i in progress(range(0, len(texts), docs_per_call), "scoring")
    ]
    seconds = time.perf_counter() - start
    table = pd.DataFrame(rows)
    table[S.N_TOKENS] = np.concatenate([p.n_tokens for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    table[S.score_column("attention-influence")] = np.concatenate([p.score for p in parts]) if parts else []
    table["loss_base"] = np.concatenate([p.loss_base for p in parts]) if parts else []
    table["loss_masked"] = np.concatenate([p.loss_masked for p in parts]) if parts else []
    column = S.score_column("attention-influence")
    table[S.KEEP] = False
    for _, index in table.groupby(S.DOMAIN).groups.items():
        values = table.loc[index, column].to_numpy(dtype=float)
        finite = np.where(np.isfinite(values), values, -np.inf)
        table.loc[index, S.KEEP] = finite >= top_fraction_cutoff(finite, keep_top)
    write_parquet(out, table)
    tokens = int(table[S.N_TOKENS].sum())
    emit(
        {
            "out": str(out),
            "docs": len(table),
            "kept": int(table[S.KEEP].sum()),
            "tokens": tokens,
            "mean_score": float(np.nanmean(table[column])) if len(table) else None,
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "seconds": round(seconds, 2),
        }
    )


def register(app: typer.Typer) -> None:
    group.command("heads")(heads)
    group.command("score")(score)
    app.add_typer(group, name="attention-influence")
