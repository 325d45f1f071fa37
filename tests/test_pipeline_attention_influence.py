"""`datamixer score --scorer attention-influence`: the scorer runs in the Beam job through RunInference."""

from __future__ import annotations

import inspect
import json
import textwrap

import numpy as np
import pandas as pd
import pytest

from datamixer.cli import main

pytest.importorskip("torch")


def _documents() -> list[str]:
    import collections
    import json as json_module

    docs = [
        inspect.getdoc(obj)
        for obj in (
            collections.OrderedDict,
            collections.Counter,
            json_module.dumps,
            json_module.loads,
            textwrap.dedent,
            inspect.getdoc,
        )
    ]
    docs = [d for d in docs if d and len(d) > 80]
    repeated = ["alpha beta gamma delta " * 12, "one two three four five six " * 10]
    return docs + repeated


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, tiny_checkpoint):
    """A small random Llama with a trained BPE: enough to exercise the job's plumbing."""
    root = tmp_path_factory.mktemp("ai_job")
    model_dir = tiny_checkpoint(_documents() * 3, root / "model", 128)
    heads = root / "heads.json"
    heads.write_text(json.dumps({"selected": [[0, 1], [1, 2]]}))
    return root, model_dir, heads


def test_score_job_writes_attention_influence_scores_and_dead_letters(tiny_lm, capsys):
    from scorers.attention_influence import AttentionInfluenceScorer

    root, model_dir, heads = tiny_lm
    docs = _documents()
    corpus = root / "docs.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(docs)]
    corpus.write_text("\n".join([*lines, "{not json", json.dumps({"id": "empty", "text": ""})]) + "\n")
    out = root / "scored"
    rc = main(
        [
            "score",
            "--input",
            str(corpus),
            "--domain",
            "docs",
            "--scorer",
            "attention-influence",
            "--model",
            str(model_dir),
            "--heads",
            str(heads),
            "--output",
            str(out),
            "--keep-top",
            "0.5",
            "--vocab-size",
            "300",
            "--",
            "--direct_num_workers=1",
            "--direct_running_mode=in_memory",
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["in"] == len(docs) + 2
    assert result["in"] == result["scored"] + result["dead_letter"]
    assert result["dead_letter"] == 2
    scored = pd.concat([pd.read_parquet(p) for p in out.glob("scored-*.parquet")]).set_index("id")
    assert np.isfinite(scored["score_attention_influence"]).all()
    assert scored["keep"].sum() == pytest.approx(len(docs) / 2, abs=1)

    # The job's scores are the scorer's own, computed outside Beam.
    direct = AttentionInfluenceScorer(model_dir, heads).setup().score_batch(docs)
    expected = pd.Series(direct, index=[f"d{i}" for i in range(len(docs))])
    np.testing.assert_allclose(
        scored.loc[expected.index, "score_attention_influence"], expected, rtol=1e-4, atol=1e-5
    )


def test_attention_influence_needs_heads(tiny_lm, capsys):
    root, model_dir, _ = tiny_lm
    corpus = root / "one.jsonl"
    corpus.write_text(json.dumps({"text": "some text here"}) + "\n")
    rc = main(
        [
            "score",
            "--input",
            str(corpus),
            "--domain",
            "d",
            "--scorer",
            "attention-influence",
            "--model",
            str(model_dir),
            "--output",
            str(root / "x"),
        ]
    )
    assert rc == 1
    assert "--heads" in capsys.readouterr().err
