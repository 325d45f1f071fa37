"""PreSelect end to end on real text: models that get better at one domain label that domain.

Four tiny proxy models of increasing quality are trained on the `legal` domain of the bundled corpus
(one run of the proxy trainer, saved after 10, 40, 120 and 300 steps: its data order does not depend
on the budget, so each checkpoint is the model a run to that budget gives). Their benchmark score is
minus their loss on legal's validation split. Then, on a pool of legal, code and prose documents
none of the models saw: legal documents must get a higher predictive strength than the others, and a
fastText classifier trained on the labels must rank held-out legal documents above code and prose,
where the same classifier trained on a random labelling of the pool cannot.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from datamixer.cli import main
from pipeline import schema as S

TARGET = "legal"
STEPS = (10, 40, 120, 300)
TOP = 0.15
AUC_FLOOR = 0.9
EPOCHS, BUCKETS = 25, 20000  # few training documents: more epochs; small buckets: a small model
# DCLM's fixed settings on both sides of the permutation test (the default search would tune each)
FASTTEXT_ARGS = ["--preset", "dclm", "--epoch", str(EPOCHS), "--bucket", str(BUCKETS)]
IN_MEMORY = ["--", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _train_checkpoints(score_dir: Path, out: Path) -> tuple[list[Path], list[float]]:
    """One proxy run on the target domain, saved at each of STEPS; scores = minus validation loss."""
    import torch
    from tokenizers import Tokenizer

    from pipeline.proxy.data import MixtureSampler, load_proxy_data
    from pipeline.proxy.model import build_model, llama_config, save_checkpoint
    from pipeline.proxy.train import TrainConfig, evaluate, make_optimizer, torch_threads, train_step

    data = load_proxy_data(score_dir, val_tokens=4096)
    config = TrainConfig(context=64, batch_size=8, warmup_steps=5)
    eos_id = Tokenizer.from_str(data.tokenizer_json).token_to_id(data.eos_token)
    dirs, scores = [], []
    with torch_threads(1):
        model = build_model(llama_config("20k", data.vocab_size, config.context, eos_id), seed=0)
        sampler = MixtureSampler(data.train, {TARGET: 1.0}, config.context, seed=0)
        optimizer, schedule = make_optimizer(model, config)
        for step in range(1, max(STEPS) + 1):
            train_step(model, optimizer, schedule, torch.from_numpy(sampler.batch(config.batch_size)), config)
            if step in STEPS:
                scores.append(-evaluate(model, data, config)[TARGET])
                dirs.append(
                    save_checkpoint(
                        model, data.tokenizer_json, out / f"step{step:04d}", data.eos_token, config.context
                    )
                )
    return dirs, scores


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from pipeline.corpus import CorpusOptions, build_corpus

    root = tmp_path_factory.mktemp("preselect")
    build_corpus(root / "corpus", CorpusOptions(max_bytes_per_domain=240_000, max_doc_chars=1200))
    parts: dict[str, dict[str, list[dict]]] = {}
    for domain in ("code", "prose", "legal"):
        lines = (root / "corpus" / f"{domain}.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        # every 10 documents: legal 4 train / 3 pool / 3 held out; the others 5 pool / 5 held out
        cut = (4, 7) if domain == TARGET else (0, 5)
        parts[domain] = {
            "train": [r for i, r in enumerate(records) if i % 10 < cut[0]],
            "pool": [r for i, r in enumerate(records) if cut[0] <= i % 10 < cut[1]],
            "held_out": [r for i, r in enumerate(records) if i % 10 >= cut[1]],
        }
    train = parts[TARGET]["train"]
    columns = {
        S.ID: [r["id"] for r in train],
        S.DOMAIN: [TARGET] * len(train),
        S.SOURCE: ["corpus"] * len(train),
        S.N_CHARS: [len(r["text"]) for r in train],
        S.N_TOKENS: [0] * len(train),
        S.KEEP: [True] * len(train),
        S.TEXT: [r["text"] for r in train],
    }
    schema = S.scored_schema([])  # the stage columns (language, drop_reason, ...) stay null
    table = pa.table({n: columns.get(n, [None] * len(train)) for n in schema.names}, schema=schema)
    (root / "scored").mkdir()
    pq.write_table(table, root / "scored" / "scored-00000-of-00001.parquet")
    models, scores = _train_checkpoints(root / "scored", root / "models")
    for domain, split in parts.items():
        _write_jsonl(root / "pool" / f"{domain}.jsonl", split["pool"])
        _write_jsonl(root / "held_out" / f"{domain}.jsonl", split["held_out"])
    (root / "pool" / "broken.jsonl").write_text('{"id": "e", "text": ""}\nnot json\n{"id": "n"}\n')
    return {"root": root, "parts": parts, "models": models, "scores": scores}


@pytest.fixture(scope="module")
def labelled(setup: dict) -> dict:
    import contextlib
    import io

    out = setup["root"] / "labels"
    args = [
        "preselect",
        "label",
        "--input",
        str(setup["root"] / "pool" / "*.jsonl"),
        "--models",
        ",".join(str(m) for m in setup["models"]),
        "--scores",
        ",".join(f"{s:.6f}" for s in setup["scores"]),
        "--out",
        str(out),
        "--top",
        str(TOP),
        *IN_MEMORY,
    ]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    result = json.loads(buf.getvalue().strip().splitlines()[-1])
    return {"out": out, "result": result, "strengths": pq.read_table(out / "strengths.parquet").to_pandas()}


def _domain(ids: pd.Series) -> pd.Series:
    return ids.str.split("-").str[0]


def test_models_improve_on_the_target_domain(setup: dict) -> None:
    assert np.all(np.diff(setup["scores"]) > 0), setup["scores"]


def test_label_counts_and_files(setup: dict, labelled: dict) -> None:
    result, out, table = labelled["result"], labelled["out"], labelled["strengths"]
    n_pool = sum(len(p["pool"]) for p in setup["parts"].values())
    k = math.ceil(TOP * n_pool)
    assert result["documents"] == n_pool == len(table)
    assert result["positives"] == result["negatives"] == k
    assert result["dead_letter"] == 3  # empty text, invalid JSON, no text field
    dead = pq.read_table(out / "dead_letter.parquet").to_pandas()
    assert sorted(dead[S.RECORD]) == [1, 2, 3] and set(dead[S.STAGE]) == {"read"}
    assert [m["score"] for m in result["models"]] == pytest.approx(setup["scores"], abs=1e-6)
    assert list(table.columns) == [
        "id",
        "source_file",
        "n_chars",
        "bpc_step0010",
        "bpc_step0040",
        "bpc_step0120",
        "bpc_step0300",
        "strength",
        "loss_score_r",
        "label",
    ]
    for name, label in (("positives.jsonl", "__label__hq"), ("negatives.jsonl", "__label__lq")):
        rows = [json.loads(line) for line in (out / name).read_text().splitlines()]
        assert len(rows) == k and {r["label"] for r in rows} == {label}
        assert all(r["text"].strip() for r in rows)
        assert {r["id"] for r in rows} == set(table.loc[table["label"] == label, "id"])
    assert (
        table.loc[table.label == "__label__hq", "strength"].min()
        >= table.loc[table.label == "__label__lq", "strength"].max()
    )
    manifest = json.loads((out / "preselect.json").read_text())
    assert manifest["positives"] == k and manifest["models"][0]["model"] == str(setup["models"][0])


def test_target_domain_has_higher_predictive_strength(labelled: dict) -> None:
    table = labelled["strengths"]
    table["domain"] = _domain(table["id"])
    means = table.groupby("domain")["strength"].mean()
    print("mean strength per domain:", means.round(3).to_dict())
    assert means[TARGET] > means["code"] + 0.15 and means[TARGET] > means["prose"] + 0.1
    target_vs_code = table[table.domain.isin([TARGET, "code"])]
    auc = roc_auc_score(target_vs_code.domain == TARGET, target_vs_code.strength)
    print(f"strength AUC, {TARGET} vs code: {auc:.3f}")
    assert auc > 0.9
    # better models compress the target domain better, on average
    bpc = table.loc[table.domain == TARGET, [c for c in table.columns if c.startswith("bpc_")]].mean()
    assert np.all(np.diff(bpc.to_numpy()) < 0)


def _heldout(setup: dict) -> tuple[list[str], np.ndarray]:
    texts, y = [], []
    for domain, split in setup["parts"].items():
        texts += [r["text"] for r in split["held_out"]]
        y += [domain == TARGET] * len(split["held_out"])
    return texts, np.array(y)


@pytest.fixture(scope="module")
def classifier(setup: dict, labelled: dict) -> tuple[Path, dict]:
    """The second command of docs/preselect.md: `datamixer fasttext train` on the labels; the model's path
    and the command's JSON result."""
    out = labelled["out"]
    model = setup["root"] / "preselect.bin"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert (
            main(
                [
                    "fasttext",
                    "train",
                    "--positive",
                    str(out / "positives.jsonl"),
                    "--negative",
                    str(out / "negatives.jsonl"),
                    "--out",
                    str(model),
                    *FASTTEXT_ARGS,
                ]
            )
            == 0
        )
    return model, json.loads(stdout.getvalue().strip().splitlines()[-1])


