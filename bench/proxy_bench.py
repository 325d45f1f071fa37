"""Proxy-trainer throughput: training tokens/s and model FLOPs utilisation per named size.

    python bench/proxy_bench.py [--sizes 20k,100k,500k] [--steps 30] [--threads 1,2] [--device auto]

MFU = 6 N (tokens/s) / R, with N the non-embedding parameters (the scaling-law N) and R the
measured float32 matmul rate of the same device and thread count. For models this small the
output head dominates the arithmetic, so a second figure counts all parameters (6 N_total).
Data: the Python standard-library fixture (code / docstrings / reference), tokenized with a
1,024-token byte-level BPE, context 128, batch 8 (the proxy defaults). On CUDA the batch is 64.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.proxy.data import MixtureSampler, full_weights, load_proxy_data  # noqa: E402
from pipeline.proxy.fixtures import write_stdlib_score_dir  # noqa: E402
from pipeline.proxy.model import build_model, get_size, llama_config  # noqa: E402
from pipeline.proxy.train import TrainConfig, make_optimizer, resolve_device, train_step  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(device: str, n: int = 1024, seconds: float = 1.0) -> float:
    """Sustained float32 FLOP/s of an n x n matmul."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        sync(device)
        reps += 10
    return 2 * n**3 * reps / (time.perf_counter() - start)


def train_rate(data, size: str, config: TrainConfig, steps: int, device: str) -> float:
    """Training tokens/s over `steps` steps after 3 warm-up steps."""
    model = build_model(llama_config(size, data.vocab_size, config.context)).to(device)
    optimizer, schedule = make_optimizer(model, config)
    uniform = full_weights(data, {d: 1.0 for d in data.domains})
    sampler = MixtureSampler(data.train, uniform, config.context, 0)
    batches = [torch.from_numpy(sampler.batch(config.batch_size)).to(device) for _ in range(steps + 3)]
    for batch in batches[:3]:
        train_step(model, optimizer, schedule, batch, config)
    sync(device)
    start = time.perf_counter()
    for batch in batches[3:]:
        train_step(model, optimizer, schedule, batch, config)
    sync(device)
    return steps * config.batch_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20k,100k,500k")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_proxy_data(write_stdlib_score_dir(tmp))
    config = TrainConfig(batch_size=64 if device == "cuda" else 8)
    threads = [int(t) for t in args.threads.split(",")] if device == "cpu" else [torch.get_num_threads()]
    print(f"device={device} vocab={data.vocab_size} context={config.context} batch={config.batch_size}")
    print(f"{'size':>5} {'thr':>3} {'N':>9} {'tokens/s':>9} {'s/100k tok':>10} {'MFU(N)':>7} {'MFU(all)':>8}")
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        rate = matmul_rate(device)
        print(f"matmul float32: {rate / 1e9:.1f} GFLOP/s with {n_threads} thread(s)")
        for size in args.sizes.split(","):
            shape = get_size(size)
            n = shape.non_embedding_params()
            n_all = n + shape.embedding_params(data.vocab_size)
            tps = train_rate(data, size, config, args.steps, device)
            print(
                f"{size:>5} {n_threads:>3} {n:>9,} {tps:>9,.0f} {1e5 / tps:>10.2f} "
                f"{6 * n * tps / rate:>7.2%} {6 * n_all * tps / rate:>8.2%}"
            )


if __name__ == "__main__":
    main()
