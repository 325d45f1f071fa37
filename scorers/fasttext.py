"""fastText quality classifier: training as DCLM and PreSelect do, and batch scoring.

The same normalisation (newlines to spaces) is applied in training and in prediction, so a
model trained here and DCLM's released classifier are scored identically. No Beam here: the
pipeline wraps `FastTextScorer` (a small `setup`/`score_batch` class) in a DoFn.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scorers.fasttext_linear import LABEL_ESCAPE, LABEL_PREFIX, LinearFastText, linear_support

HQ_LABEL = "__label__hq"
LQ_LABEL = "__label__lq"

# DCLM/PreSelect-style supervised classifier (word bigrams, softmax over hq/lq), sized so the model
# is ~50 MB rather than fastText's default 2M-bucket ~2 GB; one thread keeps training deterministic.
# The "dclm" preset trains with exactly these; the default "auto" searches epoch/lr/wordNgrams.
DEFAULT_TRAIN_PARAMS: dict[str, Any] = {
    "dim": 64,
    "epoch": 5,
    "lr": 0.1,
    "wordNgrams": 2,
    "bucket": 200_000,
    "minCount": 1,
    "loss": "softmax",
    "thread": 1,
    "verbose": 0,
}


PRESETS = ("auto", "dclm")
# The "auto" search: (epoch, lr) pairs from DCLM's schedule to a long, hot one, times word n-gram
# lengths; 6 seeded fits on a validation split of (at most SEARCH_MAX_WORDS words of) the training
# documents. Words seen fewer than 3 times are dropped: on prose vs the same words shuffled, rare
# words (each in one document and its shuffle) let a hot schedule memorise (held-out AUC 0.92 with
# minCount 1, 0.99 with 3, measured).
AUTO_PARAMS: dict[str, Any] = {"minCount": 3}
SEARCH_EPOCH_LR: tuple[tuple[int, float], ...] = ((5, 0.1), (25, 0.5), (50, 1.0))
SEARCH_WORD_NGRAMS: tuple[int, ...] = (1, 2)
SEARCH_VALIDATION = 0.2
SEARCH_MAX_WORDS = 1_000_000
LOW_AUC = 0.7


def search_candidates(fixed: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings the "auto" preset tries; a setting given by the caller is held at its value."""
    pairs = SEARCH_EPOCH_LR
    if "epoch" in fixed or "lr" in fixed:
        pairs = tuple(dict.fromkeys((fixed.get("epoch", e), fixed.get("lr", lr)) for e, lr in pairs))
    ngrams = (fixed["wordNgrams"],) if "wordNgrams" in fixed else SEARCH_WORD_NGRAMS
    return [{"epoch": e, "lr": lr, "wordNgrams": n} for e, lr in pairs for n in ngrams]


def normalize(text: str) -> str:
    """fastText reads one line per example: newlines become spaces (DCLM's preprocessing), and a
    literal `__label__` inside the text is escaped so fastText does not read it as a label."""
    return text.replace("\n", " ").replace(LABEL_PREFIX, LABEL_ESCAPE)


FASTTEXT_MAGIC = 793712314
FASTTEXT_VERSIONS = (11, 12)


