"""Train one proxy model on one mixture and evaluate it at several token counts.

The learning rate warms up linearly for `warmup_steps` and then stays constant, and the data
order does not depend on the budget, so a run to 2D passes through the same states as a run
to D: every intermediate evaluation is a genuine (N, D) point, and a longer run extends a
shorter one.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixer.runs import LOSS, LOSS_PREFIX, RUN, WEIGHT_PREFIX, D, N
from pipeline.proxy.data import MixtureSampler, ProxyData, eval_windows, full_weights, load_proxy_data
from pipeline.proxy.model import build_model, get_size, llama_config, save_checkpoint

MIXTURE = "mixture"
SIZE = "size"
SEED = "seed"


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule of a proxy run (the same for every size, so sizes compare)."""

    context: int = 64
    batch_size: int = 8
    lr: float = 5e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_points: int = 4
    eval_every: int | None = None
    eval_batch_size: int = 64

    @property
    def batch_tokens(self) -> int:
        return self.batch_size * self.context

    def total_steps(self, tokens: int) -> int:
        """Optimiser steps for a budget of `tokens` (rounded up to whole batches)."""
        if tokens <= 0:
            raise ValueError(f"token budget must be positive, got {tokens}")
        return math.ceil(tokens / self.batch_tokens)

    def eval_steps(self, tokens: int) -> list[int]:
        """Steps after which to evaluate: every `eval_every` tokens, else `eval_points` points
        spaced by factors of 2 ending at the budget (those inside the warm-up are dropped)."""
        total = self.total_steps(tokens)
        if self.eval_every:
            every = max(1, math.ceil(self.eval_every / self.batch_tokens))
            steps = set(range(every, total + 1, every))
        else:
            steps = {max(1, round(total / 2**k)) for k in range(max(1, self.eval_points))}
        steps = {s for s in steps if s > self.warmup_steps}
        return sorted(steps | {total})


def run_id(mixture: str, size: str, seed: int, tokens: int) -> str:
    """Row key: one model (mixture, size, seed) evaluated after `tokens` training tokens."""
    return f"{mixture}/{size}/seed{seed}/{tokens}"


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use `threads` intra-op threads inside the block (all cores if None)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads or os.cpu_count() or 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no GPU")
    return device


def evaluate(model: Any, data: ProxyData, config: TrainConfig, device: str = "cpu") -> dict[str, float]:
    """Mean next-token loss (nats) on every domain's validation split."""
    import torch
    import torch.nn.functional as F

    model.eval()
    losses: dict[str, float] = {}
    with torch.no_grad():
        for domain in data.domains:
            windows = torch.from_numpy(eval_windows(data.valid[domain], config.context))
            total, count = 0.0, 0
            for chunk in windows.split(config.eval_batch_size):
                chunk = chunk.to(device)
                logits = model(input_ids=chunk).logits[:, :-1]
                targets = chunk[:, 1:]
                total += float(
                    F.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum"
                    )
                )
                count += targets.numel()
            losses[domain] = total / count
    model.train()
    return losses


def make_row(
    mixture: str,
    size: str,
    n_params: int,
    tokens: int,
    seed: int,
    weights: Mapping[str, float],
    losses: Mapping[str, float],
) -> dict[str, Any]:
    """One runs-table row; `loss` is the unweighted mean of the per-domain losses."""
    row: dict[str, Any] = {
        RUN: run_id(mixture, size, seed, tokens),
        MIXTURE: mixture,
        SIZE: size,
        N: int(n_params),
        D: int(tokens),
        SEED: int(seed),
    }
    row.update({WEIGHT_PREFIX + d: float(weights[d]) for d in sorted(weights)})
    row[LOSS] = float(np.mean([losses[d] for d in sorted(losses)]))
    row.update({LOSS_PREFIX + d: float(losses[d]) for d in sorted(losses)})
    return row


def train_proxy(
    data: ProxyData | str | os.PathLike[str],
    weights: Mapping[str, float],
    tokens: int,
    size: str,
    *,
    mixture: str = "mixture",
    seed: int = 0,
    config: TrainConfig | None = None,
    out: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    device: str = "cpu",
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train a `size` model on `weights` for `tokens` tokens; one runs-table row per evaluation.

    `data` is a loaded `ProxyData` or a `datamixer score` output directory. With `out`, the
    final model and tokenizer are saved there as a Hugging Face checkpoint, with
    `proxy_run.json` (settings and rows) beside them.
    """
    config = config or TrainConfig()
    if not isinstance(data, ProxyData):
        data = load_proxy_data(data)
    mix = full_weights(data, weights)
    device = resolve_device(device)
    n_params = get_size(size).non_embedding_params()
    rows: list[dict[str, Any]] = []
    with torch_threads(threads):
        model = build_model(llama_config(size, data.vocab_size, config.context, eos_id(data)), seed).to(
            device
        )
        sampler = MixtureSampler(data.train, mix, config.context, seed)
        for step in train_steps(model, sampler, config, tokens, device):
            losses = evaluate(model, data, config, device)
            rows.append(make_row(mixture, size, n_params, step * config.batch_tokens, seed, mix, losses))
            if on_eval is not None:
                on_eval(rows[-1])
        if out is not None:
            save_run(model, data, config, rows, out, size=size, tokens=tokens)
    return rows


def eos_id(data: ProxyData) -> int | None:
    """The id of the data's end-of-text token (documents are joined by it), if it has one."""
    if data.eos_token is None:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_str(data.tokenizer_json).token_to_id(data.eos_token)


def train_steps(
    model: Any, sampler: MixtureSampler, config: TrainConfig, tokens: int, device: str
) -> Iterator[int]:
    """Train `model` on the sampler's batches for `tokens` tokens; yield the step after each one that
    `config.eval_steps` names (the caller evaluates there)."""
    import torch

    optimizer, schedule = make_optimizer(model, config)
    evals = set(config.eval_steps(tokens))
    for step in range(1, config.total_steps(tokens) + 1):
        batch = torch.from_numpy(sampler.batch(config.batch_size)).to(device)
        train_step(model, optimizer, schedule, batch, config)
        if step in evals:
            yield step


def make_optimizer(model: Any, config: TrainConfig) -> tuple[Any, Any]:
    """AdamW (fused) and its schedule: linear warm-up over `warmup_steps`, then constant."""
    import torch

    # fused: one kernel for every parameter, where the default loops over them on the CPU
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
        fused=True,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, config.warmup_steps))
    )
    return optimizer, schedule


def train_step(model: Any, optimizer: Any, schedule: Any, batch: Any, config: TrainConfig) -> float:
    """One optimiser step on a (batch, context) tensor of token ids; returns the training loss."""
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=batch).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
    loss.backward()
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def save_run(
    model: Any,
    data: ProxyData,
    config: TrainConfig,
    rows: list[dict[str, Any]],
    out: str | os.PathLike[str],
    size: str,
    tokens: int,
) -> Path:
    """The checkpoint directory: Hugging Face model + tokenizer, and `proxy_run.json`."""
    from mixer.files import write_json

    target = save_checkpoint(model, data.tokenizer_json, out, data.eos_token, config.context)
    write_json(
        target / "proxy_run.json",
        {
            "size": size,
            "N": get_size(size).non_embedding_params(),
            "embedding_params": get_size(size).embedding_params(data.vocab_size),
            "vocab_size": data.vocab_size,
            "tokens_requested": int(tokens),
            "config": asdict(config),
            "data": data.summary(),
            "rows": rows,
        },
    )
    return target
