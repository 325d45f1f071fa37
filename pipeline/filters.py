"""Heuristic quality filters: Gopher quality, Gopher repetition (Rae et al. 2021, table A1) and C4
(Raffel et al. 2020), with the published thresholds as defaults, as datatrove implements them.

Each rule is a threshold in a small dataclass; `None` (or `false`) switches that rule off. A
dropped document records the first rule it failed as `drop_reason`, e.g. `gopher:mean_word_length`,
`gopher:dup_line_frac`, `c4:lorem_ipsum`. Differences from datatrove, for speed without NLTK:
words are `\\w+` runs and punctuation runs (close to NLTK's `word_tokenize` on English), except
in the alphabetic-words rule, which counts whitespace-separated words as the paper words it (with
NLTK's tokens every bracket and quote is a word without letters, and reference prose with code
names fails it); C4 counts sentences with a regex instead of punkt. C4 keeps the document's text
as it is (no lines are removed); its line rules only decide which lines count towards
`min_num_sentences`. The C4 bad-words list is not applied (it would be downloaded at run time).

Configure with `--filters gopher,c4` (`gopher` = quality + repetition; `gopher_quality`,
`gopher_repetition` and `c4` alone) or a YAML mapping each filter to its thresholds:

    gopher_quality: {min_doc_words: 50, max_symbol_word_ratio: null}
    c4: {}
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa

from pipeline import schema as S
from pipeline.stages import merge_reasons, pending

_WORDS = re.compile(r"\w+|[^\w\s]+")
_PUNCT_ONLY = re.compile(r"^[^\w]+$")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_END_PUNCTUATION = (".", "?", "!", '"', "'")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


def words_of(text: str) -> list[str]:
    """Words and punctuation runs, in order."""
    return _WORDS.findall(text)


@dataclass(frozen=True)
class GopherQuality:
    """Gopher's quality rules (datatrove's GopherQualityFilter defaults)."""

    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: tuple[str, ...] = STOP_WORDS

    name = "gopher"

    def check(self, text: str) -> str | None:
        """The failed rule's name, or None when the text passes."""
        words = words_of(text)
        n_words = max(1, len(words))
        real = [w for w in words if not _PUNCT_ONLY.match(w)]
        if self.min_doc_words is not None and len(real) < self.min_doc_words:
            return "doc_words"
        if self.max_doc_words is not None and len(real) > self.max_doc_words:
            return "doc_words"
        mean = sum(map(len, real)) / max(1, len(real))
        if (self.min_avg_word_length is not None and mean < self.min_avg_word_length) or (
            self.max_avg_word_length is not None and mean > self.max_avg_word_length
        ):
            return "mean_word_length"
        if self.max_symbol_word_ratio is not None and (
            text.count("#") / n_words > self.max_symbol_word_ratio
            or (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio
        ):
            return "symbol_word_ratio"
        lines = text.splitlines() or [text]
        if self.max_bullet_lines_ratio is not None:
            bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
            if bullets / len(lines) > self.max_bullet_lines_ratio:
                return "bullet_lines"
        if self.max_ellipsis_lines_ratio is not None:
            ellipsis = sum(line.rstrip().endswith(("...", "…")) for line in lines)
            if ellipsis / len(lines) > self.max_ellipsis_lines_ratio:
                return "ellipsis_lines"
        if self.max_non_alpha_words_ratio is not None:
            spaced = text.split()  # the paper's words: `"TypeError").` is one word, with letters
            alpha = sum(any(c.isalpha() for c in w) for w in spaced)
            if alpha / max(1, len(spaced)) < self.max_non_alpha_words_ratio:
                return "alpha_words"
        if self.min_stop_words is not None:
            stops = set(self.stop_words)
            if sum(w in stops for w in words) < self.min_stop_words:
                return "stop_words"
        return None


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(repeated elements, their characters): every occurrence after an element's first."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _top_ngram_chars(words: list[str], n: int) -> int:
    grams = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count


def _duplicate_ngram_chars(words: list[str], n: int) -> int:
    """Characters in n-grams that repeat an earlier one (non-overlapping after a repeat), as datatrove."""
    seen: set[str] = set()
    chars = i = 0
    while i < len(words) - n + 1:
        gram = "".join(words[i : i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


@dataclass(frozen=True)
class GopherRepetition:
    """Gopher's repetition rules (table A1), datatrove's GopherRepetitionFilter defaults."""

    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: dict[int, float] = field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    dup_n_grams: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )

    name = "gopher"

    def check(self, text: str) -> str | None:
        size = max(1, len(text))
        paragraphs = re.split(r"\n{2,}", text.strip())
        count, chars = _duplicates(paragraphs)
        if self.dup_para_frac is not None and count / len(paragraphs) > self.dup_para_frac:
            return "dup_para_frac"
        if self.dup_para_char_frac is not None and chars / size > self.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = re.split(r"\n+", text)
        count, chars = _duplicates(lines)
        if self.dup_line_frac is not None and count / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if self.dup_line_char_frac is not None and chars / size > self.dup_line_char_frac:
            return "dup_line_char_frac"
        words = words_of(text)
        for n, limit in sorted((self.top_n_grams or {}).items()):
            if limit is not None and _top_ngram_chars(words, int(n)) / size > limit:
                return f"top_{n}_gram"
        for n, limit in sorted((self.dup_n_grams or {}).items()):
            if limit is not None and _duplicate_ngram_chars(words, int(n)) / size > limit:
                return f"dup_{n}_gram"
        return None


@dataclass(frozen=True)
class C4:
    """C4's document rules (datatrove's C4QualityFilter defaults, lines split at newlines)."""

    min_num_sentences: int | None = 5
    min_words_per_line: int | None = 3
    max_word_length: int | None = 1000
    filter_no_terminal_punct: bool = True
    remove_citations: bool = True
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True

    name = "c4"

    def _counts(self, line: str) -> bool:
        """Whether a line survives C4's line rules (and so counts towards the sentences)."""
        words = line.split()
        if self.max_word_length is not None and any(len(w) > self.max_word_length for w in words):
            return False
        if self.filter_no_terminal_punct and (not line.endswith(_END_PUNCTUATION) or line.endswith("...")):
            return False
        if self.min_words_per_line is not None and len(words) < self.min_words_per_line:
            return False
        lower = line.lower()
        if self.filter_javascript and "javascript" in lower:
            return False
        return not (self.filter_policy and any(p in lower for p in _POLICY))

    def check(self, text: str) -> str | None:
        sentences = 0
        for raw in text.splitlines():
            line = raw.strip()
            if self.remove_citations:
                line = _CITATION.sub("", line)
            if not self._counts(line):
                continue
            if self.filter_lorem_ipsum and "lorem ipsum" in line.lower():
                return "lorem_ipsum"
            if self.filter_curly_bracket and "{" in line:
                return "curly_bracket"
            sentences += max(1, len(_SENTENCE_END.findall(line)))
        if self.min_num_sentences is not None and sentences < self.min_num_sentences:
            return "too_few_sentences"
        return None


FILTERS: dict[str, type] = {"gopher_quality": GopherQuality, "gopher_repetition": GopherRepetition, "c4": C4}
ALIASES = {"gopher": ("gopher_quality", "gopher_repetition")}


def _build(name: str, params: dict[str, Any] | None) -> Any:
    cls = FILTERS[name]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params or {}) - known)
    if unknown:
        raise ValueError(f"filter {name!r} has no setting(s) {unknown}; its settings: {sorted(known)}")
    base = cls()
    params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in (params or {}).items()}
    return replace(base, **params)


