"""A small multilingual sample with known languages, built from the translated message catalogs
(`*.mo`, GNU gettext) that an install ships under `/usr/share/locale` and in site-packages.

The translations of one catalog are the same sentences in many languages, so accuracy per
language compares like with like; English comes from the catalogs' source strings (msgid).
Catalogs are read in sorted order, so the same install gives the same sample on every run.
Used to measure language-ID libraries (`bench/stages_bench.py`, `tests/test_langid.py`).
"""

from __future__ import annotations

import gettext
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

DEFAULT_ROOTS = ("/usr/share/locale", sysconfig.get_paths()["purelib"])
_PLACEHOLDER = re.compile(r"%[-+ #0-9.]*[a-zA-Z]|\{[^}]*\}|\$\w+|<[^>]*>|&\w+;|\\[nt]|[_&](?=\w)")
_LETTERS = re.compile(r"[^\W\d_]{3,}")


def _catalogs(roots: tuple[str, ...], locale: str) -> Iterator[Path]:
    for root in roots:
        base = Path(root)
        if base.is_dir():
            yield from sorted(base.glob(f"**/{locale}/LC_MESSAGES/*.mo"))


def _clean(message: str) -> str | None:
    """A translated message as prose: placeholders and markup removed; None when little text is left."""
    text = " ".join(_PLACEHOLDER.sub(" ", message).split())
    return text if len(_LETTERS.findall(text)) >= 4 else None


def catalog_messages(path: Path, source: bool = False) -> list[str]:
    """The messages of one `.mo` file (its msgids when `source`), cleaned, in the file's order."""
    try:
        with open(path, "rb") as fh:
            catalog = gettext.GNUTranslations(fh)
    except Exception:  # noqa: BLE001 - a catalog the gettext module cannot parse is skipped
        return []
    messages = catalog._catalog  # type: ignore[attr-defined]  # gettext has no public API for this
    items = sorted(messages.items(), key=lambda kv: str(kv[0]))
    out = []
    for msgid, msgstr in items:
        if not isinstance(msgid, str) or not msgid:
            continue
        cleaned = _clean(msgid if source else msgstr)
        if cleaned and (source or msgstr != msgid):
            out.append(cleaned)
    return out


def locale_documents(
    locale: str,
    n_docs: int,
    doc_chars: int = 300,
    roots: tuple[str, ...] = DEFAULT_ROOTS,
    source_locale: str = "de",
) -> list[str]:
    """Up to `n_docs` documents of about `doc_chars` characters in `locale` (e.g. "fr", "pt_BR").

    "en" takes the source strings of the `source_locale` catalogs (gettext's msgids are English)."""
    english = locale == "en"
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for path in _catalogs(roots, source_locale if english else locale):
        for message in catalog_messages(path, source=english):
            current.append(message)
            size += len(message) + 1
            if size >= doc_chars:
                docs.append(" ".join(current))
                current, size = [], 0
                if len(docs) >= n_docs:
                    return docs
    return docs


def multilingual_sample(
    locales: tuple[str, ...], n_docs: int, doc_chars: int = 300, roots: tuple[str, ...] = DEFAULT_ROOTS
) -> list[tuple[str, str]]:
    """(ISO 639-1 code, text) pairs, up to `n_docs` per locale; a locale with no catalogs gives none."""
    out = []
    for locale in locales:
        code = locale.split("_")[0].lower()
        out += [(code, text) for text in locale_documents(locale, n_docs, doc_chars, roots)]
    return out