def check_model_file(path: Path) -> None:
    """Refuse a file that is not a whole fastText `.bin` before fastText reads it (a corrupt header
    or a truncated file otherwise costs minutes and gigabytes before failing).

    Reads the header, the dictionary counts and the output matrix at the end of the file, whose place
    the header fixes: O(1) whatever the model size. A quantized `.ftz` model (its output matrix may be
    quantized too) gets the header checks only."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(92)
        if len(head) < 92:
            raise ValueError(f"{path}: not a fastText model (only {size} bytes)")
        magic, version = struct.unpack("<ii", head[:8])
        if magic != FASTTEXT_MAGIC or version not in FASTTEXT_VERSIONS:
            raise ValueError(f"{path}: not a fastText .bin model (wrong header)")
        dim, *_rest, _t = struct.unpack("<12id", head[8:64])
        words, nwords, nlabels, _tokens, _prune = struct.unpack("<iiiqq", head[64:92])
        if not (0 < dim <= 100_000 and 0 <= nwords and 0 < nlabels and words == nwords + nlabels):
            raise ValueError(f"{path}: not a supervised fastText model (corrupt header: dim={dim})")
        tail = 16 + 4 * nlabels * dim
        ok = size >= 92 + tail + 1
        if ok:
            fh.seek(size - tail - 1)
            block = fh.read(17)
            ok = block[0] == 0 and struct.unpack("<qq", block[1:]) == (nlabels, dim)
    if not ok and path.suffix.lower() != ".ftz":
        raise ValueError(f"{path}: fastText model is truncated or corrupt (its output matrix is missing)")


def _fasttext():
    import fasttext

    # fastText prints a deprecation warning on every load_model; it says nothing useful here.
    fasttext.FastText.eprint = lambda *args, **kwargs: None
    return fasttext


def load_model(path: str | os.PathLike[str]):
    """Load any supervised fastText `.bin` (ours or a released one such as DCLM's)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such fastText model file")
    check_model_file(path)
    model = _fasttext().load_model(str(path))
    check_labels(path, model.get_labels())
    return model


def model_labels(path: str | os.PathLike[str]) -> list[str]:
    """The labels of a fastText model, read from its dictionary without loading its matrices (a
    released classifier such as DCLM's is gigabytes; its dictionary is a small part of that)."""
    import struct

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such fastText model file")
    check_model_file(path)
    labels: list[str] = []
    with open(path, "rb") as fh:
        (entries,) = struct.unpack("<i", fh.read(92)[64:68])
        buf, pos = b"", 0
        for _ in range(entries):  # each entry: word, NUL, int64 count, int8 type (1: a label)
            end = buf.find(b"\0", pos)
            while end < 0 or end + 10 > len(buf):
                more = fh.read(1 << 20)
                if not more:
                    raise ValueError(f"{path}: fastText model is truncated (in its dictionary)")
                buf, pos = buf[pos:] + more, 0
                end = buf.find(b"\0")
            if buf[end + 9] == 1:
                labels.append(buf[pos:end].decode("utf-8", "replace"))
            pos = end + 10
    return check_labels(path, labels)


def check_labels(path: str | os.PathLike[str], labels: Sequence[str], label: str | None = None) -> list[str]:
    """`labels` if they are a supervised classifier's (and hold `label`), else a clear error."""
    labels = [str(x) for x in labels]
    if not labels or not labels[0].startswith("__label__"):
        raise ValueError(f"{path}: not a supervised fastText classifier (it has no labels)")
    if label is not None and label not in labels:
        raise ValueError(f"{path}: label {label!r} is not one of the model's labels {labels}")
    return labels


def prediction_lines(texts: Sequence[str] | Any) -> list[str]:
    """Texts as fastText reads them: newlines to spaces, one line each (with its terminating newline).

    `texts` is a list of str or an Arrow string array (Python's `str.replace` per text costs less
    than Arrow's replace kernels and the conversion after them)."""
    if hasattr(texts, "to_pylist"):
        texts = texts.to_pylist()
    return [normalize(t) + "\n" for t in texts]


def label_probabilities(model: Any, texts: Sequence[str] | Any, label: str) -> np.ndarray:
    """Probability of `label` for each text, clamped to [0, 1] (fastText can return 1.000003).

    `texts` is a list of str or an Arrow string array."""
    if not len(texts):
        return np.zeros(0, dtype=np.float64)
    lines = prediction_lines(texts)
    # The binding's list call takes the normalised lines as they are; `model.predict` (also any
    # stand-in model's) would check and copy each one.
    binding = getattr(getattr(model, "f", None), "multilinePredict", None)
    if binding is not None:
        labels, probs = binding(lines, -1, 0.0, "strict")
    else:
        labels, probs = model.predict([line[:-1] for line in lines], k=-1)
    out = [p[ls.index(label)] if label in ls else 0.0 for ls, p in zip(labels, probs, strict=True)]
    return np.clip(np.array(out, dtype=np.float64), 0.0, 1.0)


class FastTextScorer:
    """Scores a batch of texts with the probability of one label of a fastText classifier.

    `setup()` loads the model once (per worker) from a local path (the pipeline copies a remote one
    with `pipeline.remote.local_copy`); `score_batch(texts)` returns float64 scores. A model that
    `scorers.fasttext_linear.linear_support` accepts (no subwords, softmax/ova/ns loss, not quantized) is
    scored as a linear map (`LinearFastText`: the binding's scores, about twice as fast); others by the
    binding (`label_probabilities`). `path_` says which ("linear" or "binding"), `fallback_reason_` why.
    """

    accepts_arrow = True  # score_batch takes the Arrow text column as it is

    def __init__(self, model_path: str, label: str = HQ_LABEL) -> None:
        self.model_path = model_path
        self.label = label
        self.model_: Any = None
        self.linear_: Any = None
        self.path_: str | None = None
        self.fallback_reason_: str | None = None

    def setup(self) -> FastTextScorer:
        if self.model_ is None:
            model = load_model(self.model_path)
            check_labels(self.model_path, model.get_labels(), self.label)
            self.fallback_reason_ = linear_support(model)
            self.linear_ = LinearFastText(model, self.label) if self.fallback_reason_ is None else None
            self.path_ = "binding" if self.linear_ is None else "linear"
            self.model_ = model
        return self

    def check(self) -> None:
        """Refuse a bad model file or a missing label without loading the model (job submission)."""
        check_labels(self.model_path, model_labels(self.model_path), self.label)

    def score_batch(self, texts: Sequence[str] | Any) -> np.ndarray:
        """Scores of a list of str or of an Arrow string array (the pipeline passes the column)."""
        if self.model_ is None:
            self.setup()
        if self.linear_ is not None:
            return self.linear_.scores(texts)
        return label_probabilities(self.model_, texts, self.label)


@dataclass(frozen=True)
class ClassifierReport:
    """Held-out quality of a trained classifier."""

    n_train: int
    n_test: int
    precision: float
    recall: float
    auc: float
    accuracy: float

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


class FastTextQualityClassifier:
    """Trains a hq-vs-lq fastText classifier (scikit-learn style: params in __init__, fit returns self).

    `fit(positive, negative)` holds out `test_fraction` of each class (seeded) and stores the
    held-out precision/recall/AUC of the `positive_label` in `report_`; `model_` is the fastText model.
    With `preset="auto"` (default) epoch, lr and wordNgrams not given in `train_params` are chosen
    by held-out AUC on a validation split of the training documents (`search_`: each setting and its
    AUC), and the final model is trained on all training documents with the best (`params_`);
    `preset="dclm"` trains with DEFAULT_TRAIN_PARAMS as DCLM and PreSelect do ("auto" also drops
    words seen fewer than 3 times, AUTO_PARAMS). A held-out AUC below
    LOW_AUC warns.
    """

    def __init__(
        self,
        test_fraction: float = 0.1,
        seed: int = 0,
        positive_label: str = HQ_LABEL,
        negative_label: str = LQ_LABEL,
        preset: str = "auto",
        **train_params: Any,
    ) -> None:
        self.test_fraction = test_fraction
        self.seed = seed
        self.positive_label = positive_label
        self.negative_label = negative_label
        self.preset = preset
        self.train_params = train_params

    def fit(self, positive: Sequence[str], negative: Sequence[str]) -> FastTextQualityClassifier:
        if not positive or not negative:
            raise ValueError(
                f"need texts of both classes; got {len(positive)} positive, {len(negative)} negative"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1); got {self.test_fraction}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}; got {self.preset!r}")
        rng = np.random.default_rng(self.seed)
        train, test = self._split(positive, negative, self.test_fraction, rng)
        auto = AUTO_PARAMS if self.preset == "auto" else {}
        base = {**DEFAULT_TRAIN_PARAMS, **auto, **self.train_params, "seed": self.seed}
        self.search_: list[tuple[dict[str, Any], float]] = []
        candidates = search_candidates(self.train_params)
        if self.preset == "auto" and len(candidates) > 1:
            self.search_ = self._search(train, base, candidates, rng)
        if self.search_:
            best = max(range(len(self.search_)), key=lambda i: (self.search_[i][1], -i))
            base.update(self.search_[best][0])
        self.params_ = {k: v for k, v in base.items() if k not in ("verbose", "thread")}
        self.model_ = self._train([(label, text) for label, text, _ in train], base)
        self.report_ = self._evaluate(train_size=len(train), test=test)
        if not self.report_.auc >= LOW_AUC:
            warnings.warn(
                f"held-out AUC {self.report_.auc:.3f} is below {LOW_AUC}: the classifier barely separates "
                "the classes, so its scores rank documents little better than chance",
                stacklevel=2,
            )
        return self

    def _split(self, positive, negative, fraction: float, rng) -> tuple[list, list[tuple[str, int]]]:
        """(shuffled training (label, text, y) rows, held-out (text, y) rows): `fraction` of each class."""
        train: list[tuple[str, str, int]] = []
        test: list[tuple[str, int]] = []
        for texts, label, y in ((positive, self.positive_label, 1), (negative, self.negative_label, 0)):
            order = rng.permutation(len(texts))
            n_test = max(1, int(round(fraction * len(texts)))) if len(texts) > 1 else 0
            test += [(texts[i], y) for i in order[:n_test]]
            train += [(label, texts[i], y) for i in order[n_test:]]
        return [train[i] for i in rng.permutation(len(train))], test

    def _search(self, train, base: dict[str, Any], candidates: list[dict[str, Any]], rng) -> list:
        """Each candidate's AUC on a validation split of (at most SEARCH_MAX_WORDS words of) `train`."""
        from sklearn.metrics import roc_auc_score

        words = np.cumsum([len(text.split()) for _, text, _ in train])
        rows = train[: max(2, int(np.searchsorted(words, SEARCH_MAX_WORDS)) + 1)]
        pos = [t for _, t, y in rows if y == 1]
        neg = [t for _, t, y in rows if y == 0]
        fit_rows, valid = self._split(pos, neg, SEARCH_VALIDATION, rng)
        y = np.array([v for _, v in valid])
        if len(set(y.tolist())) < 2 or not fit_rows:
            return []
        out = []
        for candidate in candidates:
            model = self._train([(label, text) for label, text, _ in fit_rows], {**base, **candidate})
            p = label_probabilities(model, [t for t, _ in valid], self.positive_label)
            out.append((candidate, float(roc_auc_score(y, p))))
        return out

    @staticmethod
    def _train(rows: list[tuple[str, str]], params: dict[str, Any]) -> Any:
        with tempfile.TemporaryDirectory(prefix="datamixer-fasttext-") as tmp:
            path = Path(tmp) / "train.txt"
            with open(path, "w", encoding="utf-8") as fh:
                for label, text in rows:
                    fh.write(f"{label} {normalize(text)}\n")
            return _fasttext().train_supervised(input=str(path), **params)

    def _evaluate(self, train_size: int, test: list[tuple[str, int]]) -> ClassifierReport:
        from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

        y = np.array([t[1] for t in test])
        p = label_probabilities(self.model_, [t[0] for t in test], self.positive_label)
        pred = (p >= 0.5).astype(int)
        auc = float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else float("nan")
        return ClassifierReport(
            n_train=train_size,
            n_test=len(test),
            precision=float(precision_score(y, pred, zero_division=0)),
            recall=float(recall_score(y, pred, zero_division=0)),
            auc=auc,
            accuracy=float(accuracy_score(y, pred)),
        )

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probability of the positive label for each text."""
        return label_probabilities(self.model_, texts, self.positive_label)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as a fastText `.bin`, atomically."""
        from mixer.files import atomic_path

        with atomic_path(path) as tmp:
            self.model_.save_model(str(tmp))
        return Path(path)
