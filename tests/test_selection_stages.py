"""Language ID, heuristic filters and metadata carried through, alone and in the whole job (with dedup
and a scorer): per-document drop reasons, per-stage domain counts that add up, byte-identical output
in-process, on two processes and on the PortableRunner."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema as S
from pipeline.dedup import DedupOptions
from pipeline.filters import C4, GopherQuality, GopherRepetition, first_failure, parse_filters
from pipeline.job import ScoreJobConfig, run_score_job
from pipeline.langid import LanguageIdentifier, LanguageOptions
from pipeline.locales import multilingual_sample
from pipeline.read import ReadOptions
from pipeline.registry import ScorerConfig
from pipeline.select import Selection, keep_top_per_domain
from scorers.fasttext import FastTextQualityClassifier

LOCALES = ("en", "de", "fr", "es", "it", "pt", "nl", "sv", "pl", "ru", "cs", "tr", "ja", "zh_CN", "ko", "el")


def _prose(n: int, words: int = 120) -> list[str]:
    """English prose in lines of sentences: Python's reference documentation."""
    topics = pytest.importorskip("pydoc_data.topics").topics
    out = []
    for key in sorted(topics):
        text = " ".join(topics[key].split())
        sentences = [s.strip() + "." for s in text.split(". ") if len(s.split()) > 4]
        for start in range(0, len(sentences) - 8, 8):
            doc = "\n".join(sentences[start : start + 8])
            if len(doc.split()) >= words and "{" not in doc:
                out.append(doc)
        if len(out) >= n:
            return out[:n]
    return out


def test_language_id_accuracy_per_language():
    sample = multilingual_sample(LOCALES, 20)
    by_language: dict[str, list[str]] = defaultdict(list)
    for code, text in sample:
        by_language[code].append(text)
    if len([c for c, texts in by_language.items() if len(texts) >= 10]) < 6:
        pytest.skip("fewer than 6 languages of gettext catalogs (/usr/share/locale) on this machine")
    identifier = LanguageIdentifier("lingua").setup()
    for code, texts in sorted(by_language.items()):
        found, scores = identifier.identify(texts)
        accuracy = sum(f == code for f in found) / len(texts)
        assert accuracy >= 0.9, (code, accuracy, found)
        assert ((0 <= scores) & (scores <= 1)).all()


def test_each_rule_names_itself():
    prose = _prose(3)
    assert prose and all(first_failure(parse_filters("gopher,c4"), t) is None for t in prose)
    lines = prose[0].splitlines()
    assert C4().check(prose[0] + "\nLorem ipsum dolor sit amet, consectetur adipiscing.") == "lorem_ipsum"
    assert C4().check(prose[0] + "\nThe set {1, 2} has two members.") == "curly_bracket"
    assert C4().check("\n".join(lines[:3])) == "too_few_sentences"
    assert GopherQuality().check("Too short to be a document.") == "doc_words"
    assert GopherQuality().check(" ".join(["supercalifragilistic"] * 60)) == "mean_word_length"
    assert GopherQuality().check(prose[0] + " #" * 100) == "symbol_word_ratio"
    repeated = "\n".join([lines[0]] * 5 + lines[1:4])
    assert GopherRepetition().check(repeated) == "dup_line_frac"
    assert first_failure(parse_filters("gopher"), repeated) == "gopher:dup_line_frac"
    assert GopherRepetition(dup_line_frac=None, dup_line_char_frac=None).check(repeated) != "dup_line_frac"


def test_filters_from_yaml(tmp_path):
    path = tmp_path / "filters.yaml"
    path.write_text("gopher_quality: {min_doc_words: 5, max_symbol_word_ratio: null}\nc4: {}\n")
    quality, c4 = parse_filters(str(path))
    assert quality.min_doc_words == 5 and quality.max_symbol_word_ratio is None and c4 == C4()
    path.write_text("gopher_quality: {min_words: 5}\n")
    with pytest.raises(ValueError, match="no setting"):
        parse_filters(str(path))
    with pytest.raises(ValueError, match="unknown filter"):
        parse_filters("gopher,fineweb")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    prose = _prose(80)
    german = [t for _, t in multilingual_sample(("de",), 15, doc_chars=600)]
    if len(prose) < 60 or len(german) < 10:
        pytest.skip("needs pydoc_data prose and German gettext catalogs")
    root = tmp_path_factory.mktemp("stages")
    records = [
        {"id": f"en-{i:03d}", "text": t, "source": "python-docs", "url": f"u{i}"} for i, t in enumerate(prose)
    ]
    records += [{"id": f"de-{i:03d}", "text": t, "source": "gettext"} for i, t in enumerate(german)]
    records += [{"id": "lorem", "text": prose[0] + "\nLorem ipsum dolor sit amet, consectetur adipiscing."}]
    records += [{"id": f"zz-copy-{i}", "text": "Copied:\n" + prose[i]} for i in range(5)]
    (root / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[::2]))
    (root / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[1::2]) + "{broken\n")
    clf = FastTextQualityClassifier(dim=16, bucket=20_000, epoch=10, lr=0.5).fit(prose[:40], german)
    return {"root": root, "model": str(clf.save(root / "quality.bin")), "n": len(records) + 1}


