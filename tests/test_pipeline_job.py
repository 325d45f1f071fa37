"""The Beam scoring job end to end: one shared run, a re-run into the same directory, the portable
runner, and the Dataflow/Spark/Flink graphs built without running."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from datamixer.cli import main
from mixer.files import MARKER
from pipeline import job as job_module
from pipeline import options as O
from pipeline import schema as S
from pipeline.corpus import CorpusOptions, build_corpus
from pipeline.job import ScoreJobConfig, build_pipeline, run_score_job
from pipeline.read import ReadOptions, expand_inputs
from pipeline.registry import SCORERS, ScoreBatches, ScorerConfig, scoring_transform
from pipeline.select import Selection, top_fraction_cutoff
from scorers.fasttext import FastTextQualityClassifier, FastTextScorer

BAD_LINES = [
    b'{"text": broken',
    b'{"text": "caf\xe9"}',
    b'{"body": "no text"}',
    b'{"text": 7}',
    b'{"text": ""}',
    json.dumps({"text": "x" * 200_000}).encode(),  # over --max-chars 100000
]
IN_MEMORY = ["--", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def read_dir(out: Path, prefix: str) -> pa.Table:
    files = sorted(out.glob(f"{prefix}-*.parquet"))
    assert files, f"no {prefix}-*.parquet in {out}"
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    corpus = root / "corpus"
    build_corpus(corpus, CorpusOptions(max_bytes_per_domain=80_000))
    prose = [json.loads(line)["text"] for line in (corpus / "prose.jsonl").read_text().splitlines()]
    code = [json.loads(line)["text"] for line in (corpus / "code.jsonl").read_text().splitlines()]
    clf = FastTextQualityClassifier(dim=16, bucket=20_000, epoch=10, lr=0.5).fit(prose, code)
    model = clf.save(root / "quality.bin")
    extra = root / "extra"
    extra.mkdir()
    (extra / "bad.jsonl").write_bytes(
        b"\n".join([b'{"text": "one fine prose document"}', *BAD_LINES]) + b"\n"
    )
    (extra / "corrupt.jsonl.gz").write_bytes(b"this is not gzip")
    legal = [json.loads(line) for line in (corpus / "legal.jsonl").read_text().splitlines()]
    pq.write_table(
        pa.table(
            {
                "id": [r["id"] + "-pq" for r in legal[:10]] + ["p-bad"],
                "text": [r["text"] for r in legal[:10]] + [None],
            }
        ),
        extra / "legal.parquet",
    )
    code_gz = [json.dumps({"id": f"gz-{i}", "text": t}) for i, t in enumerate(code[:5])]
    (extra / "code.jsonl.gz").write_bytes(gzip.compress("\n".join(code_gz).encode()))
    inputs = {
        "prose": [str(corpus / "prose.jsonl"), str(extra / "bad.jsonl")],
        "code": [str(corpus / "code.jsonl"), str(extra / "corrupt.jsonl.gz"), str(extra / "code.jsonl.gz")],
        "legal": [str(corpus / "legal.jsonl"), str(extra / "legal.parquet")],
    }
    n_records = sum(
        len(Path(f).read_bytes().splitlines())
        for f in (corpus / "prose.jsonl", extra / "bad.jsonl", corpus / "code.jsonl", corpus / "legal.jsonl")
    )
    n_records += (
        len(gzip.decompress((extra / "code.jsonl.gz").read_bytes()).splitlines()) + 11 + 1
    )  # parquet, corrupt
    return {"root": root, "model": str(model), "inputs": inputs, "n_records": n_records}


@pytest.fixture(scope="module")
def first_run(setup):
    out = setup["root"] / "scored"
    args = [
        "score",
        "--scorer",
        "fasttext",
        "--model",
        setup["model"],
        "--output",
        str(out),
        "--keep-top",
        "0.5",
        "--max-chars",
        "100000",
    ]
    for domain, globs in setup["inputs"].items():
        for g in globs:
            args += ["--input", g, "--domain", domain]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0  # default runner: DirectRunner, in-process for an input this small
    return {"out": out, "result": json.loads(buf.getvalue().strip().splitlines()[-1])}


def test_counts_add_up(setup, first_run):
    result, out = first_run["result"], first_run["out"]
    assert result["in"] == setup["n_records"]
    assert result["in"] == result["scored"] + result["dead_letter"]
    assert result["dead_letter"] == len(BAD_LINES) + 2  # + corrupt gzip file + parquet null text
    scored, dead = read_dir(out, S.SCORED_PREFIX), read_dir(out, S.DEAD_LETTER_PREFIX)
    assert scored.num_rows == result["scored"] and dead.num_rows == result["dead_letter"]
    assert scored.schema == S.scored_schema(["fasttext"])
    dataset = pyarrow.dataset.dataset(
        sorted(str(f) for f in out.glob("scored-*.parquet"))
    )  # readable as a set
    assert dataset.count_rows(filter=pyarrow.dataset.field(S.KEEP)) == result["kept"]
    stats = pq.read_table(out / S.DOMAIN_STATS_FILE)
    assert stats.to_pylist() == json.loads((out / S.DOMAIN_STATS_JSON).read_text())
    for row in stats.to_pylist():
        part = scored.filter(pa.compute.equal(scored.column(S.DOMAIN), row[S.DOMAIN])).to_pandas()
        assert row[S.DOCS_IN] == row[S.DOCS_SCORED] + row[S.DOCS_DEAD_LETTER]
        assert row[S.DOCS_SCORED] == len(part) and row[S.DOCS_KEPT] == int(part[S.KEEP].sum())
        assert row[S.TOKENS_IN] == part[S.N_TOKENS].sum()
        assert row[S.TOKENS_KEPT] == part.loc[part[S.KEEP], S.N_TOKENS].sum()


def test_every_bad_record_is_dead_lettered(first_run):
    dead = read_dir(first_run["out"], S.DEAD_LETTER_PREFIX).to_pylist()
    errors = " | ".join(sorted(r[S.ERROR] for r in dead))
    for reason in (
        "invalid JSON",
        "not valid UTF-8",
        "missing or null",
        "is int, not a string",
        "is empty",
        "more than max_chars",
        "cannot read file",
    ):
        assert reason in errors
    corrupt = [r for r in dead if r[S.SOURCE].endswith("corrupt.jsonl.gz")]
    assert len(corrupt) == 1 and corrupt[0][S.DOMAIN] == "code"
    assert all(r[S.RAW] is None or len(r[S.RAW]) <= S.RAW_MAX_CHARS for r in dead)


def test_scores_selection_and_tokens(setup, first_run):
    out = first_run["out"]
    scored = read_dir(out, S.SCORED_PREFIX).to_pandas()
    assert scored[S.ID].is_unique
    assert scored["score_fasttext"].between(0, 1).all()
    sample = scored.sort_values(S.ID).head(50)
    expected = FastTextScorer(setup["model"]).score_batch(sample[S.TEXT].tolist())
    np.testing.assert_allclose(sample["score_fasttext"], expected, rtol=1e-6)
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    counts = [len(e.ids) for e in tokenizer.encode_batch(sample[S.TEXT].tolist(), add_special_tokens=False)]
    assert sample[S.N_TOKENS].tolist() == counts
    stats = {r[S.DOMAIN]: r for r in pq.read_table(out / S.DOMAIN_STATS_FILE).to_pylist()}
    for domain, part in scored.groupby(S.DOMAIN):
        cutoff = top_fraction_cutoff(part["score_fasttext"].to_numpy(), 0.5)
        assert stats[domain]["cutoff_fasttext"] == pytest.approx(cutoff)
        # the top half, more only where documents tie at the cut-off (identical texts score alike)
        assert part[S.KEEP].sum() == (part["score_fasttext"] >= cutoff).sum() >= math.ceil(0.5 * len(part))
        assert (
            part.loc[part[S.KEEP], "score_fasttext"].min() >= part.loc[~part[S.KEEP], "score_fasttext"].max()
        )
    # prose was the positive class: more of it survives than of code
    assert stats["prose"]["cutoff_fasttext"] > stats["code"]["cutoff_fasttext"]


def test_rerun_replaces_output(setup, first_run, cli):
    out = first_run["out"]
    (out / "stale.txt").write_text("left over from an earlier run")
    tokenizer_before = (out / "tokenizer.json").read_bytes()
    config = setup["root"] / "domains.yaml"
    config.write_text(json.dumps({"domains": setup["inputs"]}))  # JSON is YAML
    args = [
        "score",
        "--config",
        str(config),
        "--model",
        setup["model"],
        "--output",
        str(out),
        "--threshold",
        "0.5",
        "--no-text",
        "--max-chars",
        "100000",
        "--num-shards",
        "2",
        *IN_MEMORY,
    ]
    result = cli(args)
    assert not (out / "stale.txt").exists()
    assert len(list(out.glob(f"{S.SCORED_PREFIX}-*.parquet"))) == 2
    assert (out / "tokenizer.json").read_bytes() == tokenizer_before  # trained once, reused
    assert (
        result["in"] == first_run["result"]["in"] and result["tokens_in"] == first_run["result"]["tokens_in"]
    )
    scored = read_dir(out, S.SCORED_PREFIX)
    assert S.TEXT not in scored.column_names
    keep = scored.column(S.KEEP).to_numpy(zero_copy_only=False)
    assert (keep == (scored.column("score_fasttext").to_numpy() >= 0.5)).all()
    assert result["kept"] == int(keep.sum())
    assert not list(out.parent.glob(".scored.*"))  # no temporary directories left beside it


def _job(setup, tokenizer: Path, out: str, batch_size: int = 4096) -> ScoreJobConfig:
    return ScoreJobConfig(
        inputs=setup["inputs"],
        output=str(setup["root"] / out),
        scorer=ScorerConfig("fasttext", setup["model"]),
        selection=Selection(keep_top=0.5),
        tokenizer=str(tokenizer),
        read=ReadOptions(max_chars=100_000, batch_size=batch_size),
    )


def output_bytes(out: Path) -> dict[str, bytes]:
    """Every file the job wrote except the tokenizer, by name."""
    return {f.name: f.read_bytes() for f in sorted(out.iterdir()) if f.name != "tokenizer.json"}


@pytest.fixture(scope="module")
def reference_run(setup, tmp_path_factory):
    """The job in-process (one worker) with its own copy of the first run's tokenizer."""
    tokenizer = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    first = sorted(setup["root"].glob("scored/tokenizer.json")) or []
    assert first, "first_run must have written its tokenizer"
    tokenizer.write_bytes(first[0].read_bytes())
    config = _job(setup, tokenizer, "reference")
    result = run_score_job(config, "direct", ["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    return {"out": Path(config.output), "result": result, "tokenizer": tokenizer}


def test_same_inputs_give_byte_identical_outputs(setup, first_run, reference_run, monkeypatch):
    """Another runner mode, two worker processes reading the files by blocks and a different batch
    size: the same bytes."""
    from pipeline import resume

    config = _job(setup, reference_run["tokenizer"], "again", batch_size=37)
    files = expand_inputs(config.inputs)
    monkeypatch.setattr(resume, "MIN_BLOCK_BYTES", 4_000)  # the small inputs' files cut into blocks
    size = resume.block_bytes(sum(Path(path).stat().st_size for _, path in files), 2)
    assert len(resume.units_of(files, resume.blocks_of(files, size, 2))) > len(files) + 3
    planned: list = []
    monkeypatch.setattr(job_module, "units_of", lambda *a: planned.extend(resume.units_of(*a)) or planned)
    result = run_score_job(
        config, "direct", ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    )
    assert planned == resume.units_of(files, resume.blocks_of(files, size, 2))  # the job read these blocks
    expected = output_bytes(reference_run["out"])
    names = [MARKER, S.DOMAIN_STATS_FILE, S.DOMAIN_STATS_JSON] + [
        f"{prefix}-{i:05d}-of-00004.parquet" for prefix in ("dead_letter", "scored") for i in range(4)
    ]
    assert sorted(expected) == sorted(names)  # fixed shard count, no temporary parts left
    again = output_bytes(Path(config.output))
    assert sorted(again) == sorted(expected)
    for name, data in expected.items():
        assert again[name] == data, name
    assert result["kept"] == reference_run["result"]["kept"] == first_run["result"]["kept"]
    scored = read_dir(reference_run["out"], S.SCORED_PREFIX)
    for i in range(4):  # each shard sorted by (domain, source) and by line within a file
        part = pq.read_table(reference_run["out"] / f"scored-{i:05d}-of-00004.parquet").to_pandas()
        keys = list(zip(part[S.DOMAIN], part[S.SOURCE], strict=True))
        assert keys == sorted(keys)
    assert scored.num_rows == result["scored"]


def test_portable_runner_matches_direct(setup, first_run, reference_run):
    config = _job(setup, reference_run["tokenizer"], "portable")
    result = run_score_job(config, runner="portable")  # PortableRunner, job_endpoint=embed, LOOPBACK
    for key in ("in", "scored", "dead_letter", "kept", "tokens_in", "tokens_kept"):
        assert result[key] == first_run["result"][key], key
    assert output_bytes(Path(config.output)) == output_bytes(reference_run["out"])


class _FailsOnMarker:
    """A scorer whose batch fails when any text contains 'raise-me' (a model blowing up)."""

    def setup(self):
        return self

    def score_batch(self, texts):
        if any("raise-me" in t for t in texts):
            raise RuntimeError("model blew up")
        return np.full(len(texts), 0.5)


def test_failing_batches_are_dead_lettered(tmp_path):
    lines = [json.dumps({"id": f"a{i}", "text": f"fine document number {i}"}) for i in range(6)]
    lines[4] = json.dumps({"id": "a4", "text": "this one says raise-me"})
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    SCORERS["fails"] = lambda config: ScoreBatches(_FailsOnMarker, config.name)
    try:
        config = ScoreJobConfig(
            inputs={"web": [str(tmp_path / "in.jsonl")]},
            output=str(tmp_path / "out"),
            scorer=ScorerConfig("fails"),
            read=ReadOptions(batch_size=3),  # documents 1-3 and 4-6: the second batch fails
        )
        result = run_score_job(config)
    finally:
        del SCORERS["fails"]
    assert (result["in"], result["scored"], result["dead_letter"]) == (6, 3, 3)
    dead = read_dir(tmp_path / "out", S.DEAD_LETTER_PREFIX).to_pylist()
    assert [r[S.RECORD] for r in dead] == [4, 5, 6] and [r[S.ID] for r in dead] == ["a3", "a4", "a5"]
    assert all(r[S.STAGE] == "score_fails" and "model blew up" in r[S.ERROR] for r in dead)
    scored = read_dir(tmp_path / "out", S.SCORED_PREFIX)
    assert sorted(scored.column(S.ID).to_pylist()) == ["a0", "a1", "a2"]


def _graph_names(args: list[str], setup, out: str) -> set[str]:
    config = ScoreJobConfig(
        inputs=setup["inputs"],
        output=out,
        scorer=ScorerConfig("fasttext", setup["model"]),
        selection=Selection(keep_top=0.1),
    )
    pipeline = beam.Pipeline(options=O.pipeline_options("direct", args))
    build_pipeline(
        pipeline,
        config,
        expand_inputs(config.inputs),
        Tokenizer.from_str(
            '{"version":"1.0","model":{"type":"WordLevel","vocab":{"[UNK]":0},"unk_token":"[UNK]"},'
            '"pre_tokenizer":{"type":"Whitespace"}}'
        ).to_str(),
        out,
    )
    proto = pipeline.to_runner_api()
    assert type(pipeline.runner).__name__ == args[0].split("=")[1]
    return {t.unique_name for t in proto.components.transforms.values()}


@pytest.mark.parametrize(
    "args",
    [
        O.dataflow_args(
            "my-project-123",
            "us-central1",
            "gs://my-bucket/tmp",
            accelerator="type:nvidia-l4;count:1;install-nvidia-driver",
            container_image="us-docker.pkg.dev/my-project-123/repo/datamixer:0.1",
            machine_type="g2-standard-4",
        ),
        O.spark_args("spark://spark-master:7077"),
        O.flink_args("flink-master:8081", parallelism=8),
    ],
    ids=["dataflow", "spark", "flink"],
)
def test_remote_runner_graphs_build_without_running(setup, args):
    out = "gs://my-bucket/scored" if "Dataflow" in args[0] else "/tmp/unused-output"
    names = _graph_names(args, setup, out)
    for step in (
        "Files",
        "Read",
        "Tokenize",
        "Score[fasttext]",
        "Stage",
        "Select",
        "DeadLetters",
        "Write",
        "Write/ByShard",
        "Write/WriteShards",
        "Write/Commit",
        "Select/Cutoff",
    ):
        assert step in names, step


def test_dataflow_gpu_and_container_flags():
    args = O.dataflow_args(
        "p-123456",
        "europe-west4",
        "gs://b-1/tmp",
        accelerator="type:nvidia-l4;count:1",
        container_image="img:1",
    )
    opts = O.pipeline_options("direct", args).get_all_options()
    assert opts["runner"] == "DataflowRunner" and opts["sdk_container_image"] == "img:1"
    assert opts["dataflow_service_options"] == ["worker_accelerator=type:nvidia-l4;count:1"]
    assert O.pipeline_options().get_all_options()["direct_num_workers"] == 0  # all cores


def test_an_argument_that_is_no_flag_or_value_is_refused_not_dropped_by_beam():
    args = ["--direct_num_workers", "3", "--experiments=a", "--save_main_session"]
    opts = O.pipeline_options("direct", args)
    assert opts.get_all_options()["direct_num_workers"] == 3
    for args in (["b.jsonl"], ["--direct_num_workers=2", "b.jsonl"], ["--", "b.jsonl"]):
        with pytest.raises(ValueError, match="unexpected argument 'b.jsonl': quote a glob"):
            O.pipeline_options("direct", args)


def test_registry_seam(setup):
    class Length:
        def setup(self):
            return self

        def score_batch(self, texts):
            return np.array([min(1.0, len(t) / 1000) for t in texts])

    with pytest.raises(ValueError, match="known scorers"):
        scoring_transform(ScorerConfig("nope"))
    SCORERS["length"] = lambda config: ScoreBatches(Length, config.name)
    try:
        config = ScoreJobConfig(inputs=setup["inputs"], output="/tmp/unused", scorer=ScorerConfig("length"))
        pipeline = beam.Pipeline()
        build_pipeline(pipeline, config, expand_inputs(config.inputs), "{}", "/tmp/unused")
        names = {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}
        assert "Score[length]/Predict" in names
    finally:
        del SCORERS["length"]


def test_cli_rejects_bad_arguments(setup, capsys, tmp_path):
    base = ["score", "--model", setup["model"], "--output", str(tmp_path / "o")]
    assert (
        main([*base, "--input", "a", "--input", "b", "--domain", "x", "--domain", "y", "--domain", "z"]) == 1
    )
    assert "one --domain per --input" in capsys.readouterr().err
    assert (
        main(
            [
                *base,
                "--input",
                setup["inputs"]["code"][0],
                "--domain",
                "c",
                "--keep-top",
                "0.1",
                "--threshold",
                "0.5",
            ]
        )
        == 1
    )
    assert "not both" in capsys.readouterr().err
    assert main([*base, "--input", str(tmp_path / "none*.jsonl"), "--domain", "c"]) == 1
    assert "no files match" in capsys.readouterr().err
