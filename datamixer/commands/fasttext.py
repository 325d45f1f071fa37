"""`datamixer fasttext train`: a hq-vs-lq fastText quality classifier, as DCLM and PreSelect train it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from datamixer.commands._common import emit, info
from datamixer.options import Seed, TextField

fasttext_app = typer.Typer(help="Train fastText quality classifiers.", no_args_is_help=True)


@fasttext_app.command("train")
def train(
    positive: Annotated[
        list[str], typer.Option("--positive", help="JSONL/Parquet glob of high-quality texts (repeatable).")
    ],
    negative: Annotated[
        list[str], typer.Option("--negative", help="JSONL/Parquet glob of low-quality texts (repeatable).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Model file to write (fastText .bin).")],
    text_field: TextField = "text",
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Held-out share of each class.")
    ] = 0.1,
    max_docs: Annotated[int, typer.Option("--max-docs", help="Cap per class (0: all).")] = 0,
    seed: Seed = 0,
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            help="auto: choose epoch/lr/word n-grams by validation AUC (6 seeded fits, minCount 3); "
            "dclm: DCLM's fixed settings (epoch 5, lr 0.1, word bigrams, minCount 1).",
        ),
    ] = "auto",
    epoch: Annotated[int | None, typer.Option("--epoch", help="Fix the epochs (else searched).")] = None,
    dim: Annotated[int, typer.Option("--dim")] = 64,
    lr: Annotated[float | None, typer.Option("--lr", help="Fix the learning rate (else searched).")] = None,
    word_ngrams: Annotated[
        int | None, typer.Option("--word-ngrams", help="Fix the word n-gram length (else searched).")
    ] = None,
    bucket: Annotated[
        int, typer.Option("--bucket", help="Hash buckets for n-grams (model size ~ bucket x dim x 4 B).")
    ] = 200_000,
) -> None:
    """Train __label__hq (positive) vs __label__lq (negative); prints held-out precision/recall/AUC."""
    import warnings

    from pipeline.read import read_texts
    from scorers.fasttext import LOW_AUC, FastTextQualityClassifier

    pos = read_texts(positive, text_field, max_docs or None)
    neg = read_texts(negative, text_field, max_docs or None)
    info(f"training on {len(pos)} positive and {len(neg)} negative documents")
    fixed: dict[str, Any] = {
        k: v for k, v in (("epoch", epoch), ("lr", lr), ("wordNgrams", word_ngrams)) if v is not None
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the low-AUC warning is printed below, louder
        clf = FastTextQualityClassifier(
            test_fraction=test_fraction, seed=seed, preset=preset, dim=dim, bucket=bucket, **fixed
        ).fit(pos, neg)
    for settings, auc in clf.search_:
        info(f"  validation AUC {auc:.3f} with {settings}")
    chosen = {k: clf.params_[k] for k in ("epoch", "lr", "wordNgrams", "dim", "bucket")}
    info(f"chosen settings ({preset}): {chosen}; held-out AUC {clf.report_.auc:.3f}")
    if not clf.report_.auc >= LOW_AUC:
        info(
            f"WARNING: held-out AUC {clf.report_.auc:.3f} < {LOW_AUC}: this classifier barely separates "
            "the two sets; its scores will select almost at random. Check the data, add documents, "
            "or try other settings."
        )
    clf.save(out)
    emit(
        {
            "out": str(out),
            "positive": len(pos),
            "negative": len(neg),
            **clf.report_.as_dict(),
            "settings": chosen,
        }
    )


def register(app: typer.Typer) -> None:
    app.add_typer(fasttext_app, name="fasttext")
