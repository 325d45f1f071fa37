"""`datamixer proxy`: train small proxy LMs on mixtures and write the runs table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from datamixer.commands._common import emit, info, stage_progress
from datamixer.options import MixtureFile, split_list

proxy_app = typer.Typer(
    help="Train proxy models on mixtures (rows for `regmix fit` and `law fit`).", no_args_is_help=True
)


def parse_count(text: str) -> int:
    """'300k' -> 300000, '1.5m' -> 1500000, '2e5' -> 200000, '300_000' (`mixer.budget.parse_tokens`)."""
    from mixer.budget import parse_tokens

    return parse_tokens(text.replace("_", ""))


Data = Annotated[Path, typer.Option("--data", help="`datamixer score` output directory (scored-*.parquet).")]
Tokens = Annotated[str, typer.Option("--tokens", help="Training tokens per run, e.g. 300k.")]
Tokenizer = Annotated[
    Path | None,
    typer.Option(
        "--tokenizer",
        help="tokenizer.json (default: DATA/tokenizer.json, else a byte-level BPE trained here).",
    ),
]
EvalEvery = Annotated[
    str | None,
    typer.Option(
        "--eval-every", help="Evaluate every this many tokens (default: --eval-points doubling points)."
    ),
]
EvalPoints = Annotated[
    int,
    typer.Option(
        "--eval-points", help="Evaluations at D/2^k ending at --tokens (when --eval-every is unset)."
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Model initialisation and data-order seed.")]
Context = Annotated[int, typer.Option("--context", help="Sequence length in tokens.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Sequences per step.")]
LR = Annotated[float, typer.Option("--lr", help="Peak (constant after warm-up) learning rate.")]
VocabSize = Annotated[
    int | None,
    typer.Option(
        "--vocab-size", help="Train a byte-level BPE of this size here instead of using DATA/tokenizer.json."
    ),
]
Threads = Annotated[
    int | None, typer.Option("--threads", help="torch threads per process (default: all cores / processes).")
]
Workers = Annotated[int | None, typer.Option("--workers", help="Processes (default: one per core).")]
ValTokens = Annotated[int, typer.Option("--val-tokens", help="Validation tokens held out per domain.")]


def _config(context: int, batch_size: int, lr: float, eval_every: str | None, eval_points: int):
    from pipeline.proxy.train import TrainConfig

    return TrainConfig(
        context=context,
        batch_size=batch_size,
        lr=lr,
        eval_points=eval_points,
        eval_every=parse_count(eval_every) if eval_every else None,
    )


def _load(data: Path, tokenizer: Path | None, val_tokens: int, vocab_size: int | None):
    from pipeline.proxy.data import load_proxy_data

    loaded = load_proxy_data(data, tokenizer=tokenizer, val_tokens=val_tokens, vocab_size=vocab_size)
    info(
        f"tokenizer: {loaded.tokenizer_source} ({loaded.vocab_size:,} tokens, end-of-text "
        f"{loaded.eos_token!r})"
    )
    for domain, stats in loaded.summary().items():
        info(f"{domain}: {stats['train_tokens']:,} train / {stats['valid_tokens']:,} validation tokens")
    return loaded


@proxy_app.command("train")
def train(
    data: Data,
    mixture: MixtureFile,
    tokens: Tokens,
    size: Annotated[str, typer.Option("--size", help="Named model size (see `datamixer proxy sizes`).")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint directory (Hugging Face format).")],
    runs: Annotated[Path | None, typer.Option("--runs", help="Runs table to append the rows to.")] = None,
    eval_every: EvalEvery = None,
    eval_points: EvalPoints = 4,
    seed: Seed = 0,
    tokenizer: Tokenizer = None,
    vocab_size: VocabSize = None,
    context: Context = 64,
    batch_size: BatchSize = 8,
    lr: LR = 5e-3,
    val_tokens: ValTokens = 8192,
    threads: Threads = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "cpu",
) -> None:
    """Train one proxy model on one mixture; write the checkpoint and the runs-table rows."""
    from mixer.files import write_parquet
    from mixer.mixture import read_mixture
    from pipeline.proxy.sweep import append_runs
    from pipeline.proxy.train import train_proxy

    weights = read_mixture(mixture)
    loaded = _load(data, tokenizer, val_tokens, vocab_size)
    config = _config(context, batch_size, lr, eval_every, eval_points)
    start = time.perf_counter()
    rows = train_proxy(
        loaded,
        weights,
        parse_count(tokens),
        size,
        mixture=mixture.stem,
        seed=seed,
        config=config,
        out=out,
        threads=threads,
        device=device,
        on_eval=lambda r: info(f"D={r['D']:,}: loss {r['loss']:.4f}"),
    )
    seconds = time.perf_counter() - start
    import pandas as pd

    write_parquet(out / "runs.parquet", pd.DataFrame(rows))
    if runs is not None:
        append_runs(runs, rows)
    final = rows[-1]
    emit(
        {
            "mixture": mixture.stem,
            "size": size,
            "N": final["N"],
            "D": final["D"],
            "loss": final["loss"],
            "losses": {k[5:]: v for k, v in final.items() if k.startswith("loss_")},
            "rows": len(rows),
            "checkpoint": str(out),
            "runs": str(runs) if runs else None,
            "seconds": round(seconds, 2),
            "tokens_per_s": round(final["D"] / seconds, 1),
        }
    )


@proxy_app.command("sweep")
def sweep(
    data: Data,
    proposals: Annotated[
        Path,
        typer.Option(
            "--proposals", help="proposals.parquet (mixture + h_<domain>) or a directory of mixture files."
        ),
    ],
    sizes: Annotated[str, typer.Option("--sizes", help="Comma-separated named sizes, e.g. 20k,100k.")],
    tokens: Tokens,
    runs: Annotated[Path, typer.Option("--runs", help="Runs table (Parquet) to append to; resumes.")],
    workers: Workers = None,
    threads: Threads = None,
    checkpoints: Annotated[
        Path | None, typer.Option("--checkpoints", help="Save every run's model under this directory.")
    ] = None,
    eval_every: EvalEvery = None,
    eval_points: EvalPoints = 4,
    seed: Seed = 0,
    tokenizer: Tokenizer = None,
    vocab_size: VocabSize = None,
    context: Context = 64,
    batch_size: BatchSize = 8,
    lr: LR = 5e-3,
    val_tokens: ValTokens = 8192,
) -> None:
    """Train every proposed mixture at every size, in parallel; a re-run resumes."""
    from pipeline.proxy.sweep import done_runs, plan_tasks, read_proposals, run_sweep_tracked

    size_list = split_list(sizes)
    if not size_list:
        raise ValueError("--sizes is empty")
    mixtures = read_proposals(proposals)
    loaded = _load(data, tokenizer, val_tokens, vocab_size)
    config = _config(context, batch_size, lr, eval_every, eval_points)
    budget = parse_count(tokens)
    before = done_runs(runs)
    tasks = plan_tasks(mixtures, size_list, budget, seed, loaded)
    todo = sum(t.final_run(config) not in before for t in tasks)
    info(f"{len(tasks)} runs planned, {len(tasks) - todo} already in {runs}, {todo} to train")
    finished = []

    start = time.perf_counter()
    if loaded.tokenizer_source == "trained":  # keep it beside the runs it measured
        from mixer.files import write_text

        write_text(runs.with_name(runs.stem + ".tokenizer.json"), loaded.tokenizer_json)
    table = run_sweep_tracked(
        stage_progress,
        "proxy sweep",
        loaded,
        mixtures,
        size_list,
        budget,
        runs,
        workers=workers,
        threads=threads,
        seed=seed,
        config=config,
        checkpoints=checkpoints,
        on_done=lambda task, rows: finished.append(task),
    )
    emit(
        {
            "runs": str(runs),
            "rows": len(table),
            "trained": len(finished),
            "skipped": len(tasks) - todo,
            "planned": len(tasks),
            "sizes": size_list,
            "mixtures": len(mixtures),
            "seconds": round(time.perf_counter() - start, 2),
        }
    )


@proxy_app.command("sizes")
def sizes() -> None:
    """List the named model sizes with their exact non-embedding parameter counts."""
    from pipeline.proxy.model import SIZES

    for name, shape in SIZES.items():
        info(
            f"{name:>5}  N={shape.non_embedding_params():>9,}  hidden={shape.hidden} layers={shape.layers} "
            f"heads={shape.heads} intermediate={shape.intermediate}"
        )
    emit({"sizes": {name: shape.non_embedding_params() for name, shape in SIZES.items()}})


def register(app: typer.Typer) -> None:
    """Add the `proxy` command group."""
    app.add_typer(proxy_app, name="proxy")
