"""A training script that takes its data mixture from datamixer.

Through the Python API (two lines):

    python examples/train_with_mixture.py --mixture examples/mixture.yaml

or through a file `datamixer export` wrote, read the way that trainer reads it:

    datamixer export --mixture examples/mixture.yaml --format megatron --out blend.txt
    python examples/train_with_mixture.py --export blend.txt --format megatron

The corpora are tiny in-memory stand-ins, one per domain, mixed with `datasets.interleave_datasets`;
the model is a byte-level bigram LM in torch. The script prints the share of each domain it
trained on (which should match the mixture) and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

FORMATS = ("megatron", "hf", "olmo", "json", "yaml")


def weights_from_api(mixture: str) -> dict[str, float]:
    from mixer import load_mixture

    return load_mixture(mixture)


def weights_from_export(path: str, format: str) -> dict[str, float]:
    """Domain -> weight from an export file, parsed as each trainer parses it."""
    text = Path(path).read_text()
    if format == "megatron":  # Megatron-LM: get_blend_from_list(open(--data-args-path).read().split())
        words = text.split()
        # A prefix stands for a domain: its file name without Megatron's `_text_document` suffix.
        pairs = zip(words[::2], words[1::2], strict=True)
        return {Path(p).name.removesuffix("_text_document"): float(w) for w, p in pairs}
    if format == "hf":  # datasets.interleave_datasets(datasets, probabilities=...)
        config = json.loads(text)
        return dict(zip(config["datasets"], config["probabilities"], strict=True))
    if format == "olmo":  # OLMo-core SourceMixtureList
        sources = yaml.safe_load(text)["source_list"]["sources"]
        return {s["source_name"]: s["target_ratio"] for s in sources}
    if format in ("json", "yaml"):
        return dict(json.loads(text) if format == "json" else yaml.safe_load(text))
    raise ValueError(f"unknown format {format!r}; choose one of {FORMATS}")


def toy_corpora(n_docs: int = 400) -> dict[str, list[str]]:
    """One small corpus per domain, each with its own byte statistics."""
    return {
        "code": [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(n_docs)],
        "math": [f"{i} + {i * 3} = {i * 4}; {i} * 2 = {i * 2}." for i in range(n_docs)],
        "prose": [f"The river ran past the old mill for the {i}th time that year." for i in range(n_docs)],
        "web": [f"<a href='https://example.org/page/{i}'>Page {i}</a> | Home | Login" for i in range(n_docs)],
    }


def mixed_stream(weights: dict[str, float], seed: int):
    """The domains interleaved with the mixture's probabilities (the `hf` export's reader)."""
    import datasets

    corpora = toy_corpora()
    missing = sorted(set(weights) - set(corpora))
    if missing:
        raise ValueError(f"the mixture names domains this trainer has no data for: {missing}")
    names = [d for d in sorted(weights) if weights[d] > 0]
    parts = [datasets.Dataset.from_dict({"text": corpora[d], "domain": [d] * len(corpora[d])}) for d in names]
    return datasets.interleave_datasets(
        parts, probabilities=[weights[d] for d in names], seed=seed, stopping_strategy="all_exhausted"
    )


def train(weights: dict[str, float], steps: int = 200, batch_size: int = 32, seed: int = 0) -> dict:
    """Train a byte bigram LM on the mixed stream; return the loss and the domain shares seen."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a model this small only loses time to thread hand-offs
    stream = mixed_stream(weights, seed)
    model = torch.nn.Embedding(256, 256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    seen: dict[str, int] = dict.fromkeys(weights, 0)
    loss = float("nan")
    for step in range(steps):
        start = (step * batch_size) % (len(stream) - batch_size)
        batch = stream[start : start + batch_size]
        for domain in batch["domain"]:
            seen[domain] += 1
        data = torch.tensor([b for text in batch["text"] for b in text.encode()[:32].ljust(32)])
        logits = model(data[:-1])
        batch_loss = torch.nn.functional.cross_entropy(logits, data[1:])
        optimizer.zero_grad()
        batch_loss.backward()
        optimizer.step()
        loss = batch_loss.item()
    total = sum(seen.values())
    return {"loss": round(loss, 4), "shares": {d: seen[d] / total for d in sorted(seen)}, "docs": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mixture", help="mixture file, read through mixer.load_mixture")
    source.add_argument("--export", help="a file `datamixer export` wrote (give --format)")
    parser.add_argument("--format", choices=FORMATS)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.export and not args.format:
        parser.error("--export needs --format")
    if args.mixture:
        weights = weights_from_api(args.mixture)
    else:
        weights = weights_from_export(args.export, args.format)
    result = train(weights, steps=args.steps, seed=args.seed)
    for domain, share in result["shares"].items():
        print(f"{domain:>8}: weight {weights.get(domain, 0):.3f}  trained on {share:.3f}", file=sys.stderr)
    print(json.dumps({"weights": weights, **result}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
