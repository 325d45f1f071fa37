"""PreSelect loss pass: documents/s of a plain loop over the models, and of the Beam labelling job.

    python bench/preselect_bench.py                          # random-weight Llamas, sized per device
    python bench/preselect_bench.py --models A,B,C --docs 2000 --device cuda

Documents are real text from the bundled corpus (code, prose, legal; about 1,000 characters each).
Prints, per device: the plain loop (`ModelBits.score_batch` over all documents, model after model),
the Beam job on one in-process worker (the same work plus reading, strengths, labels and writing),
and on CPU the job on the DirectRunner's default of one worker process per core.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.corpus import CorpusOptions, build_corpus  # noqa: E402
from scorers import lm  # noqa: E402
from scorers.preselect import ModelBits  # noqa: E402

SIZES = {  # hidden, layers, heads, model vocabulary, context
    "cpu": (256, 4, 4, 8192, 512),
    "cuda": (1024, 16, 16, 32000, 1024),
}


def corpus_texts(root: Path, docs: int) -> list[dict]:
    per_domain = docs * 1100 // 3
    build_corpus(root / "corpus", CorpusOptions(max_bytes_per_domain=per_domain, max_doc_chars=1200))
    records = []
    for domain in ("code", "prose", "legal"):
        lines = (root / "corpus" / f"{domain}.jsonl").read_text().splitlines()
        records += [json.loads(line) for line in lines]
    return records[:docs]


def random_models(root: Path, texts: list[str], device: torch.device, n: int) -> list[str]:
    """`n` random-weight Llamas of the device's size, saved with a byte-level BPE as HF directories."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.proxy.data import train_tokenizer
    from pipeline.proxy.model import save_checkpoint

    hidden, layers, heads, vocab, context = SIZES[device.type]
    tokenizer_json = train_tokenizer(texts, vocab_size=4096)
    dirs = []
    for seed in range(n):
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=hidden * 8 // 3,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=context,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        dirs.append(
            str(
                save_checkpoint(
                    LlamaForCausalLM(config), tokenizer_json, root / f"model{seed}", "<|endoftext|>", context
                )
            )
        )
    return dirs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(
    models: list[str], texts: list[str], device: torch.device, threads: int | None, repeats: int
) -> tuple[float, int]:
    """Seconds for every model over every text (best of `repeats` per model), and tokens scored."""
    total, tokens = 0.0, 0
    for model in models:
        scorer = ModelBits(model, device=str(device), threads=threads).setup()
        scorer.score_batch(texts[:8])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            scorer.score_batch(texts)
            sync(device)
            best = min(best, time.perf_counter() - start)
        total += best
        tokens += sum(len(ids) for ids in scorer.token_ids(texts))
        del scorer
    return total, tokens


def job(
    models: list[str], pool: Path, out: Path, device: torch.device, threads: int | None, beam_args: list[str]
) -> float:
    from pipeline.preselect import PreselectConfig, run_preselect_job  # Beam: not needed by --loop-only

    config = PreselectConfig(
        inputs=[str(pool)],
        models=models,
        scores=list(range(len(models))),
        output=str(out),
        device=str(device),
        threads=threads,
    )
    start = time.perf_counter()
    result = run_preselect_job(config, beam_args=beam_args)
    seconds = time.perf_counter() - start
    assert result["documents"] > 0
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", help="comma-separated HF model dirs (default: random Llamas)")
    parser.add_argument("--n-models", type=int, default=2, help="random models to make")
    parser.add_argument("--docs", type=int, default=None, help="documents (default: 300 CPU, 4000 CUDA)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--loop-only", action="store_true", help="the plain loop only (no apache-beam)")
    args = parser.parse_args()

    import logging

    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    device = lm.pick_device(args.device)
    threads = args.threads if device.type == "cpu" else None
    docs = args.docs or (300 if device.type == "cpu" else 4000)
    with tempfile.TemporaryDirectory(prefix="preselect-bench-") as tmp:
        root = Path(tmp)
        records = corpus_texts(root, docs)
        texts = [r["text"] for r in records]
        pool = root / "pool.jsonl"
        pool.write_text("".join(json.dumps(r) + "\n" for r in records))
        models = args.models.split(",") if args.models else random_models(root, texts, device, args.n_models)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} thread(s)"
        hidden, layers, _, vocab, _ = SIZES[device.type]
        shape = "given" if args.models else f"random Llama: hidden {hidden}, {layers} layers, vocab {vocab}"
        print(
            f"device: {device} ({name}); {len(models)} models ({shape}); {len(texts)} documents, "
            f"{sum(map(len, texts)) / len(texts):.0f} characters on average"
        )

        loop_s, tokens = plain_loop(models, texts, device, threads, args.repeats)
        rows = [("plain loop, model after model", loop_s)]
        if not args.loop_only:
            in_process = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
            seconds = job(models, pool, root / "out1", device, threads, in_process)
            rows.append(("Beam job, DirectRunner in-process, 1 worker", seconds))
        if device.type == "cpu" and not args.loop_only:
            rows.append(
                (
                    "Beam job, DirectRunner, one process per core",
                    job(models, pool, root / "out2", device, threads, []),
                )
            )
        print(f"tokens scored (all models): {tokens:,}")
        print(f"{'':48s} {'seconds':>8s} {'docs/s':>8s} {'doc-model/s':>12s} {'vs loop':>8s}")
        for label, seconds in rows:
            print(
                f"{label:48s} {seconds:8.2f} {len(texts) / seconds:8.1f} "
                f"{len(texts) * len(models) / seconds:12.1f} {loop_s / seconds:8.2f}"
            )


if __name__ == "__main__":
    main()