def test_fasttext_on_the_labels_finds_the_target_domain(setup: dict, labelled: dict, classifier) -> None:
    """`datamixer fasttext train` reads the labels; its classifier ranks held-out legal documents first,
    better than the same classifier trained on any of 20 random labellings of the pool with the same
    counts (a permutation test, p < 0.05). A random labelling is not at 0.5 every time: legal text is
    so distinct that a chance surplus of legal documents on one side is learned in either direction."""
    from scorers.fasttext import FastTextQualityClassifier, FastTextScorer

    model, trained = classifier
    k = labelled["result"]["positives"]
    assert trained["positive"] == trained["negative"] == k

    texts, y = _heldout(setup)
    auc = roc_auc_score(y, FastTextScorer(str(model)).score_batch(texts))
    pool = {r["id"]: r["text"] for split in setup["parts"].values() for r in split["pool"]}
    random_aucs = []
    for seed in range(20):
        ids = np.random.default_rng(seed).permutation(labelled["strengths"]["id"].to_numpy())
        clf = FastTextQualityClassifier(seed=0, preset="dclm", epoch=EPOCHS, bucket=BUCKETS).fit(
            [pool[i] for i in ids[:k]], [pool[i] for i in ids[k : 2 * k]]
        )
        random_aucs.append(roc_auc_score(y, clf.predict_proba(texts)))
    print(
        f"held-out AUC, {TARGET} vs code+prose: PreSelect labels {auc:.3f}; 20 random labellings: "
        f"mean {np.mean(random_aucs):.3f}, max {max(random_aucs):.3f}"
    )
    assert auc >= AUC_FLOOR
    assert auc > max(random_aucs)
    assert abs(np.mean(random_aucs) - 0.5) < 0.15


