"""AttentionInfluence cost: a plain forward pass vs the full two-pass score, on a real or random model.

    python bench/attention_influence_bench.py --model DIR|FILE.gguf --heads HEADS.json --device cpu
    python bench/attention_influence_bench.py --model FILE.gguf --detect-probes 16      # heads found here
    python bench/attention_influence_bench.py --random-llama-1b3 --tokenizer FILE.gguf --device cuda

Prints tokens/s of the model's ordinary forward with loss (full logits) and of the AttentionInfluence
score, their ratio (goal <= 1.5: the masked pass replays the layers below the first masked one, so the
layer-count estimate is 1 + (L - first) / L, plus one more LM head), peak memory, and the projected hours
per 1B tokens. `--detect-probes N` also times head detection (probes/s) and compares the heads picked
with normalised copy keys and with exact token ids (one forward pass serves both).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scorers import attention_influence as ai  # noqa: E402
from scorers import lm  # noqa: E402
from scorers.attention_influence.heads import answer_argmax, copy_hits  # noqa: E402

LLAMA_1B3 = dict(
    hidden_size=2048,
    intermediate_size=5504,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=16,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)


def random_llama_1b3(
    tokenizer_source: str, device: torch.device, dtype: torch.dtype, first_layer: int | None
):
    """Random-weight Llama of about 1.3B parameters (the paper's scale) with a real model's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = lm.load_causal_lm(tokenizer_source, "cpu", "float32")
    config = LlamaConfig(vocab_size=len(tokenizer), **LLAMA_1B3)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    first = first_layer if first_layer is not None else round(0.57 * layers)  # SmolLM2: 17 of 30
    rng = random.Random(0)
    chosen = rng.sample(
        [(a, b) for a in range(first, layers) for b in range(heads)], round(0.05 * layers * heads)
    )
    return model, tokenizer, sorted(chosen)


def documents(tokenizer, n_docs: int, tokens: int, seed: int = 0) -> list[str]:
    """`n_docs` documents of about `tokens` tokens of English prose (standard-library docstrings)."""
    sentences = ai.stdlib_sentences()
    rng = random.Random(seed)
    per = max(1, tokens // 20)
    texts = [" ".join(rng.sample(sentences, per)) for _ in range(n_docs)]
    ids = lm.tokenize(tokenizer, texts)
    return [tokenizer.decode(doc[:tokens], skip_special_tokens=True) for doc in ids]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """(best seconds over `repeats`, peak memory MiB during the calls)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, _peak_mib(device)


def detect(model, tokenizer, n_probes: int, max_tokens: int, batch_tokens: int) -> list[tuple[int, int]]:
    """Time head detection; print probes/s, copy ceilings and the heads of both copy matchings."""
    limit = lm.context_length(model, max_tokens)
    probes = ai.build_probes(tokenizer, ai.stdlib_sentences(), n_probes=n_probes, max_tokens=limit)
    start = time.perf_counter()
    normalised, exact = [], []
    for probe, where, targets in answer_argmax(model, probes, lm.pad_id(tokenizer), batch_tokens):
        normalised.append(copy_hits(probe, where, targets, probe.keys()))
        exact.append(copy_hits(probe, where, targets, probe.input_ids))
    seconds = time.perf_counter() - start
    tokens = sum(len(p.input_ids) for p in probes)
    heads_n = ai.select_heads(np.mean(normalised, axis=0))
    heads_e = ai.select_heads(np.mean(exact, axis=0))
    exact_probes = [dataclasses.replace(p, copy_keys=[]) for p in probes]
    print(
        f"detection: {n_probes} probes of <= {limit} tokens (mean {tokens / n_probes:.0f}) "
        f"in {seconds:.1f} s: "
        f"{n_probes / seconds:.2f} probes/s, {tokens / seconds:,.0f} tokens/s"
    )
    print(
        f"copy ceiling: normalised text {ai.copy_ceiling(probes):.3f}, "
        f"exact ids {ai.copy_ceiling(exact_probes):.3f}"
    )
    print(f"heads (normalised): {heads_n}")
    print(f"heads (exact ids):  {heads_e}")
    print(f"shared: {len(set(heads_n) & set(heads_e))} of {len(heads_n)}")
    return heads_n


def load(args, device: torch.device):
    dtype = lm.pick_dtype(device, args.dtype)
    if args.random_llama_1b3:
        return random_llama_1b3(args.tokenizer or args.model, device, dtype, args.first_layer)
    model, tokenizer = lm.load_causal_lm(args.model, device, dtype, ai.register_attention())
    if args.detect_probes:
        return (
            model,
            tokenizer,
            detect(model, tokenizer, args.detect_probes, args.probe_tokens, args.batch_tokens),
        )
    if not args.heads:
        raise SystemExit("--heads HEADS.json or --detect-probes N is needed with --model")
    return model, tokenizer, ai.load_heads(args.heads, model)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="local HF causal LM directory or .gguf file")
    parser.add_argument("--heads", help="HEADS.json for --model")
    parser.add_argument("--detect-probes", type=int, default=0, help="detect heads on this many probes first")
    parser.add_argument("--probe-tokens", type=int, default=512, help="tokens per detection probe")
    parser.add_argument(
        "--random-llama-1b3", action="store_true", help="random ~1.3B Llama, --tokenizer's vocab"
    )
    parser.add_argument("--tokenizer", help="model dir or .gguf whose tokenizer the random Llama uses")
    parser.add_argument("--first-layer", type=int, default=None, help="random model: mask heads from here up")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16 or auto (bf16 on CUDA)")
    parser.add_argument("--docs", type=int, default=None, help="documents (default 16 on CPU, 512 on CUDA)")
    parser.add_argument("--doc-tokens", type=int, default=1024, help="tokens per document")
    parser.add_argument("--max-tokens", type=int, default=1024, help="chunk length")
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=2, help="timings are the minimum over repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if not (args.model or args.random_llama_1b3):
        parser.error("give --model DIR|FILE.gguf or --random-llama-1b3 --tokenizer DIR|FILE.gguf")

    device = lm.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, heads = load(args, device)
    model = ai.prepare_model(model)
    texts = documents(tokenizer, args.docs or (16 if device.type == "cpu" else 512), args.doc_tokens)
    scorer = ai.AttentionInfluenceScorer.from_model(
        model, tokenizer, heads, max_tokens=args.max_tokens, batch_tokens=args.batch_tokens
    )
    plain_pass(model, tokenizer, texts[:2], args.max_tokens, args.batch_tokens)  # warm-up
    scorer.score_documents(texts[:2])

    tokens = sum(len(ids) for ids in lm.tokenize(tokenizer, texts))
    plain, plain_mem = timed(
        lambda: plain_pass(model, tokenizer, texts, args.max_tokens, args.batch_tokens), device, args.repeats
    )
    full, full_mem = timed(lambda: scorer.score_documents(texts), device, args.repeats)
    n_layers, first = model.config.num_hidden_layers, scorer.first_masked_layer
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"device: {device} ({name}), dtype {next(model.parameters()).dtype}, {n_params / 1e6:,.0f}M params, "
        f"{n_layers} layers, {len(heads)} masked heads, first masked layer {first}"
    )
    print(
        f"documents: {len(texts)}, tokens: {tokens}, chunk {args.max_tokens}, load average "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(f"plain forward:      {tokens / plain:10,.0f} tokens/s  ({plain:.2f} s, peak {plain_mem:,.0f} MiB)")
    print(f"AttentionInfluence: {tokens / full:10,.0f} tokens/s  ({full:.2f} s, peak {full_mem:,.0f} MiB)")
    print(
        f"ratio: {full / plain:.2f} "
        f"(goal <= 1.5; layer-count estimate {1 + (n_layers - first) / n_layers:.2f})"
    )
    print(f"projected: {1e9 / (tokens / full) / 3600:,.1f} h per 1B tokens on this device")


if __name__ == "__main__":
    main()
