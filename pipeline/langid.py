"""Language identification: the `language` and `language_score` columns, and `--languages` to keep
only some languages (a document in another one gets `drop_reason = "lang:<code>"`).

Models install with a package, nothing is downloaded at run time:
- `lingua` (default): lingua-language-detector, all 75 languages, low-accuracy mode (trigram
  models, loaded lazily in milliseconds). On the gettext sample of `pipeline.locales` it was as
  accurate as its high-accuracy mode, which takes about a minute and a GB to load;
- `lingua-high`: lingua's high-accuracy mode (better on texts of a few words);
- `langid`: langid.py (97 languages, normalised probabilities);
- a path to a fastText language-ID model (`lid.176.bin`, or GlotLID's `model.bin`, whose codes are
  like `eng_Latn`: give `--languages` in the model's own codes).
Codes are ISO 639-1 ("en", "de") for lingua and langid; "und" when nothing is detected. Only the
first `max_chars` (1,000) characters are looked at: identification cost grows with length, and
language ID is the slowest stage (see docs/selection-stages.md); a few hundred characters decide
the language (all 16 languages of the gettext sample at 300 characters, 100% with lingua).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipeline import schema as S
from pipeline.stages import merge_reasons, pending

BACKENDS = ("lingua", "lingua-high", "langid")
UNDETERMINED = "und"


@dataclass(frozen=True)
class LanguageOptions:
    """`languages` to keep (empty: annotate only); `model` a backend name or a fastText model path."""

    languages: tuple[str, ...] = ()
    model: str = "lingua"
    max_chars: int = 1000


class LanguageIdentifier:
    """`identify(texts)` -> (codes, confidences) with the chosen model, loaded once in `setup()`."""

    def __init__(self, model: str = "lingua", max_chars: int = 1000) -> None:
        self.model = model
        self.max_chars = max_chars
        self.detector_: Any = None

    def setup(self) -> LanguageIdentifier:
        if self.detector_ is not None:
            return self
        if self.model in ("lingua", "lingua-high"):
            from lingua import LanguageDetectorBuilder

            builder = LanguageDetectorBuilder.from_all_languages()
            if self.model == "lingua":
                builder = builder.with_low_accuracy_mode()
            self.detector_ = builder.build()
        elif self.model == "langid":
            from langid.langid import LanguageIdentifier as LangId
            from langid.langid import model

            self.detector_ = LangId.from_modelstring(model, norm_probs=True)
        else:
            from pipeline.remote import local_copy
            from scorers.fasttext import _fasttext

            self.detector_ = _fasttext().load_model(local_copy(self.model))
        return self

    def identify(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The most likely language of each text and its confidence in [0, 1]."""
        self.setup()
        cut = [" ".join(t[: self.max_chars].split()) for t in texts]
        if self.model in ("lingua", "lingua-high"):
            results = self.detector_.compute_language_confidence_values_in_parallel(cut)
            codes = [r[0].language.iso_code_639_1.name.lower() if r else UNDETERMINED for r in results]
            scores = [r[0].value if r else 0.0 for r in results]
        elif self.model == "langid":
            pairs = [self.detector_.classify(t) for t in cut]
            codes = [c for c, _ in pairs]
            scores = [p for _, p in pairs]
        else:
            labels, probs = self.detector_.predict(cut, k=1)
            codes = [lab[0].removeprefix("__label__") if lab else UNDETERMINED for lab in labels]
            scores = [p[0] if len(p) else 0.0 for p in probs]
        return codes, np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)


class _LanguageFn(beam.DoFn):
    def __init__(self, opts: LanguageOptions) -> None:
        self._opts = opts
        self._identifier: LanguageIdentifier | None = None

    def setup(self) -> None:
        self._identifier = LanguageIdentifier(self._opts.model, self._opts.max_chars).setup()

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        assert self._identifier is not None  # built in setup
        codes, scores = self._identifier.identify(batch.column(S.TEXT).to_pylist())
        out = batch.append_column(S.LANGUAGE, pa.array(codes, pa.string()))
        out = out.append_column(S.LANGUAGE_SCORE, pa.array(scores, pa.float64()))
        keep = set(self._opts.languages)
        if keep:
            todo = pending(batch)
            reasons = [
                None if (c in keep or not go) else f"lang:{c}" for c, go in zip(codes, todo, strict=True)
            ]
            out = merge_reasons(out, reasons)
        yield out


class IdentifyLanguage(beam.PTransform):
    """Record batches -> the same with `language`, `language_score` (and `drop_reason` with --languages)."""

    def __init__(self, opts: LanguageOptions) -> None:
        super().__init__()
        self._opts = opts

    def expand(self, batches):
        return batches | "Detect" >> beam.ParDo(_LanguageFn(self._opts))


def check_model(model: str) -> None:
    """Fail at submission for an unknown backend name or a missing model file."""
    from pathlib import Path

    if model in BACKENDS or "://" in model:
        return
    if not Path(model).is_file():
        raise FileNotFoundError(
            f"{model}: no such language-ID model file (or give a backend: {', '.join(BACKENDS)})"
        )
