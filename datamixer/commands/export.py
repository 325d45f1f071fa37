"""`datamixer export` (a mixture in a trainer's format) and `datamixer budget` (epochs per domain)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from datamixer.commands._common import emit, info, stderr
from datamixer.options import MixtureFile

# Literals, not imports from mixer (which loads pandas), so `datamixer --help` stays fast;
# tests/test_export.py checks them against mixer.exports and mixer.budget.
FORMATS = ("megatron", "hf", "olmo", "olmix", "json", "yaml")
DEFAULT_DIGITS = 6
DEFAULT_MAX_EPOCHS = 4.0
FORMAT_HELP = "One of: " + ", ".join(FORMATS) + "."


def export(
    mixture: MixtureFile,
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)],
    paths: Annotated[
        Path | None,
        typer.Option("--paths", help="YAML/JSON domain -> dataset prefix or paths (megatron, hf, olmo)."),
    ] = None,
    tokens: Annotated[
        str | None,
        typer.Option("--tokens", help="Planned tokens, e.g. 100B (olmo: requested_tokens; hf, olmix)."),
    ] = None,
    max_repetition: Annotated[
        float | None,
        typer.Option("--max-repetition", help="olmo: max_repetition_ratio, olmix: repetition_factor (4)."),
    ] = None,
    stats: Annotated[
        Path | None,
        typer.Option("--stats", help="olmix: tokens available per domain (per-domain repetition factors)."),
    ] = None,
    digits: Annotated[int, typer.Option("--digits", help="Decimals per weight.")] = DEFAULT_DIGITS,
    out: Annotated[Path | None, typer.Option("--out", help="Write the export here (else stdout).")] = None,
) -> None:
    """Write a mixture in the format a trainer reads: megatron, hf, olmo, olmix, json or yaml."""
    from mixer import budget as budget_lib
    from mixer import exports
    from mixer.files import write_text
    from mixer.mixture import read_mixture

    weights = read_mixture(mixture)
    text = exports.export_text(
        weights,
        format,
        paths=None if paths is None else exports.read_paths(paths),
        tokens=None if tokens is None else budget_lib.parse_tokens(tokens),
        max_repetition=max_repetition,
        available=None if stats is None else budget_lib.read_domain_stats(stats),
        digits=digits,
    )
    if out is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        write_text(out, text)
        info(f"wrote {format} export of {len(weights)} domains to {out}")
    emit({"format": format, "domains": len(weights), "out": None if out is None else str(out)})


def budget(
    mixture: MixtureFile,
    stats: Annotated[Path, typer.Option("--stats", help="domain_stats.parquet from `datamixer score`.")],
    tokens: Annotated[str, typer.Option("--tokens", help="Planned training tokens: 1e9, 300M, 100B.")],
    max_epochs: Annotated[
        float, typer.Option("--max-epochs", help="Repetition limit per domain.")
    ] = DEFAULT_MAX_EPOCHS,
    strict: Annotated[bool, typer.Option("--strict", help="Fail (exit 1) past the limit.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write the per-domain table (Parquet).")] = None,
) -> None:
    """Tokens and epochs per domain for a planned run; warn past --max-epochs (fail with --strict)."""
    from mixer import budget as budget_lib
    from mixer.files import write_parquet
    from mixer.mixture import read_mixture

    report = budget_lib.budget_report(
        read_mixture(mixture),
        budget_lib.read_domain_stats(stats),
        budget_lib.parse_tokens(tokens),
        max_epochs,
    )
    _print_table(report)
    if out is not None:
        write_parquet(out, report.table)
    if report.over_limit:
        if strict:
            raise ValueError(report.message())
        stderr.print(f"warning: {report.message()}", soft_wrap=True, highlight=False)
    emit({**report.to_dict(), "ok": not report.over_limit, "out": None if out is None else str(out)})


def _print_table(report: Any) -> None:
    from rich.table import Table

    table = Table("domain", "weight", "tokens planned", "tokens kept", "epochs", "cap", "")
    for row in report.table.itertuples():
        table.add_row(
            row.domain,
            f"{row.weight:.4f}",
            f"{row.tokens_planned:.4g}",
            f"{row.tokens_available:.4g}",
            f"{row.epochs:.2f}",
            f"{row.cap:.4f}",
            "OVER LIMIT" if row.over_limit else "",
        )
    stderr.print(table)


def register(app: typer.Typer) -> None:
    """Add `export` and `budget` as top-level commands."""
    app.command("export")(export)
    app.command("budget")(budget)