def _config(corpus, out: Path) -> ScoreJobConfig:
    return ScoreJobConfig(
        inputs={"docs": [str(corpus["root"] / "*.jsonl")]},
        output=str(out),
        scorer=ScorerConfig("fasttext", model=corpus["model"]),
        selection=Selection(keep_top=0.8),
        language=LanguageOptions(languages=("en",)),
        filters=parse_filters("gopher,c4"),
        dedup=DedupOptions("minhash"),
        read=ReadOptions(batch_size=16, keep_fields=("source",)),
        num_shards=2,
    )


@pytest.fixture(scope="module")
def job(corpus):
    out = corpus["root"] / "out"
    result = run_score_job(_config(corpus, out), beam_args=["--direct_running_mode=in_memory"])
    table = pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("scored-*.parquet"))])
    return {"out": out, "result": result, "rows": {r[S.ID]: r for r in table.to_pylist()}}


def test_drop_reasons_per_document(job):
    rows = job["rows"]
    assert all(rows[f"de-{i:03d}"][S.DROP_REASON] == "lang:de" for i in range(10))
    assert all(rows[f"de-{i:03d}"]["score_fasttext"] is None for i in range(10))  # dropped: not scored
    assert rows["lorem"][S.DROP_REASON] == "c4:lorem_ipsum" and rows["lorem"][S.LANGUAGE] == "en"
    for i in range(5):
        copy, original = rows[f"zz-copy-{i}"], rows[f"en-{i:03d}"]
        assert copy[S.DROP_REASON] == "duplicate" or original[S.DROP_REASON] == "duplicate"
        removed, kept = (copy, original) if copy[S.DROP_REASON] == "duplicate" else (original, copy)
        assert removed[S.DUPLICATE_OF] == kept[S.ID] and kept[S.DROP_REASON] is None
        assert kept["score_fasttext"] >= removed["score_fasttext"]  # the better-scoring one stays
    assert all(r[S.KEEP] <= (r[S.DROP_REASON] is None) for r in rows.values())
    assert json.loads(rows["en-001"][S.METADATA]) == {"source": "python-docs"}  # --keep-fields source
    assert rows["en-001"][S.SOURCE].endswith("b.jsonl")


