"""The linear fastText path (`scorers.fasttext_linear`) gives the binding's scores, and the scorer falls
back to the binding for models that are not linear."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from scorers import chunks
from scorers.chunks import LONG_CHUNK
from scorers.fasttext import FastTextScorer, _fasttext, label_probabilities, normalize
from scorers.fasttext_linear import WordIds, fasttext_sigmoid, fnv1a

WORDS = (
    "the of and a to in is was he for it with as his on be at by had are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so "
    "said what up its about into than them can only other new some could time these two may then do "
    "first any my now such like our over man me even most made after also did many before must through "
    "def return self import class None print lambda yield raise try except while elif "
    "café naïve über straße 漢字 テスト 😀 ∑ → é __label:hq foo__label:bar __label: x"
).split()
HOSTILE = [
    "",
    " ",
    " \t\n\r\v\f ",
    "\0",
    "the\0of and\0\0a",
    "\0the of\0",
    "__label__hq",
    "__label__lq the of",
    "the __label__hq of __label__",
    "foo__label__bar __label___x ____label__label__ __label__label__",
    "</s>",
    "the of </s> and a to",
    "</s></s> he",
    "he </s>",
    "the\u00a0of and\u3000a the\u2003of",
    "café naïve über straße 漢字 テスト 😀 ∑ → é",
    "zzqx qqqy wwvv the zzqx",
    "the the the the the of of of",
    "line one\nline two\r\nline three\r",
    "\tthe\tof\tand\v\va\f\fto\r\rin",
    "x" * (LONG_CHUNK + 60),
    "the " + "é" * (LONG_CHUNK // 2 + 10) + " of",
    " " * (LONG_CHUNK + 20) + "the of",
    "the of " * 1500,
    "漢字" * 80 + " 😀" * 50,
]
SMALL = {"dim": 8, "epoch": 3, "lr": 0.5, "bucket": 997, "minCount": 1, "thread": 1, "seed": 1, "verbose": 0}


def _corpus(path, labels, n=600, seed=0):
    """A training file: lines of random words, each label favouring its own slice of WORDS."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            k = i % len(labels)
            favoured = WORDS[k * 20 : k * 20 + 40] or WORDS
            pool = [favoured if rng.random() < 0.6 else WORDS for _ in range(rng.integers(3, 25))]
            words = [p[rng.integers(len(p))] for p in pool]
            fh.write(f"{labels[k]} {normalize(' '.join(words))}\n")
    return path


def _model(tmp_path, name, labels=("__label__hq", "__label__lq"), **params):
    """A small model trained here, saved as `name`; its path."""
    train = _corpus(tmp_path / f"{name}.txt", labels)
    model = _fasttext().train_supervised(input=str(train), **{**SMALL, **params})
    path = tmp_path / name
    model.save_model(str(path))
    return path


def _texts(seed=3, n=200):
    """Hostile texts, then random ones from WORDS and a few unknown words."""
    rng = np.random.default_rng(seed)
    vocab = [*WORDS, "zzqx", "qqqy", "THE", "The"]
    spaces = [" ", "  ", "\t", "\n", " \0 "]
    out = list(HOSTILE)
    for _ in range(n):
        words = [vocab[rng.integers(len(vocab))] for _ in range(rng.integers(0, 40))]
        out.append("".join(w + spaces[rng.integers(len(spaces))] for w in words))
    return out


def _check(path, label="__label__hq", path_kind="linear"):
    """The scorer's scores equal the binding's (cold, warm, in other batches, from str and Arrow)."""
    scorer = FastTextScorer(str(path), label).setup()
    assert scorer.path_ == path_kind, scorer.fallback_reason_
    texts = _texts()
    expected = label_probabilities(scorer.model_, texts, label)
    assert np.ptp(expected) > 0.05  # the model's scores vary: the comparison means something
    cold = scorer.score_batch(pa.array(texts, pa.string()))
    np.testing.assert_allclose(cold, expected, rtol=0, atol=1e-6)
    warm = scorer.score_batch(texts[::-1])[::-1]
    np.testing.assert_allclose(warm, expected, rtol=0, atol=1e-6)
    large = pa.array(texts, pa.large_string())
    parts = [scorer.score_batch(large.slice(i, 7)) for i in range(0, len(texts), 7)]
    np.testing.assert_allclose(np.concatenate(parts), expected, rtol=0, atol=1e-6)
    assert np.array_equal(warm, cold) and np.array_equal(np.concatenate(parts), cold)  # whatever the batch
    chunked = pa.chunked_array([pa.array(texts[:50]), pa.array(texts[50:])])
    np.testing.assert_allclose(scorer.score_batch(chunked), expected, rtol=0, atol=1e-6)
    again = FastTextScorer(str(path), label).setup().score_batch(texts)
    assert np.array_equal(again, cold)  # deterministic
    return scorer, expected


