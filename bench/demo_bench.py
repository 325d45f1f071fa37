"""CPU seconds of the demo's proxy and target runs, before and after the speed-ups of issue 15.

    python bench/demo_bench.py [--tokens 150000] [--target-tokens 300000]

Each leg trains one run in this process with one torch thread and reports its CPU seconds (user +
system, `time.process_time`), so the figures hold on a shared machine; the load average is printed.
"before": the optimiser as it was (AdamW looping over the parameters, clipping without foreach)
and the evaluations the demo made (4 per proxy run, 4 per target run); "after": fused AdamW,
foreach clipping, 3 evaluations per proxy run and 1 per target run. The token budgets default to
the demo's (150k per proxy, 300k per target). Data: the standard-library fixture, 1,024-token BPE
(the demo's vocabulary). Last, one 50k run with two torch threads against one: on two cores the
demo runs two single-threaded runs side by side, which wins when two threads cost more CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.proxy import train  # noqa: E402
from pipeline.proxy.data import load_proxy_data  # noqa: E402
from pipeline.proxy.fixtures import write_stdlib_score_dir  # noqa: E402
from pipeline.proxy.train import TrainConfig, train_proxy  # noqa: E402

FUSED_OPTIMIZER = train.make_optimizer


def looping_optimizer(model, config: TrainConfig):
    """The optimiser before: AdamW's per-parameter loop (the CPU default), clipping without foreach."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, config.warmup_steps))
    )
    return optimizer, schedule


def cpu_seconds(data, size: str, tokens: int, config: TrainConfig, before: bool, threads: int = 1) -> float:
    clip = torch.nn.utils.clip_grad_norm_
    train.make_optimizer = looping_optimizer if before else FUSED_OPTIMIZER
    if before:  # foreach=True is what the code passes now; the loop is what it did
        torch.nn.utils.clip_grad_norm_ = lambda params, norm, foreach=None: clip(params, norm)
    try:
        start = time.process_time()
        train_proxy(data, {d: 1.0 for d in data.domains}, tokens, size, config=config, threads=threads)
        return time.process_time() - start
    finally:
        train.make_optimizer = FUSED_OPTIMIZER
        torch.nn.utils.clip_grad_norm_ = clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=150_000)
    parser.add_argument("--target-tokens", type=int, default=300_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = load_proxy_data(write_stdlib_score_dir(tmp), vocab_size=1024)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    legs = [("20k", args.tokens, 4, 3), ("50k", args.tokens, 4, 3), ("100k", args.target_tokens, 4, 1)]
    header = ("size", "tokens", "evals", "before CPU s", "after CPU s", "after/before")
    print("{:>5} {:>7} {:>6} {:>12} {:>11} {:>12}".format(*header))
    for size, tokens, evals_before, evals_after in legs:
        cpu_seconds(data, size, 2_048, TrainConfig(), before=False)  # warm-up: imports, allocator
        old = cpu_seconds(data, size, tokens, TrainConfig(eval_points=evals_before), before=True)
        new = cpu_seconds(data, size, tokens, TrainConfig(eval_points=evals_after), before=False)
        evals = f"{evals_before}->{evals_after}"
        print(f"{size:>5} {tokens:>7} {evals:>6} {old:>12.2f} {new:>11.2f} {new / old:>12.3f}")
    # Two threads in one run against the default of one thread per run (two runs side by side).
    one = cpu_seconds(data, "50k", args.tokens, TrainConfig(eval_points=3), before=False)
    two = cpu_seconds(data, "50k", args.tokens, TrainConfig(eval_points=3), before=False, threads=2)
    print(f"50k run, CPU s with 1 thread {one:.2f}, with 2 threads {two:.2f}: ratio {two / one:.3f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
