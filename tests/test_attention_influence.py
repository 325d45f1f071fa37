"""AttentionInfluence on a tiny Llama that grows copy (induction) heads, trained once per module (~30-60 s).

Recipe (FINDINGS.md): random tokens that repeat with a random period of 4-30, 2 layers, 4 heads; a
word-level vocabulary so that probe text and test documents use only tokens the model trained on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random

import numpy as np
import pytest
import torch

from scorers import attention_influence as ai

# Every test here uses the `tiny` model, trained once per run (about a minute on 2 free cores).
pytestmark = pytest.mark.slow

TEMPLATE = [
    "Extract",
    "the",
    "value",
    "corresponding",
    "to",
    "specified",
    "key",
    "in",
    "JSON",
    "object",
    "below",
    "Key",
    "Value",
    '{"',
    '":',
    '"',
    '",',
    '"}',
    ":",
    ".",
    '."',
    '.",',
    '."}',
]
N_WORDS = 128
LENGTH = 64


def _words() -> list[str]:
    return ["".join(w) for w in itertools.product("bdfgklmnprstvz", "aeiou", "bdfgklmnprstvz")][:N_WORDS]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1}
    for word in TEMPLATE + _words():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def _periodic_batch(gen: torch.Generator, batch: int, vocab: int) -> torch.Tensor:
    x = torch.empty(batch, LENGTH, dtype=torch.long)
    for row, period in enumerate(torch.randint(4, 31, (batch,), generator=gen).tolist()):
        span = torch.randint(2, vocab, (period,), generator=gen)
        x[row] = span.repeat(LENGTH // period + 1)[:LENGTH]
    return x


@contextlib.contextmanager
def _one_thread():
    """Tiny models run faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(out_dir, steps: int = 600, batch: int = 32, seed: int = 0) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer()
    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=False,
    )
    with _one_thread():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1
        )
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            x = _periodic_batch(gen, batch, vocab)
            loss = model(input_ids=x, labels=x).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Directory of the trained tiny model, a probe corpus (JSONL of word sentences) and its HEADS.json."""
    from datamixer.cli import main

    root = tmp_path_factory.mktemp("attention_influence")
    model_dir = root / "model"
    _train(model_dir)
    rng = random.Random(0)
    words = _words()
    corpus = root / "corpus.jsonl"
    with corpus.open("w") as handle:
        for _ in range(400):
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 6))) + "."
            handle.write(json.dumps({"text": sentence}) + "\n")
    heads = root / "heads.json"
    assert (
        main(
            [
                "attention-influence",
                "heads",
                "--model",
                str(model_dir),
                "--out",
                str(heads),
                "--corpus",
                str(corpus),
                "--probes",
                "64",
                "--max-tokens",
                "128",
                "--top-fraction",
                "0.5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return {"model": model_dir, "corpus": corpus, "heads": heads, "root": root}


def _load(model_dir, attn="eager"):
    from scorers import lm

    return lm.load_causal_lm(model_dir, "cpu", None, attn_implementation=attn)


def _induction_scores(model_dir) -> np.ndarray:
    """Independent copy measure: attention from a repeated token to the token after its first occurrence."""
    model, _ = _load(model_dir)
    gen = torch.Generator().manual_seed(123)
    first = torch.randint(2, model.config.vocab_size, (32, 24), generator=gen)
    x = torch.cat([first, first[:, :16]], dim=1)
    with torch.no_grad():
        attentions = model(input_ids=x, output_attentions=True).attentions
    rows = torch.arange(25, 40)
    return np.array([[float(a[:, h, rows, rows - 23].mean()) for h in range(a.shape[1])] for a in attentions])


def test_detector_ranks_copying_heads_highest(tiny):
    document = json.loads(tiny["heads"].read_text())
    retrieval = np.array(document["scores"])
    induction = _induction_scores(tiny["model"])
    copying = induction > 0.4
    assert copying.any() and (~copying).any()
    assert retrieval[copying].min() > retrieval[~copying].max()  # every copy head outranks every other
    for layer, head in document["selected"]:
        assert copying[layer, head]
    assert len(document["selected"]) == 4 and document["provenance"]["probes"] == 64


def _mean_loss(model, tokens: torch.Tensor, heads, start: int) -> float:
    from scorers import lm

    mask = torch.ones_like(tokens)
    with torch.no_grad(), ai.uniform_heads(model, heads):
        hidden = lm.hidden_states(model, tokens, mask)
        logits = model.get_output_embeddings()(hidden[:, start - 1 : -1]).float()
    return float(
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, start:].reshape(-1))
    )


def test_masking_detected_heads_hurts_copy_text_far_more_than_random_heads(tiny):
    model, _ = _load(tiny["model"], ai.register_attention())
    detected = ai.load_heads(tiny["heads"], model)
    gen = torch.Generator().manual_seed(7)
    vocab = model.config.vocab_size
    span = torch.stack([torch.randperm(vocab - 2, generator=gen)[:24] + 2 for _ in range(16)])
    copy_text = torch.cat([span, span[:, :16]], dim=1)  # second half is predictable only by copying
    plain_text = torch.stack([torch.randperm(vocab - 2, generator=gen)[:40] + 2 for _ in range(16)])

    def delta(tokens, heads):
        return _mean_loss(model, tokens, heads, 25) - _mean_loss(model, tokens, [], 25)

    # Every other set of as many heads. In a 2-layer model the copy circuit also needs layer 0's
    # previous-token head, which is no retrieval head, so sets holding it hurt copying too.
    all_heads = [(layer, head) for layer in range(2) for head in range(4)]
    others = [list(s) for s in itertools.combinations(all_heads, len(detected)) if list(s) != detected]
    with _one_thread():
        detected_copy = delta(copy_text, detected)
        random_copy = np.array([delta(copy_text, heads) for heads in others])
    assert detected_copy > 2.0
    assert detected_copy > random_copy.max()
    assert detected_copy > 1.25 * np.median(random_copy)
    assert abs(delta(plain_text, detected)) < 0.25 * detected_copy


def _matched_documents(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Documents whose second part repeats a span of the first, and the same words with no repeat."""
    rng = random.Random(seed)
    words = _words()
    repeated, matched = [], []
    for _ in range(n):
        chosen = rng.sample(words, 40)
        span = chosen[:20]
        repeated.append(" ".join(span + chosen[20:30] + span[:12]))
        matched.append(" ".join(chosen[:30] + chosen[30:40] + chosen[:2]))
    return repeated, matched


