"""Uniform-prefix head masking against a naive reference, on tiny random Llama, Qwen2 and GPT-NeoX models."""

from __future__ import annotations

import pytest
import torch

from scorers import attention_influence as ai
from scorers import lm

HEADS = [(0, 1), (1, 0), (1, 2)]
_REFERENCE: dict = {}  # what the reference attention masks; set through monkeypatch by each test


def naive_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Eager attention by explicit loops; masked heads weight each visible position 1/(number visible)."""
    batch, n_heads, length, dim = query.shape
    n_rep = n_heads // key.shape[1]
    pad = _REFERENCE["pad"]
    masked = {h for layer, h in _REFERENCE["heads"] if layer == module.layer_idx}
    scale = scaling if scaling is not None else dim**-0.5
    out = torch.zeros(batch, length, n_heads, dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(n_heads):
            k, v = key[b, h // n_rep].double(), value[b, h // n_rep].double()
            for i in range(length):
                visible = [j for j in range(i + 1) if pad[b, j]]
                if not visible:  # a left-padding query: its output is never used
                    continue
                if h in masked:
                    weights = torch.full((len(visible),), 1.0 / len(visible), dtype=torch.float64)
                else:
                    weights = torch.softmax((k[visible] @ query[b, h, i].double()) * scale, dim=0)
                out[b, i, h] = weights @ v[visible]
    return out.to(query.dtype), None


def _tiny(arch: str):
    from transformers import (
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(0)
    common = dict(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        initializer_range=0.3,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))  # grouped-query attention
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **common))
    else:
        model = GPTNeoXForCausalLM(GPTNeoXConfig(rotary_pct=0.5, **common))
    return model.eval()


def _register_reference():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("naive_uniform_reference", naive_attention)
    AttentionMaskInterface.register("naive_uniform_reference", sdpa_mask)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt_neox"])
@pytest.mark.parametrize("eager", [False, True], ids=["sdpa", "eager"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_uniform_masking_matches_naive_reference(arch, eager, side, monkeypatch):
    model = _tiny(arch)
    _register_reference()
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if side == "right":
        mask[1, 6:] = 0
        mask[2, 3:] = 0
    else:
        mask[1, :3] = 0
        mask[2, :6] = 0
    monkeypatch.setitem(_REFERENCE, "pad", mask.bool())
    monkeypatch.setitem(_REFERENCE, "heads", HEADS)

    with torch.no_grad():
        ai.prepare_model(model, eager=eager)
        expected = ai.EAGER_IMPLEMENTATION if eager else ai.ATTN_IMPLEMENTATION
        assert model.config._attn_implementation == expected
        plain = model(input_ids=ids, attention_mask=mask).logits
        with ai.uniform_heads(model, HEADS):
            ours = model(input_ids=ids, attention_mask=mask).logits
            ours_single = model(input_ids=ids[:1]).logits  # no padding: the cumulative-mean path
        model.set_attn_implementation("naive_uniform_reference")
        reference = model(input_ids=ids, attention_mask=mask).logits
        monkeypatch.setitem(_REFERENCE, "heads", [])
        reference_plain = model(input_ids=ids, attention_mask=mask).logits

    real = mask.bool()
    assert torch.allclose(ours[real], reference[real], atol=1e-5)
    assert torch.allclose(ours_single[0], reference[0], atol=1e-5)
    assert torch.allclose(plain[real], reference_plain[real], atol=1e-5)
    assert (ours[real] - plain[real]).abs().max() > 1e-3  # masking changes the output


def test_uniform_average_accumulates_in_float32_for_bfloat16_values():
    value = (torch.randn(1, 2, 4096, 8, generator=torch.Generator().manual_seed(0)) + 3).to(torch.bfloat16)
    exact = value.double().cumsum(dim=2) / torch.arange(1, 4097, dtype=torch.float64)[:, None]
    ours = ai.uniform_prefix_average(value, None)
    assert ours.dtype == torch.float32
    assert (ours.double() - exact).abs().max() < 1e-4
    in_bf16 = value.cumsum(dim=2) / torch.arange(1, 4097, dtype=torch.bfloat16)[:, None]
    assert (in_bf16.double() - exact).abs().max() > 1e-2  # what float32 accumulation avoids


@pytest.mark.parametrize("eager", [False, True], ids=["sdpa", "eager"])
def test_bfloat16_masking_adds_no_error_beyond_bfloat16_itself(eager):
    model = _tiny("llama")
    ids = torch.randint(0, 50, (2, 40), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    plain, masked = [], []
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            model.to(dtype)
            ai.prepare_model(model, eager=eager)
            plain.append(model(input_ids=ids, attention_mask=mask).logits.float())
            with ai.uniform_heads(model, HEADS, right_padded=True):
                masked.append(model(input_ids=ids, attention_mask=mask).logits.float())
    real = mask.bool()

    def error(pair):
        return float((pair[1][real] - pair[0][real]).norm() / pair[0][real].norm())

    assert error(masked) < 1.5 * error(plain) + 1e-3, (error(masked), error(plain))
    assert (masked[1][real] - plain[1][real]).abs().max() > 1e-2  # the bf16 pass is masked too


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_shared_prefix_two_pass_equals_two_full_passes(arch):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = _tiny(arch)
    vocab = {f"w{i}": i for i in range(50)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0")
    texts = [" ".join(f"w{(i * 7 + j * 3) % 50}" for j in range(n)) for i, n in enumerate([12, 30, 5, 1, 80])]
    heads = [(1, 0), (1, 3)]  # first masked layer 1: layer 0 is computed once and replayed
    scorer = ai.AttentionInfluenceScorer.from_model(model, tokenizer, heads, max_tokens=32, batch_tokens=64)
    result = scorer.score_documents(texts)

    with torch.no_grad():
        for doc, text in enumerate(texts):
            chunks = lm.chunk_ids(lm.tokenize(tokenizer, [text])[0], 32)
            if not chunks:
                assert result.n_tokens[doc] < 2 and torch.isnan(torch.tensor(result.score[doc]))
                continue
            totals, count = [0.0, 0.0], 0
            for chunk in chunks:
                ids = torch.tensor([chunk])
                logits = model(input_ids=ids).logits[0, :-1]
                totals[0] += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
                with ai.uniform_heads(model, heads):
                    logits = model(input_ids=ids).logits[0, :-1]
                totals[1] += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
                count += len(chunk) - 1
            assert count == len(lm.tokenize(tokenizer, [text])[0]) - 1  # every token but the first, once
            assert result.loss_base[doc] == pytest.approx(totals[0] / count, abs=1e-5)
            assert result.loss_masked[doc] == pytest.approx(totals[1] / count, abs=1e-5)
            expected = (totals[1] - totals[0]) / totals[0]
            assert result.score[doc] == pytest.approx(expected, abs=1e-5)


def test_length_buckets_respect_token_budget_and_cover_every_index():
    lengths = [5, 100, 7, 64, 64, 3, 99, 1]
    batches = lm.length_buckets(lengths, batch_tokens=200, max_batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) * max(lengths[i] for i in batch) <= 200 or len(batch) == 1
    assert batches[0] == [1, 6]  # the two longest together


def test_select_heads_takes_top_fraction_with_at_least_one():
    import numpy as np

    scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.9]])
    assert ai.select_heads(scores, 0.05) == [(0, 1)]  # tie at 0.9 goes to the lower (layer, head)
    assert ai.select_heads(scores, 0.5) == [(0, 1), (1, 0), (1, 2)]
    with pytest.raises(ValueError):
        ai.select_heads(scores, 0.0)


def test_copy_keys_match_token_text_up_to_space_quotes_and_commas():
    from scorers.attention_influence.probes import normalize_token

    assert normalize_token(" The") == normalize_token('"The') == normalize_token("The") == "The"
    assert normalize_token('.",') == normalize_token(".") == "."
    assert normalize_token(' "') == normalize_token(",") == ""  # such tokens keep their own id
    assert normalize_token(" the") != normalize_token("The")  # case is kept


def test_probes_module_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, scorers.attention_influence.probes; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