@pytest.mark.parametrize("word_ngrams", [1, 2, 3])
def test_softmax_two_labels_equals_the_binding(tmp_path, word_ngrams):
    scorer, expected = _check(_model(tmp_path, f"softmax{word_ngrams}.bin", wordNgrams=word_ngrams))
    assert scorer.linear_.kind_ == "difference"
    assert scorer.score_batch([]).shape == (0,)
    assert np.all((expected >= 0) & (expected <= 1))


def test_the_second_label_and_three_labels_softmax(tmp_path):
    labels = ("__label__a", "__label__b", "__label__c")
    path = _model(tmp_path, "three.bin", labels=labels, wordNgrams=2)
    for label in labels:
        scorer, _ = _check(path, label)
        assert scorer.linear_.kind_ == "softmax"
    scorer, _ = _check(_model(tmp_path, "two.bin", wordNgrams=2), "__label__lq")
    assert scorer.linear_.kind_ == "difference"


@pytest.mark.parametrize("loss", ["ova", "ns"])
def test_one_vs_all_and_negative_sampling(tmp_path, loss):
    labels = ("__label__a", "__label__b", "__label__c")
    scorer, _ = _check(_model(tmp_path, f"{loss}.bin", labels=labels, loss=loss, wordNgrams=2), "__label__b")
    assert scorer.linear_.kind_ == "sigmoid"


def test_scores_stay_exact_when_the_cache_starts_again(tmp_path, monkeypatch):
    path = _model(tmp_path, "cache.bin", wordNgrams=2)
    monkeypatch.setattr(chunks, "CACHE_LIMIT", 50)
    scorer = FastTextScorer(str(path)).setup()
    texts = _texts(seed=5)
    expected = label_probabilities(scorer.model_, texts, "__label__hq")
    generations, long = set(), False
    got = []
    for i in range(0, len(texts), 20):
        got.append(scorer.score_batch(texts[i : i + 20]))
        generations.add(scorer.linear_._cache._generation)
        long = long or bool(chunks.shared_chunk_ids()._long)
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=0, atol=1e-6)
    assert len(generations) > 2  # started again more than once
    assert long  # chunks over LONG_CHUNK bytes went to the dict


def test_models_that_are_not_linear_fall_back_to_the_binding(tmp_path):
    reasons = {}
    for name, params in {"subwords.bin": {"minn": 2, "maxn": 4}, "hs.bin": {"loss": "hs"}}.items():
        scorer, _ = _check(_model(tmp_path, name, wordNgrams=2, **params), path_kind="binding")
        assert scorer.linear_ is None
        reasons[name] = scorer.fallback_reason_
    train = _corpus(tmp_path / "q.txt", ("__label__hq", "__label__lq"))
    model = _fasttext().train_supervised(input=str(train), **{**SMALL, "wordNgrams": 2})
    model.quantize(input=str(train), qnorm=True, retrain=False, cutoff=0)
    model.save_model(str(tmp_path / "q.ftz"))
    scorer, _ = _check(tmp_path / "q.ftz", path_kind="binding")
    reasons["q.ftz"] = scorer.fallback_reason_
    assert reasons == {
        "subwords.bin": "subword n-grams (maxn 4)",
        "hs.bin": "loss hs",
        "q.ftz": "quantized model",
    }


def _fnv1a(word: bytes) -> int:
    """fastText's hash, byte by byte as dictionary.cc writes it: h ^ uint32_t(int8_t(c)), times the prime."""
    h = 2166136261
    for c in word:
        h = ((h ^ (c - 256 if c >= 128 else c) & 0xFFFFFFFF) * 16777619) & 0xFFFFFFFF
    return h


