"""Hostile but fair inputs: every record is judged alone, nothing is lost, nothing is deleted.

Each CASE builds one input file with good records (ids known) and hostile ones at known lines. The
reader is checked case by case without Beam; then one `datamixer score` run (a subprocess, so its
exit code is real, with the default BPE trained on these very files) reads every case as its own
domain, and its outputs are checked against each input's own record count: every good record
present by id, every bad one dead-lettered once with a reason and its line.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mixer.files import MARKER
from pipeline import schema as S
from pipeline.read import ReadOptions, read_file

N_GOOD = 299  # a bad record at line 150 of 300: the reader reads one 4,096-line block
MAX_CHARS = 5000
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    """One input file: its bytes, the ids that must be scored and the (line, reason) dead letters."""

    name: str
    suffix: str
    data: bytes
    good: list[str]
    bad: list[tuple[int | None, str]] = field(default_factory=list)


def _good_lines(name: str, n: int = N_GOOD) -> list[bytes]:
    return [
        json.dumps({"id": f"{name}-{i}", "text": f"plain document {i} of {name}"}).encode() for i in range(n)
    ]


def jsonl_case(name: str, bad_line: bytes | None, reason: str, *, good_id: str | None = None) -> Case:
    """N_GOOD good lines with `bad_line` at line 150; `good_id` makes it a good record instead."""
    lines = _good_lines(name)
    good = [json.loads(line)["id"] for line in lines]
    if bad_line is not None:
        lines.insert(149, bad_line)
    bad = [] if good_id is not None or bad_line is None else [(150, reason)]
    if good_id is not None:
        good.insert(149, good_id)
    return Case(name, ".jsonl", b"\n".join(lines) + b"\n", good, bad)


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _compressed(name: str, compress: Callable[[bytes], bytes], suffix: str, cut: int = 0) -> Case:
    """Random-looking texts (so a cut loses little), compressed; `cut` bytes lost from the end."""
    import random

    rng = random.Random(len(name))
    lines = [
        json.dumps({"id": f"{name}-{i}", "text": " ".join(f"w{rng.randrange(10**6)}" for _ in range(80))})
        for i in range(N_GOOD)
    ]
    payload = ("\n".join(lines) + "\n").encode()
    data = compress(payload)
    if not cut:
        return Case(name, suffix, data, [f"{name}-{i}" for i in range(N_GOOD)])
    data = data[:-cut]
    kept = _recover(data, suffix).count(b"\n")  # whole records before the cut
    assert kept, "the cut must leave some records to keep"
    return Case(name, suffix, data, [f"{name}-{i}" for i in range(kept)], [(kept + 1, "truncated")])


def _recover(data: bytes, suffix: str) -> bytes:
    """What a streaming decompressor gets out of a cut file before it notices the cut."""
    import io

    if suffix.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    stream = (
        gzip.GzipFile(fileobj=io.BytesIO(data)) if suffix.endswith(".gz") else lzma.LZMAFile(io.BytesIO(data))
    )
    out = b""
    try:
        while chunk := stream.read1(1 << 16):
            out += chunk
    except EOFError:
        pass
    return out


def _parquet(name: str, ids: list, texts: list, id_type: pa.DataType | None = None) -> bytes:
    import io

    table = pa.table({"id": pa.array(ids, id_type or pa.string()), "text": texts})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _parquet_bad_utf8(name: str) -> Case:
    texts = [f"parquet text {i}".encode() for i in range(N_GOOD)]
    texts.insert(149, b"cesu \xed\xa0\x80 bytes")
    raw = pa.array(texts, pa.binary()).view(pa.string())  # Arrow lets this through unvalidated
    ids = [f"{name}-{i}" for i in range(N_GOOD)]
    ids.insert(149, "bad")
    data = _parquet(name, ids, raw)
    return Case(name, ".parquet", data, [i for i in ids if i != "bad"], [(150, "not valid UTF-8")])


def _parquet_null_text(name: str) -> Case:
    ids = [f"{name}-{i}" for i in range(N_GOOD)] + ["null"]
    texts = [f"parquet text {i}" for i in range(N_GOOD)] + [None]
    return Case(name, ".parquet", _parquet(name, ids, texts), ids[:-1], [(N_GOOD + 1, "missing or null")])


def _parquet_float_ids(name: str) -> Case:
    ids = [float(i) for i in range(3)]
    texts = [f"float id text {i}" for i in range(3)]
    data = _parquet(name, ids, texts, pa.float64())
    return Case(
        name, ".parquet", data, [], [(i + 1, "an id must be a string or an integer") for i in range(3)]
    )


def _parquet_int_ids(name: str) -> Case:
    texts = [f"int id text {i}" for i in range(5)]
    return Case(
        name, ".parquet", _parquet(name, list(range(5)), texts, pa.int64()), [str(i) for i in range(5)]
    )


def build_cases() -> list[Case]:
    cases = [
        jsonl_case("bad_utf8", b'{"id": "x", "text": "caf\xe9"}', "not valid UTF-8"),
        jsonl_case("cesu8", b'{"id": "x", "text": "a \xed\xa0\x80 b"}', "not valid UTF-8"),
        jsonl_case("overlong_utf8", b'{"id": "x", "text": "\xc0\xaf"}', "not valid UTF-8"),
        jsonl_case("lone_surrogate", b'{"id": "x", "text": "a \\ud800 b"}', "lone surrogate"),
        jsonl_case("surrogate_id", b'{"id": "\\udc00", "text": "fine"}', "lone surrogate"),
        jsonl_case("huge_int_id", b'{"id": ' + b"9" * 5000 + b', "text": "fine"}', "4,300 digits"),
        jsonl_case(
            "huge_int_field", b'{"id": "big", "text": "fine", "n": ' + b"9" * 5000 + b"}", "", good_id="big"
        ),
        jsonl_case("deep_text", b'{"id": "x", "text": ' + _deep(100_000) + b"}", "nested too deeply"),
        jsonl_case(
            "deep_field", b'{"id": "deep", "text": "fine", "n": ' + _deep(100_000) + b"}", "", good_id="deep"
        ),
        jsonl_case("float_id", b'{"id": 1.5, "text": "fine"}', "an id must be a string or an integer"),
        jsonl_case("bool_id", b'{"id": true, "text": "fine"}', "an id must be a string or an integer"),
        jsonl_case("object_id", b'{"id": {"a": 1}, "text": "fine"}', "an id must be a string or an integer"),
        jsonl_case("int_id", b'{"id": 7, "text": "integer id"}', "", good_id="7"),
        jsonl_case("invalid_json", b'{"id": "x", "text": "unterminated', "invalid JSON"),
        jsonl_case("array_record", b'["not", "an", "object"]', "not an object"),
        jsonl_case("scalar_record", b"42", "not an object"),
        jsonl_case("text_int", b'{"id": "x", "text": 5}', "is int, not a string"),
        jsonl_case("text_list", b'{"id": "x", "text": ["a"]}', "is list, not a string"),
        jsonl_case("text_missing", b'{"id": "x", "body": "no text"}', "missing or null"),
        jsonl_case("text_null", b'{"id": "x", "text": null}', "missing or null"),
        jsonl_case("text_blank", b'{"id": "x", "text": " \\t\\n "}', "is empty"),
        jsonl_case("text_control", b'{"id": "x", "text": "\\u0000\\u0001\\u0007"}', "no visible characters"),
        jsonl_case("text_zero_width", b'{"id": "x", "text": "\\u200b\\u200b"}', "no visible characters"),
        jsonl_case("text_oversize", json.dumps({"id": "x", "text": "w " * MAX_CHARS}).encode(), "max_chars"),
        jsonl_case("duplicate_key", b'{"id": "dup", "text": "first", "text": "second"}', "", good_id="dup"),
        jsonl_case("label_only", b'{"id": "lab", "text": "__label__hq __label__hq"}', "", good_id="lab"),
        jsonl_case("nul_inside", b'{"id": "nul", "text": "a\\u0000b"}', "", good_id="nul"),
    ]
    bom = jsonl_case("bom", None, "")
    bom.data = b"\xef\xbb\xbf" + bom.data
    crlf = jsonl_case("crlf", None, "")
    crlf.data = crlf.data.replace(b"\n", b"\r\n")
    blank = jsonl_case("blank_lines", None, "")
    blank.data = b"\n\n" + blank.data.replace(b"\n", b"\n \n", 5)
    no_newline = jsonl_case("no_final_newline", None, "")
    no_newline.data = no_newline.data.rstrip(b"\n")
    cases += [bom, crlf, blank, no_newline]
    two_bad = jsonl_case("bad_in_every_block", None, "")
    lines = two_bad.data.split(b"\n")
    for at in (0, 99, 298):  # first, middle, last line
        lines[at] = b'{"id": "b", "text": "\xff"}'
    two_bad.data = b"\n".join(lines)
    two_bad.good = [g for i, g in enumerate(two_bad.good) if i not in (0, 99, 298)]
    two_bad.bad = [(1, "not valid UTF-8"), (100, "not valid UTF-8"), (299, "not valid UTF-8")]
    cases.append(two_bad)
    zst = zstandard.ZstdCompressor().compress
    cases += [
        _compressed("gz", gzip.compress, ".jsonl.gz"),
        _compressed("gz_truncated", gzip.compress, ".jsonl.gz", cut=2000),
        _compressed("zst", zst, ".jsonl.zst"),
        _compressed("zst_truncated", zst, ".jsonl.zst", cut=2000),
        _compressed("xz_truncated", lzma.compress, ".jsonl.xz", cut=2000),
        Case("gz_not_gzip", ".jsonl.gz", b"this is not gzip at all", [], [(None, "cannot read file")]),
        Case("gz_empty_file", ".jsonl.gz", b"", []),
        Case("empty_file", ".jsonl", b"", []),
        Case("parquet_garbage", ".parquet", b"PAR1 not really parquet", [], [(None, "cannot read file")]),
        _parquet_bad_utf8("parquet_cesu8"),
        _parquet_null_text("parquet_null_text"),
        _parquet_float_ids("parquet_float_ids"),
        _parquet_int_ids("parquet_int_ids"),
    ]
    return cases


CASES = build_cases()


def _write(case: Case, root: Path) -> Path:
    path = root / f"{case.name}{case.suffix}"
    path.write_bytes(case.data)
    return path


def _check(case: Case, good_ids: list[str], dead: list[tuple[int | None, str]]) -> None:
    assert good_ids == case.good, case.name
    assert len(dead) == len(case.bad), (case.name, dead)
    for (line, error), (want_line, reason) in zip(
        sorted(dead, key=str), sorted(case.bad, key=str), strict=True
    ):
        assert line == want_line and reason in error, (case.name, line, error)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reader_judges_every_record_alone(case, tmp_path):
    path = _write(case, tmp_path)
    ids, dead = [], []
    try:
        for batch, rows in read_file(case.name, str(path), ReadOptions(max_chars=MAX_CHARS)):
            ids += [] if batch is None else batch.column(S.ID).to_pylist()
            dead += [(r[S.RECORD], r[S.ERROR]) for r in rows]
    except Exception as exc:  # noqa: BLE001 - a whole-file failure: the job dead-letters it (checked below)
        dead.append((None, f"cannot read file: {exc}"))
    _check(case, ids, dead)


@pytest.fixture(scope="module")
def fasttext_model(tmp_path_factory) -> str:
    from pipeline.corpus import CorpusOptions, build_corpus
    from scorers.fasttext import FastTextQualityClassifier

    root = tmp_path_factory.mktemp("model")
    build_corpus(root / "corpus", CorpusOptions(max_bytes_per_domain=30_000))
    texts = {
        name: [
            json.loads(line)["text"] for line in (root / "corpus" / f"{name}.jsonl").read_text().splitlines()
        ]
        for name in ("prose", "code")
    }
    clf = FastTextQualityClassifier(preset="dclm", dim=16, bucket=20_000, epoch=10, lr=0.5).fit(
        texts["prose"], texts["code"]
    )
    return str(clf.save(root / "quality.bin"))


@pytest.fixture(scope="module")
def job(tmp_path_factory, fasttext_model):
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    data.mkdir()
    args = [
        sys.executable,
        "-m",
        "datamixer",
        "score",
        "--model",
        fasttext_model,
        "--output",
        str(root / "out"),
        "--max-chars",
        str(MAX_CHARS),
        "--keep-top",
        "0.5",
    ]
    for case in CASES:
        args += ["--input", str(_write(case, data)), "--domain", case.name]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    return {"done": done, "out": root / "out", "data": data}


def test_the_job_exits_0_and_counts_every_input_record(job):
    done = job["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for case in CASES:
        stats = result["domains"][case.name]
        own = len(case.good) + len(case.bad)
        assert stats["docs_in"] == own == stats["docs_scored"] + stats["docs_dead_letter"], case.name
        assert stats["docs_scored"] == len(case.good), case.name


def test_the_job_keeps_every_good_record_and_dead_letters_each_bad_one_by_line(job):
    out = job["out"]
    scored = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("scored-*.parquet"))]).to_pylist()
    dead = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("dead_letter-*.parquet"))]).to_pylist()
    for case in CASES:
        ids = [r[S.ID] for r in scored if r[S.DOMAIN] == case.name]  # in (source, line) order
        rows = [(r[S.RECORD], r[S.ERROR]) for r in dead if r[S.DOMAIN] == case.name]
        _check(case, ids, rows)
    assert (out / MARKER).is_file()


def test_label_and_control_texts_are_not_scored_like_empty_documents(job, fasttext_model):
    from scorers.fasttext import FastTextScorer

    scorer = FastTextScorer(fasttext_model)
    empty, label_only = scorer.score_batch(["", "__label__hq __label__hq"])
    assert label_only != empty  # the label tokens are words now, not labels dropped from the line


# --- outputs that would delete or replace what datamixer did not write -------------------------


def _main(args: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    from datamixer.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.jsonl").write_bytes(b"\n".join(_good_lines("a", 20)) + b"\n")
    return root


@pytest.mark.parametrize(
    "output", ["corpus", ".", "corpus/a.jsonl"], ids=["equal-to-input-dir", "holding-input", "input-file"]
)
def test_score_refuses_an_output_that_is_or_holds_an_input(tmp_path, corpus, fasttext_model, output):
    before = _tree(tmp_path)
    out = tmp_path / output
    code, _, err = _main(
        [
            "score",
            "--model",
            fasttext_model,
            "--input",
            str(corpus / "*.jsonl"),
            "--domain",
            "web",
            "--output",
            str(out),
        ]
    )
    assert code == 1 and ("input" in err or "did not write" in err), err
    assert _tree(tmp_path) == before  # nothing deleted, nothing written


def test_score_refuses_an_output_inside_a_directory_given_as_input(tmp_path, corpus, fasttext_model):
    code, _, err = _main(
        [
            "score",
            "--model",
            fasttext_model,
            "--input",
            str(corpus),
            "--domain",
            "web",
            "--output",
            str(corpus / "scored"),
        ]
    )
    assert code == 1 and "inside the input" in err, err
    assert sorted(p.name for p in corpus.iterdir()) == ["a.jsonl"]


def _mixer_outputs(tmp_path: Path) -> list[list[str]]:
    mixture = tmp_path / "mixture.yaml"
    mixture.write_text("web: 0.6\ncode: 0.4\n")
    stats = tmp_path / "stats.csv"
    stats.write_text("domain,tokens\nweb,1000000\ncode,1000000\n")
    return [
        ["export", "--mixture", str(mixture), "--format", "json", "--out"],
        ["budget", "--mixture", str(mixture), "--stats", str(stats), "--tokens", "1M", "--out"],
    ]


def test_file_outputs_never_replace_a_directory(tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    for command in _mixer_outputs(tmp_path):
        code, _, err = _main([*command, str(target)])
        assert code == 1 and "did not write" in err, (command, err)
    assert _tree(target) == {"keep.txt": b"mine"}


def test_yaml_alias_bombs_are_refused_quickly(tmp_path):
    bomb = tmp_path / "mixture.yaml"
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    bomb.write_text("\n".join(lines) + "\n")
    code, _, err = _main(["export", "--mixture", str(bomb), "--format", "json"])
    assert code == 1 and "aliases" in err and len(err) < 2000, err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threshold", "nan"], "--threshold must be a finite number"),
        (["--num-shards", "-1"], "--num-shards"),
        (["--vocab-size", "0"], "--vocab-size must be at least 257"),
        (["--keep-top", "1.5"], "--keep-top must be a fraction"),
    ],
)
def test_bad_score_options_are_refused(tmp_path, corpus, fasttext_model, flags, message):
    code, _, err = _main(
        [
            "score",
            "--model",
            fasttext_model,
            "--input",
            str(corpus / "*.jsonl"),
            "--domain",
            "web",
            "--output",
            str(tmp_path / "out"),
            *flags,
        ]
    )
    assert code == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_corrupt_fasttext_model_is_refused_before_loading(tmp_path, fasttext_model):
    from scorers.fasttext import load_model

    data = Path(fasttext_model).read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 4096)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_model(tmp_path / "cut.bin")
    with pytest.raises(ValueError, match="not a fastText"):
        load_model(tmp_path / "junk.bin")


# --- mixer tables that must be refused or flagged ---------------------------------------------------


def test_a_duplicated_key_in_a_loss_table_is_refused(tmp_path):
    from mixer.regmix import fit_regmix

    mixtures = tmp_path / "mix.csv"
    mixtures.write_text("index,web,code\n0,0.5,0.5\n1,0.2,0.8\n2,0.9,0.1\n")
    losses = tmp_path / "loss.csv"
    losses.write_text("index,loss\n0,3.0\n1,3.1\n1,3.1\n2,2.9\n")
    with pytest.raises(ValueError, match=r"row 3 \(index=1\): duplicate key"):
        fit_regmix(mixtures, losses, "loss", cv_folds=0)


def test_regmix_needs_two_runs_and_says_so_in_its_own_words(tmp_path):
    mixtures = tmp_path / "mix.csv"
    mixtures.write_text("index,web,code\n0,0.5,0.5\n")
    losses = tmp_path / "loss.csv"
    losses.write_text("index,loss\n0,3.0\n")
    code, _, err = _main(
        [
            "regmix",
            "fit",
            "--mixtures",
            str(mixtures),
            "--losses",
            str(losses),
            "--target",
            "loss",
            "--out",
            str(tmp_path / "model"),
            "--cv-folds",
            "0",
        ]
    )
    assert code == 1 and "at least 2 runs" in err and "sample(s)" not in err, err


def test_cross_validation_on_identical_mixtures_warns():
    from mixer.metrics import cross_validate
    from mixer.regmix import make_estimator

    X = np.tile([0.5, 0.5], (10, 1))
    y = np.linspace(3.0, 3.5, 10)
    with pytest.warns(UserWarning, match="all 10 mixtures are identical"):
        cross_validate(make_estimator("linear"), X, y, folds=5)


def _runs(n_rows: int, n_values: int = 3, d_values: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    h = rng.dirichlet([1, 1, 1], n_rows)
    n = np.array([1e6, 4e6, 16e6][:n_values])[np.arange(n_rows) % n_values]
    d = np.array([1e8, 4e8, 16e8][:d_values])[(np.arange(n_rows) // n_values) % d_values]
    loss = 2 + 50 / n**0.3 + 80 / d**0.3 + h @ [0.3, 0.1, 0.2]
    return pd.DataFrame(
        {"N": n, "D": d, "h_web": h[:, 0], "h_code": h[:, 1], "h_books": h[:, 2], "loss": loss}
    )


@pytest.mark.parametrize(
    ("law", "runs", "message"),
    [
        ("additive", _runs(3), "has 11 parameters but the runs table has 3"),
        ("chinchilla", _runs(30, n_values=1), "same model size"),
        ("chinchilla", _runs(30, d_values=1), "same token count"),
    ],
    ids=["fewer-rows-than-params", "one-N", "one-D"],
)
def test_unidentifiable_laws_are_refused(law, runs, message):
    from mixer.laws import make_law

    with pytest.raises(ValueError, match=message):
        make_law(law).fit(runs)


def test_megatron_export_refuses_whitespace_in_domain_names():
    from mixer.exports import export_text

    with pytest.raises(ValueError, match="whitespace"):
        export_text({"web text": 0.5, "code": 0.5}, "megatron")
    assert export_text({"web": 0.5, "code": 0.5}, "megatron").splitlines() == ["0.5 code", "0.5 web"]


def test_an_input_without_one_valid_record_is_all_dead_letters_not_a_tokenizer_error(
    tmp_path, fasttext_model
):
    from pipeline.job import ScoreJobConfig, run_score_job
    from pipeline.registry import ScorerConfig

    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"text": 1}\n{"text": "\xff"}\n[]\n')
    config = ScoreJobConfig(
        {"web": [str(data)]}, str(tmp_path / "out"), ScorerConfig("fasttext", fasttext_model)
    )
    result = run_score_job(config, beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    assert (result["in"], result["scored"], result["dead_letter"]) == (3, 0, 3)


@pytest.mark.parametrize(
    "text", ["__label__hq", "__label___x", "____label__", "__label__label__", "a__label__b"]
)
def test_no_text_reaches_fasttext_with_a_label_token(text):
    from scorers.fasttext import LABEL_PREFIX, normalize, prediction_lines

    assert LABEL_PREFIX not in normalize(text)
    assert prediction_lines(pa.array([text])) == [normalize(text) + "\n"]  # Arrow path does the same


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--format", "json", "--digits", "40"], "--digits must be between 1 and 15"),
        (["law", "fit", "--law", "mixing"], "no runs (the table has no rows)"),
    ],
    ids=["export-digits", "law-empty-runs"],
)
def test_errors_say_what_the_user_did_not_library_internals(tmp_path, args, message):
    mixture = tmp_path / "mixture.yaml"
    mixture.write_text("web: 0.3\ncode: 0.7\n")
    runs = tmp_path / "runs.csv"
    runs.write_text("N,D,h_web,h_code,loss\n")
    extra = (
        ["--mixture", str(mixture)]
        if args[0] == "export"
        else ["--runs", str(runs), "--out", str(tmp_path / "l.json")]
    )
    code, _, err = _main([*args, *extra])
    assert code == 1 and message in err and "InvalidOperation" not in err, err
