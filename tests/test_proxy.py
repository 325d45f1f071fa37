"""Proxy trainer: model sizes, data split and sampling, training rows, checkpoints, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from datamixer.cli import main
from mixer.runs import load_runs
from pipeline import schema
from pipeline.proxy.data import (
    MixtureSampler,
    load_proxy_data,
    read_kept,
    split_domain,
    train_tokenizer,
)
from pipeline.proxy.fixtures import write_stdlib_score_dir
from pipeline.proxy.model import SIZES, build_model, count_non_embedding, llama_config
from pipeline.proxy.train import TrainConfig, train_proxy

CONFIG = TrainConfig(context=64, batch_size=8, eval_points=3, warmup_steps=5)
DOMAINS = ("code", "docstrings", "reference")


@pytest.fixture(scope="module")
def score_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stdlib_score_dir(tmp_path_factory.mktemp("score"), max_docs=40)


@pytest.fixture(scope="module")
def data(score_dir: Path):
    return load_proxy_data(score_dir, val_tokens=2048)


@pytest.mark.parametrize("name", list(SIZES))
def test_named_size_counts_non_embedding_params_exactly(name: str) -> None:
    shape = SIZES[name]
    model = build_model(llama_config(name, vocab_size=300, context=64))
    assert count_non_embedding(model) == shape.non_embedding_params()
    total = sum(p.numel() for p in model.parameters())
    assert total == shape.non_embedding_params() + shape.embedding_params(300)


def test_sizes_grow_and_are_named_by_their_count() -> None:
    counts = [s.non_embedding_params() for s in SIZES.values()]
    assert counts == sorted(counts)
    for name, n in zip(SIZES, counts, strict=True):
        nominal = float(name[:-1]) * (1e3 if name.endswith("k") else 1e6)
        assert 0.9 < n / nominal < 1.15, (name, n)


def test_split_is_seeded_by_document_not_file_order(data, score_dir: Path, tmp_path: Path) -> None:
    table = pq.read_table(next(score_dir.glob("scored-*.parquet")))
    shuffled = table.take(np.random.default_rng(1).permutation(table.num_rows))
    half = table.num_rows // 2
    pq.write_table(shuffled.slice(0, half), tmp_path / "scored-00000-of-00002.parquet")
    pq.write_table(shuffled.slice(half), tmp_path / "scored-00001-of-00002.parquet")
    (tmp_path / "tokenizer.json").write_text(data.tokenizer_json)
    again = load_proxy_data(tmp_path, val_tokens=2048)
    assert again.domains == DOMAINS
    for d in DOMAINS:
        assert np.array_equal(again.valid[d], data.valid[d])
        assert again.valid[d].size == 2048
        assert np.array_equal(np.sort(again.train[d]), np.sort(data.train[d]))


def test_validation_documents_never_reach_training() -> None:
    docs = [[i] * 50 for i in range(10)]
    train, valid, n_val = split_domain(docs, [f"d{i}" for i in range(10)], 120, 0, eos_id=None)
    assert n_val == 3 and valid.size == 120 and train.size == 350
    assert not set(valid.tolist()) & set(train.tolist())
    other, _, _ = split_domain(docs, [f"d{i}" for i in range(10)], 120, 1, eos_id=None)
    assert not np.array_equal(np.sort(other), np.sort(train))  # the seed picks other documents


def test_sampler_matches_the_mixture_exactly() -> None:
    streams = {d: np.full(1000, i, dtype=np.int32) for i, d in enumerate("abc")}
    sampler = MixtureSampler(streams, {"a": 0.5, "b": 0.3, "c": 0.2}, context=16, seed=0)
    batch = np.concatenate([sampler.batch(10) for _ in range(10)])
    counts = np.bincount(batch[:, 0], minlength=3)
    assert counts.tolist() == [50, 30, 20]
    with pytest.raises(ValueError, match="'c'"):
        MixtureSampler({**streams, "c": streams["c"][:10]}, {"a": 0.5, "c": 0.5}, context=16)


def test_score_dir_tokenizer_is_used_and_schema_is_checked(score_dir: Path, tmp_path: Path) -> None:
    texts = read_kept(score_dir)[schema.TEXT].tolist()
    own = train_tokenizer(texts[:30], vocab_size=300)
    (tmp_path / "tok.json").write_text(own)
    given = load_proxy_data(score_dir, tokenizer=tmp_path / "tok.json")
    assert given.vocab_size == 300 and given.tokenizer_source == str(tmp_path / "tok.json")
    with pytest.raises(ValueError, match="not both"):
        load_proxy_data(score_dir, tokenizer=tmp_path / "tok.json", vocab_size=500)
    pq.write_table(
        pq.read_table(next(score_dir.glob("scored-*"))).drop(["keep"]), tmp_path / "scored-0.parquet"
    )
    with pytest.raises(ValueError, match="keep"):
        read_kept(tmp_path)


def test_training_rows_are_a_valid_deterministic_runs_table(data) -> None:
    weights = {"code": 0.5, "reference": 0.5}
    rows = train_proxy(data, weights, 16_000, "20k", mixture="m0", config=CONFIG, threads=1)
    again = train_proxy(data, weights, 16_000, "20k", mixture="m0", config=CONFIG, threads=1)
    assert rows == again
    runs = load_runs(pd.DataFrame(rows), targets=["loss", *(f"loss_{d}" for d in DOMAINS)])
    assert runs["D"].tolist() == [4096, 8192, 16384]
    assert runs["run"].is_unique and (runs["N"] == SIZES["20k"].non_embedding_params()).all()
    assert runs["h_docstrings"].eq(0).all() and runs["h_code"].eq(0.5).all()
    assert runs["loss"].is_monotonic_decreasing
    expected = runs[[f"loss_{d}" for d in DOMAINS]].mean(axis=1)
    assert np.allclose(runs["loss"], expected)
    # Constant LR after warm-up and a budget-independent data order: a shorter run is a prefix.
    short = train_proxy(data, weights, 8_000, "20k", mixture="m0", config=CONFIG, threads=1)
    assert short == rows[:2]


def test_loss_depends_on_the_mixture(data) -> None:
    config = TrainConfig(context=64, batch_size=8, eval_points=1, lr=3e-3)
    code = train_proxy(data, {"code": 1.0}, 40_000, "20k", config=config, threads=1)[-1]
    prose = train_proxy(data, {"reference": 1.0}, 40_000, "20k", config=config, threads=1)[-1]
    assert code["loss_code"] < prose["loss_code"] - 0.2
    assert prose["loss_reference"] < code["loss_reference"] - 0.2


def test_checkpoint_loads_as_a_hugging_face_causal_lm(data, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = train_proxy(data, {"code": 1.0}, 2_000, "20k", config=CONFIG, out=tmp_path / "ck", threads=1)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ck")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "ck")
    ids = torch.from_numpy(data.valid["code"][None, :64].astype(np.int64))
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert abs(loss - rows[-1]["loss_code"]) < 1.0  # same model, one window of the same split
    assert tokenizer.decode(tokenizer("def f(x): return x")["input_ids"]) == "def f(x): return x"
    assert tokenizer.eos_token == data.eos_token == "<|endoftext|>"
    manifest = json.loads((tmp_path / "ck" / "proxy_run.json").read_text())
    assert manifest["N"] == SIZES["20k"].non_embedding_params() and manifest["rows"] == rows


def test_cli_sizes_and_train(
    score_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], cli
) -> None:
    assert cli(["proxy", "sizes"])["sizes"]["100k"] == SIZES["100k"].non_embedding_params()
    mixture = tmp_path / "mix.yaml"
    mixture.write_text("weights:\n  code: 0.25\n  docstrings: 0.25\n  reference: 0.5\n")
    args = [
        "proxy",
        "train",
        "--data",
        str(score_dir),
        "--mixture",
        str(mixture),
        "--tokens",
        "8k",
        "--size",
        "20k",
        "--out",
        str(tmp_path / "ck"),
        "--runs",
        str(tmp_path / "runs.parquet"),
        "--context",
        "64",
        "--eval-every",
        "3k",
        "--val-tokens",
        "1024",
        "--threads",
        "1",
    ]
    result = cli(args)
    assert result["D"] == 8192 and result["rows"] == 2 and result["mixture"] == "mix"
    runs = load_runs(tmp_path / "runs.parquet")
    assert runs["run"].tolist() == ["mix/20k/seed0/6144", "mix/20k/seed0/8192"]  # not in warm-up
    assert main(args) == 0  # the same run again adds no duplicate rows
    assert len(pd.read_parquet(tmp_path / "runs.parquet")) == 2
    assert main([*args[:8], "--size", "7q", *args[10:]]) == 1
    assert "unknown model size '7q'" in capsys.readouterr().err
