"""`datamixer fasttext train`: a hq-vs-lq fastText quality classifier, as DCLM and PreSelect train it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from datamixer.commands._common import emit, info

fasttext_app = typer.Typer(help="Train fastText quality classifiers.", no_args_is_help=True)


def read_texts(globs: list[str], text_field: str, max_docs: int | None) -> list[str]:
    """Texts of JSONL/Parquet files matching `globs`; records without a usable text are skipped."""
    from pipeline.read import ReadOptions, expand_inputs, read_file

    opts = ReadOptions(text_field=text_field, oversize="truncate")
    texts: list[str] = []
    for domain, path in expand_inputs({"input": globs}):
        for batch, _dead in read_file(domain, path, opts):
            if batch is not None:
                texts += batch.column("text").to_pylist()
            if max_docs and len(texts) >= max_docs:
                return texts[:max_docs]
    return texts


@fasttext_app.command("train")
def train(
    positive: Annotated[
        list[str], typer.Option("--positive", help="JSONL/Parquet glob of high-quality texts (repeatable).")
    ],
    negative: Annotated[
        list[str], typer.Option("--negative", help="JSONL/Parquet glob of low-quality texts (repeatable).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Model file to write (fastText .bin).")],
    text_field: Annotated[str, typer.Option("--text-field")] = "text",
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Held-out share of each class.")
    ] = 0.1,
    max_docs: Annotated[int, typer.Option("--max-docs", help="Cap per class (0: all).")] = 0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    epoch: Annotated[int, typer.Option("--epoch")] = 5,
    dim: Annotated[int, typer.Option("--dim")] = 64,
    lr: Annotated[float, typer.Option("--lr")] = 0.1,
    word_ngrams: Annotated[int, typer.Option("--word-ngrams")] = 2,
    bucket: Annotated[
        int, typer.Option("--bucket", help="Hash buckets for n-grams (model size ~ bucket x dim x 4 B).")
    ] = 200_000,
) -> None:
    """Train __label__hq (positive) vs __label__lq (negative); prints held-out precision/recall/AUC."""
    from scorers.fasttext import FastTextQualityClassifier

    pos = read_texts(positive, text_field, max_docs or None)
    neg = read_texts(negative, text_field, max_docs or None)
    info(f"training on {len(pos)} positive and {len(neg)} negative documents")
    clf = FastTextQualityClassifier(
        test_fraction=test_fraction,
        seed=seed,
        epoch=epoch,
        dim=dim,
        lr=lr,
        wordNgrams=word_ngrams,
        bucket=bucket,
    ).fit(pos, neg)
    clf.save(out)
    emit({"out": str(out), "positive": len(pos), "negative": len(neg), **clf.report_.as_dict()})


def register(app: typer.Typer) -> None:
    app.add_typer(fasttext_app, name="fasttext")
