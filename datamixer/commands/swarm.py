"""`datamixer priors` (token counts per domain from tokenized files) and `datamixer runs import`
(Olmix swarms and W&B run exports as a runs table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from datamixer.commands._common import emit, info, write_table
from datamixer.options import parse_pairs

runs_group = typer.Typer(
    help="Runs tables from other tools: Olmix swarms, W&B exports.", no_args_is_help=True
)


def _write_olmix_priors(out: Path, counts: dict[str, int]) -> None:
    """Token counts in Olmix's priors format (olmix/fit/loaders.py)."""
    from mixer.files import write_json

    total = sum(counts.values())
    write_json(
        out,
        {
            "relative_sizes": {d: c / total for d, c in counts.items()},
            "total_tokens": total,
            "token_counts": counts,
        },
    )


def priors(
    out: Annotated[
        Path,
        typer.Option("--out", help="token table (domain, tokens, files): .parquet/.csv; .json: Olmix priors"),
    ],
    tree: Annotated[
        Path | None,
        typer.Option("--tree", help="domain tree YAML whose leaves give `paths` (docs/swarms.md)"),
    ] = None,
    paths: Annotated[
        Path | None,
        typer.Option("--paths", help="YAML/JSON domain -> file glob(s), as `datamixer export` reads"),
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="token dtype of headerless .npy files")] = "uint32",
    token_column: Annotated[
        str | None,
        typer.Option("--token-column", help="Parquet token-count column (default: n_tokens, tokens...)"),
    ] = None,
) -> None:
    """Count tokens per domain (leaf) from Megatron .bin/.idx, .npy token arrays or Parquet."""
    import pandas as pd

    from mixer.exports import read_paths
    from mixer.priors import count_tokens
    from mixer.tree import read_tree

    given: dict[str, float] = {}  # tree leaves with a count and no paths keep their count
    if tree is not None and paths is None:
        leaves = read_tree(tree).leaves()
        globs = {leaf.path: list(leaf.paths) for leaf in leaves if leaf.paths}
        given = {leaf.path: leaf.tokens for leaf in leaves if not leaf.paths and leaf.tokens is not None}
    elif paths is not None and tree is None:
        globs = read_paths(paths)
    else:
        raise ValueError("give exactly one of --tree or --paths")
    info(f"counting tokens of {len(globs)} domain(s)")
    counted = count_tokens(globs, dtype=dtype, column=token_column)
    rows = [{"domain": d, "tokens": int(c["tokens"]), "files": c["files"]} for d, c in counted.items()]
    rows += [{"domain": d, "tokens": int(t), "files": 0} for d, t in given.items()]
    table = pd.DataFrame(rows)
    if out.suffix.lower() == ".json":
        _write_olmix_priors(
            out, dict(zip(table["domain"], table["tokens"].astype(int).tolist(), strict=True))
        )
    else:
        write_table(out, table)
    emit(
        {
            "out": str(out),
            "domains": len(table),
            "tokens": int(table["tokens"].sum()),
            "files": int(table["files"].sum()),
            "per_domain": dict(zip(table["domain"], table["tokens"], strict=True)),
        }
    )


@runs_group.command("import")
def import_runs(
    source: Annotated[
        Path, typer.Argument(help="Olmix swarm (dir with ratios.csv + metrics.csv) or W&B CSV")
    ],
    out: Annotated[Path, typer.Option("--out", help="runs table to write (.parquet)")],
    weights: Annotated[
        str | None, typer.Option("--weights", help="W&B: weight column pattern, '*' = domain (e.g. 'mix.*')")
    ] = None,
    target: Annotated[
        list[str] | None, typer.Option("--target", help="W&B: NAME=COLUMN for a loss; repeat for several")
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option("--column", help="W&B: NAME=COLUMN for other columns, e.g. N=config.params"),
    ] = None,
    run_column: Annotated[str | None, typer.Option("--run-column", help="W&B: run id column")] = None,
) -> None:
    """Write a runs table (`run`, `h_<domain>`, targets) from an Olmix swarm or a W&B export."""
    from mixer.files import write_parquet
    from mixer.runs import is_olmix_swarm, read_olmix_swarm, read_wandb_csv

    if weights is not None:
        if not target:
            raise ValueError("a W&B export needs at least one --target NAME=COLUMN")
        frame = read_wandb_csv(
            source, weights, parse_pairs(target, "--target"), parse_pairs(column, "--column"), run_column
        )
        kind = "wandb"
    elif is_olmix_swarm(source):
        frame, kind = read_olmix_swarm(source), "olmix"
    else:
        raise ValueError(
            f"{source}: not an Olmix swarm (no ratios.csv + metrics.csv); for a W&B CSV give --weights"
        )
    write_parquet(out, frame)
    domains = [c for c in frame.columns if str(c).startswith("h_")]
    info(f"wrote {len(frame)} runs over {len(domains)} domains to {out}")
    emit(
        {
            "out": str(out),
            "format": kind,
            "runs": len(frame),
            "domains": len(domains),
            "unmatched_runs": int(frame.attrs.get("unmatched_runs", 0)),
            "columns": [c for c in frame.columns if c not in domains],
        }
    )


def register(app: typer.Typer) -> None:
    app.command("priors")(priors)
    app.add_typer(runs_group, name="runs")
