"""`datamixer corpus build`: real local text, several domains, deterministic."""

from __future__ import annotations

import json

from pipeline.corpus import DOMAINS, CorpusOptions, build_corpus, split_documents


def test_split_documents_respects_limits():
    text = "\n\n".join(["a" * 50, "b" * 120, "c" * 30, "d" * 500])
    docs = split_documents(text, max_chars=200, min_chars=40)
    assert all(40 <= len(d) <= 200 for d in docs)
    assert docs[0].startswith("a" * 50) and "b" * 120 in docs[0]
    assert "".join(docs).count("d") == 500


def test_build_is_deterministic_and_multi_domain(tmp_path):
    opts = CorpusOptions(max_bytes_per_domain=120_000)
    first = build_corpus(tmp_path / "one", opts)
    second = build_corpus(tmp_path / "two", opts)
    assert first == second
    for domain in DOMAINS:
        a = (tmp_path / "one" / f"{domain}.jsonl").read_bytes()
        assert a == (tmp_path / "two" / f"{domain}.jsonl").read_bytes()
        records = [json.loads(line) for line in a.splitlines()]
        assert len(records) == first[domain]["docs"] > 5
        assert len({r["id"] for r in records}) == len(records)
        assert all(r["text"].strip() and r["source"] for r in records)
        assert 60_000 < sum(len(r["text"].encode()) for r in records) <= 120_000
    code = (tmp_path / "one" / "code.jsonl").read_text()
    legal = (tmp_path / "one" / "legal.jsonl").read_text()
    assert "def " in code and "import " in code
    assert "licen" in legal.lower() and "warrant" in legal.lower()


def test_cli_build_prints_summary(tmp_path, cli):
    result = cli(["corpus", "build", "--out", str(tmp_path / "c"), "--max-mb", "0.05", "--domain", "legal"])
    assert list(result["domains"]) == ["legal"] and result["docs"] > 0
    assert (tmp_path / "c" / "legal.jsonl").stat().st_size == result["bytes"]