def test_score_job_uses_the_classifier(setup: dict, classifier, cli) -> None:
    """The third command of docs/preselect.md: `datamixer score` with the PreSelect classifier."""
    model, _ = classifier
    scored = setup["root"] / "scored_heldout"
    result = cli(
        [
            "score",
            "--input",
            str(setup["root"] / "held_out" / "*.jsonl"),
            "--domain",
            "heldout",
            "--scorer",
            "fasttext",
            "--model",
            str(model),
            "--keep-top",
            "0.3",
            "--tokenizer",
            str(setup["models"][0] / "tokenizer.json"),
            "--output",
            str(scored),
            *IN_MEMORY,
        ]
    )
    texts, _ = _heldout(setup)
    assert result["scored"] == len(texts)
    frame = pd.concat([pd.read_parquet(p) for p in scored.glob("scored-*.parquet")])
    kept = _domain(frame.loc[frame[S.KEEP], S.ID])
    print("kept by domain:", kept.value_counts().to_dict())
    assert (kept == TARGET).mean() > 0.6  # legal is 27% of the held-out documents


@pytest.mark.slow  # ~50 s: two more PreSelect jobs, one multi-process
def test_rerun_is_byte_identical(setup: dict, labelled: dict) -> None:
    """Two models are enough here: same inputs and seed, same bytes (multi-process DirectRunner)."""
    from pipeline.preselect import PreselectConfig, run_preselect_job

    def run(out: Path, extra: list[str]) -> Path:
        config = PreselectConfig(
            inputs=[str(setup["root"] / "pool" / "legal.jsonl")],
            models=[str(m) for m in setup["models"][1::2]],
            scores=setup["scores"][1::2],
            output=str(out),
            top=0.2,
            threads=1,
        )
        run_preselect_job(config, beam_args=extra)
        return out

    first = run(setup["root"] / "again1", IN_MEMORY[1:])
    second = run(setup["root"] / "again2", ["--direct_num_workers=2"])  # default multi-processing
    for name in ("strengths.parquet", "positives.jsonl", "negatives.jsonl", "dead_letter.parquet"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.parametrize(
    "models, scores, message",
    [
        ("a,b,c", "1,2", "3 models but 2 benchmark scores"),
        ("a", "1", "at least 2 models"),
        ("a,b", "1,one", "'one' is not a number"),
        ("a,b", "1,1", "all benchmark scores are equal"),
    ],
)
def test_cli_rejects_bad_models_and_scores(
    tmp_path: Path, capsys, models: str, scores: str, message: str
) -> None:
    _write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "text": "hello"}])
    args = [
        "preselect",
        "label",
        "--input",
        str(tmp_path / "in.jsonl"),
        "--models",
        models,
        "--scores",
        scores,
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_cli_rejects_missing_model_dir_and_bad_top(tmp_path: Path, capsys) -> None:
    _write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "text": "hello"}])
    base = ["preselect", "label", "--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out")]
    assert main([*base, "--models", f"{tmp_path},{tmp_path}", "--scores", "1,2"]) == 1
    assert "no config.json" in capsys.readouterr().err
    assert main([*base, "--models", "a,b", "--scores", "1,2", "--top", "0.6"]) == 1
    assert "--top must be a fraction in (0, 0.5]" in capsys.readouterr().err
    assert main([*base, "--models", "a,b", "--scores", "1,2", "--input", str(tmp_path / "none*.jsonl")]) == 1
    assert "no files match" in capsys.readouterr().err
