"""Train every proposed mixture at every size, in parallel processes, resumably.

Only the parent process writes the runs table: each finished run's rows are appended in one
atomic rewrite, and rows whose `run` key is already there are skipped. A run counts as done
when its final row is in the table, so a killed sweep restarts with the runs it had not
finished and never writes a row twice.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from mixer.files import read_table, write_parquet
from mixer.mixture import read_mixture
from mixer.runs import RUN, WEIGHT_PREFIX, D, N, domain_name, mixture_weights
from pipeline.progress import Tracker
from pipeline.proxy.data import ProxyData, full_weights, load_proxy_data
from pipeline.proxy.model import get_size
from pipeline.proxy.train import MIXTURE, SEED, TrainConfig, run_id, train_proxy

MIXTURE_SUFFIXES = (".yaml", ".yml", ".json")
SORT_KEYS = (MIXTURE, N, SEED, D)


@dataclass(frozen=True)
class Task:
    """One proxy run of a sweep."""

    mixture: str
    weights: tuple[tuple[str, float], ...]
    size: str
    tokens: int
    seed: int

    def final_run(self, config: TrainConfig) -> str:
        final = config.total_steps(self.tokens) * config.batch_tokens
        return run_id(self.mixture, self.size, self.seed, final)


def read_proposals(
    source: str | os.PathLike[str] | pd.DataFrame | Mapping[str, Mapping[str, float]],
) -> dict[str, dict[str, float]]:
    """Mixture id -> weights, from a proposals table (`mixture` + `h_<domain>` columns, as a file
    or a DataFrame), a directory of mixture files (id = file stem), or such a mapping."""
    if isinstance(source, pd.DataFrame):
        return _proposals_from_frame(source, "proposals")
    if isinstance(source, Mapping):
        return {str(k): dict(v) for k, v in source.items()}
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in MIXTURE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no mixture files ({', '.join(MIXTURE_SUFFIXES)})")
        return {p.stem: read_mixture(p) for p in files}
    return _proposals_from_frame(read_table(path), str(path))


def _proposals_from_frame(frame: pd.DataFrame, source: str) -> dict[str, dict[str, float]]:
    weights = mixture_weights(frame, MIXTURE, source)
    return {
        str(mixture): {domain_name(c): float(w) for c, w in row.items()}
        for mixture, row in weights.iterrows()
    }


def append_runs(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Append rows to a runs table atomically, skipping rows whose `run` is already present."""
    path = Path(path)
    new = pd.DataFrame(list(rows))
    if path.exists():
        old = pd.read_parquet(path)
        if RUN in old.columns and not new.empty:
            old_w = sorted(c for c in old.columns if c.startswith(WEIGHT_PREFIX))
            new_w = sorted(c for c in new.columns if c.startswith(WEIGHT_PREFIX))
            if old_w != new_w:
                raise ValueError(
                    f"{path}: its domains {old_w} differ from these runs' {new_w}; "
                    "write to another runs table"
                )
            new = new[~new[RUN].isin(set(old[RUN]))]
        table = pd.concat([old, new], ignore_index=True) if not new.empty else old
    else:
        table = new
    # Canonical order, so the table does not depend on which worker finished first.
    keys = [c for c in SORT_KEYS if c in table.columns]
    table = table.sort_values(keys, kind="stable").reset_index(drop=True) if keys else table
    write_parquet(path, table)
    return table