def parse_filters(spec: str | None) -> tuple[Any, ...]:
    """Filters from "gopher,c4" (names) or a YAML file path (name -> settings); None or "" -> none."""
    if not spec:
        return ()
    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        import yaml

        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: no such filters YAML")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{spec}: expected a mapping of filter name -> settings")
        entries = list(data.items())
    else:
        entries = [(name.strip(), None) for name in spec.split(",") if name.strip()]
    out = []
    for name, params in entries:
        for real in ALIASES.get(name, (name,)):
            if real not in FILTERS:
                raise ValueError(f"unknown filter {name!r}; known: {sorted([*FILTERS, *ALIASES])}")
            out.append(_build(real, params))
    return tuple(out)


def first_failure(filters: tuple[Any, ...], text: str) -> str | None:
    """`<filter>:<rule>` of the first rule the text fails, or None."""
    for flt in filters:
        rule = flt.check(text)
        if rule is not None:
            return f"{flt.name}:{rule}"
    return None


class _FilterFn(beam.DoFn):
    def __init__(self, filters: tuple[Any, ...]) -> None:
        self._filters = filters

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        texts = batch.column(S.TEXT).to_pylist()
        todo = pending(batch)
        reasons = [first_failure(self._filters, t) if go else None for t, go in zip(texts, todo, strict=True)]
        yield merge_reasons(batch, reasons)


class ApplyFilters(beam.PTransform):
    """Record batches -> the same batches with `drop_reason` set for documents failing a rule."""

    def __init__(self, filters: tuple[Any, ...]) -> None:
        super().__init__()
        self._filters = filters

    def expand(self, batches):
        return batches | "Rules" >> beam.ParDo(_FilterFn(self._filters))