def test_fasttext_hash_and_sigmoid():
    assert _fnv1a(b"a") == 0xE40C292C  # FNV-1a's published value for "a"
    rng = np.random.default_rng(0)
    words = [b"", b"a", b"\xe9", "漢字😀".encode()] + [rng.bytes(int(k)) for k in rng.integers(0, 300, 200)]
    expected = [_fnv1a(w) for w in words]
    assert fnv1a(pa.array(words, pa.binary())).tolist() == expected
    assert fnv1a(pa.array(words[::-1], pa.large_binary()).slice(3)).tolist() == expected[::-1][3:]
    x = np.array([-9.0, -8.0, 0.0, 1e-3, 8.0, 9.0])
    got = fasttext_sigmoid(x)
    assert got[0] == 0.0 and got[-1] == 1.0 and got[2] == 0.5 and got[3] == 0.5
    assert abs(got[1] - 1 / (1 + np.exp(8))) < 1e-7 and abs(got[4] - 1 / (1 + np.exp(-8))) < 1e-7


def test_token_counts_and_scores_of_one_batch_share_its_chunks(tmp_path, monkeypatch):
    """The last batch's chunks are reused by the other step unless a NUL splits them differently."""
    from pipeline.tokenize import TokenCounter, train_byte_level_bpe

    scorer = FastTextScorer(str(_model(tmp_path, "shared.bin", wordNgrams=2))).setup()
    texts = _texts(seed=7)
    spec = train_byte_level_bpe(texts, vocab_size=400).to_str()
    splits = []
    split_chunks = chunks.split_chunks
    monkeypatch.setattr(chunks, "split_chunks", lambda *a, **k: splits.append(1) or split_chunks(*a, **k))
    for batch in ([t.replace("\0", " ") for t in texts], texts):
        array = pa.array(batch, pa.string())
        expected_scores = label_probabilities(scorer.model_, batch, "__label__hq")
        expected_counts = TokenCounter(spec).setup()._encode_counts(batch)
        for slice_ in (array, array.slice(5, 100), array.slice(6, 100)):
            start = slice_.offset
            for first in ("counts", "scores"):
                counter = TokenCounter(spec).setup()
                splits.clear()
                chunks._LAST.batch = None  # a fresh batch
                if first == "scores":
                    got_scores = scorer.score_batch(slice_)
                got_counts = counter.count(slice_).tolist()
                if first == "counts":
                    got_scores = scorer.score_batch(slice_)
                assert got_counts == expected_counts[start : start + len(slice_)]
                np.testing.assert_allclose(
                    got_scores, expected_scores[start : start + len(slice_)], atol=1e-6
                )
                nul = "\0" in "".join(batch[start : start + len(slice_)])
                assert len(splits) == 1 + nul  # split once, unless a NUL splits fastText's words


def test_word_ids_are_the_bindings(tmp_path):
    """Words of every length up to past LONG_CHUNK bytes, sharing long prefixes, multi-byte: the table
    gives each vocabulary word its id and -1 to every other word, as `get_word_id` does."""
    rng = np.random.default_rng(3)
    base = "".join(rng.choice(list("abcdefghé漢😀"), LONG_CHUNK + 40))
    vocab = [base[:n] for n in range(1, len(base), 3)] + list(WORDS)
    train = tmp_path / "long.txt"
    train.write_text(
        "".join(f"__label__{'hq' if i % 2 else 'lq'} {' '.join(vocab[i::7])}\n" for i in range(70))
    )
    model = _fasttext().train_supervised(input=str(train), **SMALL)
    words = model.get_words()
    assert max(len(w.encode()) for w in words) > LONG_CHUNK  # the dict's words too
    others = [
        "",
        "</s>",
        "x" * (LONG_CHUNK + 9),
        "\u20ac",
        *(w + "!" for w in words),
        *(w[:-1] for w in words),
    ]
    queries = pa.array(words + others + [w.upper() for w in WORDS])
    assert WordIds(model)(queries).tolist() == [model.get_word_id(w) for w in queries.to_pylist()]
