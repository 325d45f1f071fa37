"""A small real-text score output for tests and benchmarks, built from the Python install.

Three domains that a tiny LM tells apart: `code` (standard-library source with docstrings
removed), `docstrings` (the docstrings of those modules) and `reference` (the language
reference topics in `pydoc_data`). Written as `scored-00000-of-00001.parquet` with the columns
of `pipeline.schema.scored_schema`.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema

MODULES = (
    "argparse",
    "ast",
    "calendar",
    "collections/__init__",
    "configparser",
    "csv",
    "dataclasses",
    "difflib",
    "enum",
    "fractions",
    "functools",
    "gettext",
    "heapq",
    "inspect",
    "ipaddress",
    "logging/__init__",
    "mailbox",
    "pathlib",
    "pickle",
    "pprint",
    "random",
    "shutil",
    "statistics",
    "string",
    "tarfile",
    "textwrap",
    "threading",
    "typing",
    "zipfile",
    "datetime",
)


def _strip_docstrings(tree: ast.AST) -> tuple[str, list[str]]:
    docs: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                docs.append(body[0].value.value.strip())
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree), docs


def _chunks(text: str, size: int) -> list[str]:
    lines, out, current = text.splitlines(keepends=True), [], ""
    for line in lines:
        current += line
        if len(current) >= size:
            out.append(current)
            current = ""
    if current.strip():
        out.append(current)
    return out


def stdlib_documents(doc_chars: int = 1500, max_docs: int | None = None) -> dict[str, list[str]]:
    """Domain -> documents of about `doc_chars` characters, deterministic for a Python install."""
    import pydoc_data.topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code: list[str] = []
    docstrings: list[str] = []
    for name in MODULES:
        path = stdlib / f"{name}.py"
        if not path.exists():
            continue
        source, docs = _strip_docstrings(ast.parse(path.read_text(encoding="utf-8")))
        code.extend(_chunks(source, doc_chars))
        docstrings.extend(_chunks("\n\n".join(d for d in docs if len(d) > 40), doc_chars))
    topics = pydoc_data.topics.topics
    reference = [c for key in sorted(topics) for c in _chunks(topics[key], doc_chars)]
    out = {"code": code, "docstrings": docstrings, "reference": reference}
    return {d: docs[:max_docs] for d, docs in out.items()}


def write_stdlib_score_dir(
    out: str | os.PathLike[str], doc_chars: int = 1500, max_docs: int | None = None
) -> Path:
    """Write the corpus as a score output directory (every document kept) and return it."""
    from mixer.files import atomic_path

    rows: dict[str, list] = {c: [] for c in schema.scored_schema([]).names}
    for domain, docs in stdlib_documents(doc_chars, max_docs).items():
        for i, text in enumerate(docs):
            rows[schema.ID].append(f"{domain}-{i:05d}")
            rows[schema.DOMAIN].append(domain)
            rows[schema.SOURCE].append("python-stdlib")
            rows[schema.N_CHARS].append(len(text))
            rows[schema.N_TOKENS].append(len(text.split()))
            rows[schema.KEEP].append(True)
            rows[schema.TEXT].append(text)
    n = len(rows[schema.ID])
    rows = {c: values or [None] * n for c, values in rows.items()}  # stage columns: nothing dropped
    table = pa.table(rows, schema=schema.scored_schema([]))
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    with atomic_path(target / f"{schema.SCORED_PREFIX}-00000-of-00001.parquet") as tmp:
        pq.write_table(table, tmp)
    return target