def done_runs(path: str | os.PathLike[str]) -> set[str]:
    """Run keys already in a runs table (empty if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return set()
    return set(pd.read_parquet(path, columns=[RUN])[RUN])


_WORKER: dict[str, Any] = {}


def _init_worker(data: ProxyData, config: TrainConfig, threads: int, checkpoints: str | None) -> None:
    _WORKER.update(data=data, config=config, threads=threads, checkpoints=checkpoints)


def _run_task(task: Task) -> list[dict[str, Any]]:
    out = None
    if _WORKER["checkpoints"]:
        out = Path(_WORKER["checkpoints"]) / task.mixture / f"{task.size}-seed{task.seed}"
    return train_proxy(
        _WORKER["data"],
        dict(task.weights),
        task.tokens,
        task.size,
        mixture=task.mixture,
        seed=task.seed,
        config=_WORKER["config"],
        out=out,
        threads=_WORKER["threads"],
    )


def plan_tasks(
    proposals: Mapping[str, Mapping[str, float]],
    sizes: Sequence[str],
    tokens: int,
    seed: int | Sequence[int],
    data: ProxyData,
) -> list[Task]:
    """Every (mixture, size, seed) run, biggest sizes first so the slowest runs start earliest."""
    order = sorted(sizes, key=lambda s: -get_size(s).non_embedding_params())
    seeds = [seed] if isinstance(seed, int) else list(seed)
    return [
        Task(mixture, tuple(full_weights(data, weights).items()), size, int(tokens), int(s))
        for size in order
        for s in seeds
        for mixture, weights in proposals.items()
    ]


def run_sweep(
    data: ProxyData | str | os.PathLike[str],
    proposals: str | os.PathLike[str] | pd.DataFrame | Mapping[str, Mapping[str, float]],
    sizes: Sequence[str],
    tokens: int,
    runs: str | os.PathLike[str],
    *,
    workers: int | None = None,
    threads: int | None = None,
    seed: int | Sequence[int] = 0,
    config: TrainConfig | None = None,
    checkpoints: str | os.PathLike[str] | None = None,
    on_done: Callable[[Task, list[dict[str, Any]]], None] | None = None,
    on_start: Callable[[list[Task]], None] | None = None,
) -> pd.DataFrame:
    """Train every proposal at every size (and every seed, when `seed` is a list) for `tokens`
    tokens; return the whole runs table.

    `workers` processes (default: one per core) each use `threads` torch threads (default:
    cores // workers). One worker trains in this process. `on_start` gets the runs left to train
    (after skipping those already in `runs`), `on_done` each finished run and its rows.
    """
    config = config or TrainConfig()
    for size in sizes:
        get_size(size)
    if not isinstance(data, ProxyData):
        data = load_proxy_data(data)
    proposals = read_proposals(proposals)
    done = done_runs(runs)
    tasks = [t for t in plan_tasks(proposals, sizes, tokens, seed, data) if t.final_run(config) not in done]
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(tasks) or 1))
    threads = threads or max(1, cores // workers)
    ckpt = str(checkpoints) if checkpoints is not None else None

    def finish(task: Task, rows: list[dict[str, Any]]) -> None:
        append_runs(runs, rows)
        if on_done is not None:
            on_done(task, rows)

    if on_start is not None:
        on_start(tasks)
    if workers == 1:
        _init_worker(data, config, threads, ckpt)
        for task in tasks:
            finish(task, _run_task(task))
    elif tasks:
        with ProcessPoolExecutor(
            workers,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(data, config, threads, ckpt),
        ) as pool:
            pending = {pool.submit(_run_task, t): t for t in tasks}
            try:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in sorted(finished, key=lambda f: tasks.index(pending[f])):
                        finish(pending.pop(future), future.result())
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    if not Path(runs).exists():
        raise ValueError("nothing to train: no proposals")
    return pd.read_parquet(runs)


def run_sweep_tracked(track: Tracker, description: str, *args: Any, **kwargs: Any) -> pd.DataFrame:
    """`run_sweep(*args, **kwargs)` reporting one step of `track` per finished run."""
    with contextlib.ExitStack() as stack:
        advance: list[Callable[[int], None]] = []
        on_done = kwargs.pop("on_done", None)

        def start(tasks: list[Task]) -> None:
            advance.append(stack.enter_context(track(description, total=len(tasks), unit="runs")))

        def done(task: Task, rows: list[dict[str, Any]]) -> None:
            advance[0](1)
            if on_done is not None:
                on_done(task, rows)

        return run_sweep(*args, **kwargs, on_start=start, on_done=done)
