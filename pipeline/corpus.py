"""A small multi-domain corpus of real text built from what every Python install has.

- `code`:  Python standard-library source (tests excluded),
- `prose`: package descriptions (dist-info METADATA), reStructuredText/Markdown docs of
           installed packages, and standard-library docstrings,
- `legal`: licence texts of the interpreter and of installed packages (exact duplicates removed).

Files are visited in sorted order and cut into documents at blank lines, so the same install
gives byte-identical JSONL on every run. Nothing here is committed to the repository.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

DOMAINS = ("code", "prose", "legal")
_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages", "testing"}
_LICENCE_NAME = re.compile(r"^(licen[cs]e|copying|notice|copyright)", re.IGNORECASE)


@dataclass(frozen=True)
class CorpusOptions:
    max_bytes_per_domain: int = 3_000_000
    max_doc_chars: int = 4000
    min_doc_chars: int = 200


def _walk(root: Path, keep: Callable[[Path], bool], skip_dirs: set[str] = _SKIP_DIRS) -> Iterator[Path]:
    """Files under `root` in sorted order (directories sorted in place, so the walk is deterministic)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs and not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if keep(path):
                yield path


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def split_documents(text: str, max_chars: int, min_chars: int) -> list[str]:
    """Cut text at blank lines into documents of at most `max_chars` (a longer paragraph is cut
    hard); pieces shorter than `min_chars` are merged forward or dropped at the end."""
    docs: list[str] = []
    current = ""
    for para in re.split(r"\n\s*\n", text.strip()):
        para = para.strip("\n")
        while len(para) > max_chars:
            if current:
                docs.append(current)
                current = ""
            docs.append(para[:max_chars])
            para = para[max_chars:]
        if current and len(current) + 2 + len(para) > max_chars:
            docs.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
    if current:
        docs.append(current)
    return [d for d in docs if len(d.strip()) >= min_chars]


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _site_packages() -> list[Path]:
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return [Path(p) for p in sorted(paths) if Path(p).is_dir()]


def code_texts() -> Iterator[tuple[str, str]]:
    """(source, text) of standard-library modules."""
    root = _stdlib()
    for path in _walk(root, lambda p: p.suffix == ".py"):
        text = _read(path)
        if text:
            yield f"stdlib/{path.relative_to(root)}", text


def _metadata_description(text: str) -> str:
    """The long description of a dist-info METADATA file (the body after the header block)."""
    head, _, body = text.partition("\n\n")
    return body


def _docstrings(text: str) -> list[str]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    nodes = (n for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)))
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def prose_texts() -> Iterator[tuple[str, str]]:
    """(source, text) of package descriptions, package docs and standard-library docstrings."""
    for site in _site_packages():
        for path in _walk(site, lambda p: p.name == "METADATA" and p.parent.name.endswith(".dist-info")):
            body = _metadata_description(_read(path) or "")
            if body.strip():
                yield f"site-packages/{path.relative_to(site)}", body
    for site in _site_packages():
        for path in _walk(site, lambda p: p.suffix in (".rst", ".md") and not _LICENCE_NAME.match(p.name)):
            text = _read(path)
            if text:
                yield f"site-packages/{path.relative_to(site)}", text
    root = _stdlib()
    for path in _walk(root, lambda p: p.suffix == ".py"):
        docs = _docstrings(_read(path) or "")
        if docs:
            yield f"stdlib/{path.relative_to(root)}#docstrings", "\n\n".join(docs)


def legal_texts() -> Iterator[tuple[str, str]]:
    """(source, text) of licence files, each distinct text once."""
    seen: set[str] = set()
    candidates: list[tuple[str, Path]] = []
    root = _stdlib()
    candidates += [(f"stdlib/{p.name}", p) for p in sorted(root.glob("LICENSE*"))]
    for site in _site_packages():
        candidates += [
            (f"site-packages/{p.relative_to(site)}", p)
            for p in _walk(site, lambda p: bool(_LICENCE_NAME.match(p.name)), _SKIP_DIRS - {"site-packages"})
        ]
    for source, path in candidates:
        text = _read(path)
        if not text:
            continue
        digest = hashlib.sha1(" ".join(text.split()).encode()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            yield source, text


SOURCES: dict[str, Callable[[], Iterable[tuple[str, str]]]] = {
    "code": code_texts,
    "prose": prose_texts,
    "legal": legal_texts,
}


def domain_records(domain: str, opts: CorpusOptions) -> Iterator[dict[str, str]]:
    """JSONL records {id, text, source} of one domain, up to `max_bytes_per_domain` of text."""
    total = 0
    n = 0
    for source, text in SOURCES[domain]():
        for doc in split_documents(text, opts.max_doc_chars, opts.min_doc_chars):
            size = len(doc.encode("utf-8"))
            if total + size > opts.max_bytes_per_domain:
                return
            total += size
            n += 1
            yield {"id": f"{domain}-{n:06d}", "text": doc, "source": source}


def build_corpus(
    out: str | os.PathLike[str], opts: CorpusOptions | None = None, domains: Iterable[str] = DOMAINS
) -> dict[str, dict[str, int]]:
    """Write `<out>/<domain>.jsonl` per domain and `manifest.json`; the directory is replaced atomically."""
    from mixer.files import atomic_path

    opts = opts or CorpusOptions()
    summary: dict[str, dict[str, int]] = {}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for domain in domains:
            if domain not in SOURCES:
                raise ValueError(f"unknown corpus domain {domain!r}; known: {list(SOURCES)}")
            docs = chars = 0
            with open(tmp / f"{domain}.jsonl", "w", encoding="utf-8") as fh:
                for record in domain_records(domain, opts):
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                    docs += 1
                    chars += len(record["text"])
            summary[domain] = {
                "docs": docs,
                "chars": chars,
                "bytes": (tmp / f"{domain}.jsonl").stat().st_size,
            }
        (tmp / "manifest.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
