"""`datamixer corpus build`: a small multi-domain corpus of real text from the local Python install."""

from __future__ import annotations

from typing import Annotated

import typer

from datamixer.commands._common import emit, info
from datamixer.options import OutDir

corpus_app = typer.Typer(
    help="Build a local multi-domain text corpus (code, prose, legal).", no_args_is_help=True
)


@corpus_app.command("build")
def build(
    out: OutDir,
    max_mb: Annotated[
        float, typer.Option("--max-mb", help="Text per domain, in MB (legal has about 1 MB).")
    ] = 3.0,
    max_doc_chars: Annotated[
        int, typer.Option("--max-doc-chars", help="Longest document, in characters.")
    ] = 4000,
    domain: Annotated[
        list[str] | None, typer.Option("--domain", help="Domains to build (default: code, prose, legal).")
    ] = None,
) -> None:
    """Write <out>/<domain>.jsonl ({id, text, source} per line) and manifest.json, deterministically."""
    from pipeline.corpus import DOMAINS, CorpusOptions, build_corpus

    if max_mb <= 0:
        raise ValueError(f"--max-mb must be positive; got {max_mb}")
    opts = CorpusOptions(max_bytes_per_domain=int(max_mb * 1e6), max_doc_chars=max_doc_chars)
    summary = build_corpus(out, opts, domain or DOMAINS)
    for name, row in summary.items():
        info(f"{name}: {row['docs']} documents, {row['chars']:,} characters")
    emit(
        {
            "out": str(out),
            "domains": summary,
            "docs": sum(r["docs"] for r in summary.values()),
            "bytes": sum(r["bytes"] for r in summary.values()),
        }
    )


def register(app: typer.Typer) -> None:
    app.add_typer(corpus_app, name="corpus")