def test_stage_counts_add_up(job):
    stats = pq.read_table(job["out"] / S.DOMAIN_STATS_FILE).to_pylist()
    (row,) = stats
    drops = sum(row[S.DOCS_DROPPED_PREFIX + s] for s in S.DROP_STAGES)
    assert row[S.DOCS_IN] == row[S.DOCS_KEPT] + drops + row[S.DOCS_DEAD_LETTER] == len(job["rows"]) + 1
    assert row[S.TOKENS_IN] == row[S.TOKENS_KEPT] + sum(
        row[S.TOKENS_DROPPED_PREFIX + s] for s in S.DROP_STAGES
    )
    reasons = [r[S.DROP_REASON] for r in job["rows"].values() if r[S.DROP_REASON]]
    assert row[S.DOCS_DROPPED_PREFIX + "language"] == sum(r.startswith("lang:") for r in reasons) >= 10
    assert row[S.DOCS_DROPPED_PREFIX + "c4"] == sum(r.startswith("c4:") for r in reasons) >= 1
    assert row[S.DOCS_DROPPED_PREFIX + "duplicate"] == reasons.count("duplicate") >= 5
    assert row[S.DOCS_DROPPED_PREFIX + "selection"] > 0
    survivors = [r for r in job["rows"].values() if r[S.DROP_REASON] is None]
    assert row[S.DOCS_KEPT] == sum(r[S.KEEP] for r in survivors) == -(-len(survivors) * 8 // 10)


@pytest.mark.slow
def test_same_output_on_two_processes_and_portable_runner(corpus, job):
    def files(out: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}

    reference = files(job["out"])
    assert len(reference) == 5
    two = corpus["root"] / "two"
    run_score_job(
        _config(corpus, two), beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    )
    assert files(two) == reference
    portable = corpus["root"] / "portable"
    run_score_job(_config(corpus, portable), runner="portable")
    assert files(portable) == reference


def test_score_without_scorer_and_selection_needs_one(corpus, tmp_path):
    config = ScoreJobConfig(
        inputs={"docs": [str(corpus["root"] / "a.jsonl")]},
        output=str(tmp_path / "o"),
        dedup=DedupOptions("exact"),
    )
    result = run_score_job(config, beam_args=["--direct_running_mode=in_memory"])
    assert result["kept"] == result["in"] and result["dropped_duplicate"] == 0
    schema = pq.read_schema(next((tmp_path / "o").glob("scored-*.parquet")))
    assert not [n for n in schema.names if n.startswith(S.SCORE_PREFIX)]
    shards = [pq.read_table(f) for f in sorted((tmp_path / "o").glob("scored-*.parquet"))]
    rows = {r[S.ID]: r for r in pa.concat_tables(shards).to_pylist()}
    assert json.loads(rows["en-000"][S.METADATA]) == {"source": "python-docs", "url": "u0"}  # all fields
    assert json.loads(rows["de-000"][S.METADATA]) == {"source": "gettext"}
    with pytest.raises(ValueError, match="--scorer"):
        ScoreJobConfig(inputs={"d": ["x"]}, output="o", selection=Selection(keep_top=0.5))


def test_config_yaml_in_the_pipeline_package(tmp_path):
    (tmp_path / "domains.yaml").write_text("domains:\n  web: data/*.jsonl\n  code: [a.jsonl, /abs/b.jsonl]\n")
    config = ScoreJobConfig(inputs=str(tmp_path / "domains.yaml"), output="o")
    assert config.inputs == {
        "web": [str(tmp_path / "data/*.jsonl")],
        "code": [str(tmp_path / "a.jsonl"), "/abs/b.jsonl"],
    }


def test_cli_runs_every_stage(corpus, tmp_path, capsys):
    from datamixer.cli import main

    out = tmp_path / "cli"
    args = [
        "score",
        "--languages",
        "en",
        "--filters",
        "gopher,c4",
        "--dedup",
        "minhash",
        "--scorer",
        "fasttext",
        "--model",
        corpus["model"],
        "--keep-top",
        "0.8",
        "--keep-fields",
        "url",
        "--input",
        str(corpus["root"] / "*.jsonl"),
        "--domain",
        "docs",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["dropped_language"] >= 10 and result["dropped_duplicate"] >= 5 and result["dropped_c4"] >= 1
    assert (
        result["in"]
        == result["kept"] + sum(result[f"dropped_{s}"] for s in S.DROP_STAGES) + result["dead_letter"]
    )
    table = pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("scored-*.parquet"))])
    rows = {r[S.ID]: r for r in table.to_pylist()}
    assert json.loads(rows["en-002"][S.METADATA]) == {"url": "u2"} and rows["de-001"][S.METADATA] is None


def test_fasttext_language_model_path(tmp_path):
    """`--language-model PATH` reads any supervised fastText model with `__label__<code>` labels, as
    lid.176.bin and GlotLID are; here one trained on half the gettext sample, tested on the rest."""
    import fasttext

    sample = multilingual_sample(("en", "de", "fr", "es", "ru", "ja"), 40)
    if len({c for c, _ in sample}) < 6:
        pytest.skip("needs gettext catalogs of 6 languages (/usr/share/locale)")
    train, test = sample[::2], sample[1::2]
    path = tmp_path / "train.txt"
    path.write_text("".join(f"__label__{c} {' '.join(t.split())}\n" for c, t in train))
    model = fasttext.train_supervised(
        str(path), minn=2, maxn=4, dim=16, epoch=50, lr=0.5, thread=1, seed=0, verbose=0
    )
    model.save_model(str(tmp_path / "lid.bin"))
    codes, scores = LanguageIdentifier(str(tmp_path / "lid.bin")).identify([t for _, t in test])
    assert sum(c == g for c, (g, _) in zip(codes, test, strict=True)) / len(test) >= 0.9
    assert ((0 <= scores) & (scores <= 1)).all()
    with pytest.raises(FileNotFoundError, match="language-ID model"):
        ScoreJobConfig(
            inputs={"d": ["x"]}, output="o", language=LanguageOptions(model=str(tmp_path / "no.bin"))
        )


def test_keep_top_per_domain_in_memory_keeps_the_top_fraction_of_each_domain():
    import numpy as np

    scores = np.array([0.1, 0.9, 0.5, np.nan, 3.0, 2.0, 1.0, np.nan])
    domains = np.array(["a"] * 4 + ["b"] * 4)
    keep = keep_top_per_domain(scores, domains, 0.5)
    assert keep.tolist() == [False, True, True, False, True, True, False, False]
    assert not keep_top_per_domain(scores, domains, 0.0).any()
    assert keep_top_per_domain(scores, domains, 1.0).sum() == 8  # NaN last, but kept when all are