def test_documents_with_repeated_structure_score_higher(tiny):
    scorer = ai.AttentionInfluenceScorer(tiny["model"], tiny["heads"], device="cpu").setup()
    repeated, matched = _matched_documents(24, seed=3)
    with_repeat = scorer.score_batch(repeated)
    without = scorer.score_batch(matched)
    assert np.mean(with_repeat > without) >= 0.9
    assert np.median(with_repeat) > 2 * max(np.median(without), 0.01)


def test_scores_identical_batched_or_one_at_a_time(tiny):
    scorer = ai.AttentionInfluenceScorer(
        tiny["model"], tiny["heads"], device="cpu", max_tokens=48, batch_tokens=256
    ).setup()
    repeated, matched = _matched_documents(6, seed=5)
    texts = repeated + matched + ["bab", "", " ".join(_words()[:100])]  # too short, empty, chunked
    batched = scorer.score_documents(texts)
    for i, text in enumerate(texts):
        single = scorer.score_documents([text])
        if batched.n_tokens[i] < 2:
            assert np.isnan(batched.score[i]) and np.isnan(single.score[0])
        else:
            assert batched.score[i] == pytest.approx(single.score[0], abs=1e-4)
            assert batched.loss_base[i] == pytest.approx(single.loss_base[0], abs=1e-4)
    assert batched.n_tokens[-1] == 100


def test_cli_score_writes_scores_and_per_domain_selection(tiny, capsys, cli):
    import pandas as pd

    repeated, matched = _matched_documents(10, seed=9)
    for domain, texts in (("alpha", repeated[:5] + matched[:5]), ("beta", repeated[5:] + matched[5:])):
        with (tiny["root"] / f"{domain}.jsonl").open("w") as handle:
            for i, text in enumerate(texts):
                handle.write(json.dumps({"id": f"{domain}-{i}", "text": text}) + "\n")
    out = tiny["root"] / "scored.parquet"
    capsys.readouterr()
    result = cli(
        [
            "attention-influence",
            "score",
            "--model",
            str(tiny["model"]),
            "--heads",
            str(tiny["heads"]),
            "--input",
            str(tiny["root"] / "*a.jsonl"),
            "--out",
            str(out),
            "--keep-top",
            "0.2",
            "--device",
            "cpu",
        ]
    )
    table = pd.read_parquet(out)
    assert result["docs"] == len(table) == 20 and result["kept"] == 4
    assert set(table.columns) >= {"id", "domain", "n_tokens", "score_attention_influence", "keep"}
    for _, rows in table.groupby("domain"):
        assert rows["keep"].sum() == 2
        kept = rows.loc[rows["keep"], "score_attention_influence"]
        assert kept.min() >= rows.loc[~rows["keep"], "score_attention_influence"].max()
        kept_ids = set(rows.loc[rows["keep"], "id"])
        assert all(int(i.split("-")[1]) < 5 for i in kept_ids)  # the repeated documents win


def test_model_handler_in_direct_runner_pipeline(tiny):
    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.testing.util import assert_that

    from scorers.attention_influence_handler import SCORE_COLUMN, ScoreAttentionInfluence

    repeated, matched = _matched_documents(4, seed=11)
    texts = repeated + matched
    scorer = ai.AttentionInfluenceScorer(tiny["model"], tiny["heads"], device="cpu").setup()
    expected = scorer.score_batch(texts)
    records = [{"id": str(i), "text": t} for i, t in enumerate(texts)]

    def check(outputs):
        by_id = {r["id"]: r[SCORE_COLUMN] for r in outputs}
        assert sorted(by_id) == sorted(r["id"] for r in records)
        for i in range(len(texts)):
            assert by_id[str(i)] == pytest.approx(expected[i], abs=1e-4)

    def check_batches(outputs):
        scores = np.concatenate([b.column(SCORE_COLUMN).to_numpy() for b in outputs])
        assert sorted(np.round(scores, 4)) == sorted(np.round(expected, 4))

    batch = pa.RecordBatch.from_pylist(records)
    with beam.Pipeline("DirectRunner") as pipeline:
        scored = (
            pipeline
            | "Records" >> beam.Create(records)
            | "Score"
            >> ScoreAttentionInfluence(tiny["model"], tiny["heads"], device="cpu", max_batch_tokens=40)
        )
        assert_that(scored, check)
        batches = (
            pipeline
            | "Batches" >> beam.Create([batch])
            | "ScoreBatches" >> ScoreAttentionInfluence(tiny["model"], tiny["heads"], device="cpu")
        )
        assert_that(batches, check_batches, label="CheckBatches")
