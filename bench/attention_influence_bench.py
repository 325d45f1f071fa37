"""AttentionInfluence cost: one plain forward pass over a set of batches vs the full two-pass score.

    python bench/attention_influence_bench.py                       # random-weight Llama, sized per device
    python bench/attention_influence_bench.py --model DIR --heads HEADS.json --docs 256

Prints the plain-pass time, the full-score time, their ratio (goal <= 2.0; the masked pass skips the
layers below the first masked one, so the expected ratio is about 1 + (L - first) / L), and tokens/s.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scorers import attention_influence as ai  # noqa: E402
from scorers import lm  # noqa: E402

SIZES = {  # hidden, layers, heads, vocab, docs, words per doc
    "cpu": (256, 8, 8, 8192, 48, 300),
    "cuda": (1024, 16, 16, 32000, 512, 900),
}


def _random_model(device: torch.device, first_layer: int | None, seed: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    hidden, layers, heads, vocab, docs, words = SIZES[device.type]
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 4 - hidden * 4 // 3,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=2048)
    model = LlamaForCausalLM(config).to(device=device, dtype=lm.pick_dtype(device)).eval()
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0")
    rng = random.Random(seed)
    every = [(layer, head) for layer in range(layers) for head in range(heads)]
    if first_layer is not None:
        every = [h for h in every if h[0] >= first_layer]
    chosen = rng.sample(every, max(1, round(0.05 * layers * heads)))
    texts = [" ".join(f"w{rng.randrange(vocab)}" for _ in range(rng.randint(words // 4, words)))
             for _ in range(docs)]
    return model, tokenizer, chosen, texts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def plain_pass(model, tokenizer, texts, max_tokens, batch_tokens) -> int:
    """The model's ordinary forward (full logits) and loss over the same length-bucketed batches."""
    device = next(model.parameters()).device
    plan = lm.ChunkPlan.build(tokenizer, texts, lm.context_length(model, max_tokens))
    for batch in plan.batches(batch_tokens, lm.DEFAULT_MAX_BATCH_SIZE):
        ids, mask = lm.pad_batch([plan.chunks[i] for i in batch], lm.pad_id(tokenizer), device)
        labels = ids.masked_fill(mask == 0, -100)
        model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss.item()
    return sum(plan.n_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="local HF causal LM (default: random-weight Llama sized per device)")
    parser.add_argument("--heads", help="HEADS.json for --model")
    parser.add_argument("--input", help="JSONL with `text` for --model (default: random words)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--docs", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--first-layer", type=int, default=None, help="random model: mask heads from here up")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the minimum over repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = lm.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model, tokenizer = lm.load_causal_lm(args.model, device, None, ai.register_attention())
        heads = ai.load_heads(args.heads, model)
        if args.input:
            lines = Path(args.input).read_text().splitlines()
            texts = [json.loads(line)["text"] for line in lines if line.strip()]
        else:
            texts = [" ".join(["The quick brown fox jumps over the lazy dog."] * 40)] * 64
    else:
        model, tokenizer, heads, texts = _random_model(device, args.first_layer, args.seed)
    if args.docs:
        texts = (texts * (args.docs // max(len(texts), 1) + 1))[: args.docs]
    model = ai.prepare_model(model)
    scorer = ai.AttentionInfluenceScorer.from_model(model, tokenizer, heads, max_tokens=args.max_tokens,
                                                    batch_tokens=args.batch_tokens)
    plain_pass(model, tokenizer, texts[:4], args.max_tokens, args.batch_tokens)  # warm-up
    scorer.score_documents(texts[:4])

    plain_times, single_times, score_times, tokens = [], [], [], 0
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        tokens = plain_pass(model, tokenizer, texts, args.max_tokens, args.batch_tokens)
        _sync(device)
        plain_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        lm.document_losses(model, tokenizer, texts, args.max_tokens, args.batch_tokens)
        _sync(device)
        single_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        scorer.score_documents(texts)
        _sync(device)
        score_times.append(time.perf_counter() - start)
    plain, single, full = min(plain_times), min(single_times), min(score_times)
    n_layers = model.config.num_hidden_layers
    first = scorer.first_masked_layer
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"dtype {next(model.parameters()).dtype}, {n_layers} layers, {len(heads)} masked heads, "
          f"first masked layer {first}")
    print(f"documents: {len(texts)}, tokens: {tokens}")
    print(f"plain forward pass:  {plain:.3f} s (model(...) with full logits)")
    print(f"one scoring pass:    {single:.3f} s (scorers.lm.document_losses, unmasked)")
    print(f"AttentionInfluence:  {full:.3f} s")
    estimate = 1 + (n_layers - first) / n_layers
    print(f"ratio: {full / plain:.2f} (goal <= 2.0; layer-count estimate {estimate:.2f}); "
          f"vs one scoring pass {full / single:.2f}")
    print(f"tokens/s: plain {tokens / plain:,.0f}, AttentionInfluence {tokens / full:,.0f}")


if __name__ == "__main__":
    main()
