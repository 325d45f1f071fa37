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
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
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


def _init_worker(data: ProxyData, threads: int) -> None:
    _WORKER.update(data=data, threads=threads)


def _run_task(task: Task, config: TrainConfig, checkpoints: str | None) -> list[dict[str, Any]]:
    out = None if checkpoints is None else Path(checkpoints) / task.mixture / f"{task.size}-seed{task.seed}"
    return train_proxy(
        _WORKER["data"],
        dict(task.weights),
        task.tokens,
        task.size,
        mixture=task.mixture,
        seed=task.seed,
        config=config,
        out=out,
        threads=_WORKER["threads"],
    )


Finish = Callable[[Task, list[dict[str, Any]]], None]


class Batch:
    """Runs submitted to a `TrainingPool`; `wait` hands each finished one to `finish` in plan order
    (without worker processes it trains them there, one by one)."""

    def __init__(
        self,
        tasks: list[Task],
        config: TrainConfig,
        checkpoints: str | None,
        futures: list[Future[list[dict[str, Any]]]] | None,
    ) -> None:
        self.tasks, self.config, self.checkpoints, self.futures = tasks, config, checkpoints, futures

    def wait(self, finish: Finish) -> None:
        if self.futures is None:
            for task in self.tasks:
                finish(task, _run_task(task, self.config, self.checkpoints))
            return
        order = {id(f): i for i, f in enumerate(self.futures)}
        pending = set(self.futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: order[id(f)]):
                finish(self.tasks[order[id(future)]], future.result())


class TrainingPool:
    """`workers` processes (default: one per core) that train proxy runs on `data`, each with
    `threads` torch threads (default: cores // workers); with one worker, runs train in this process.
    One pool serves several sweeps (the workers start once), and what `submit` queues trains while
    this process does other work."""

    def __init__(self, data: ProxyData, workers: int | None = None, threads: int | None = None) -> None:
        cores = os.cpu_count() or 1
        self.data = data
        self.workers = max(1, workers or cores)
        self.threads = threads or max(1, cores // self.workers)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> TrainingPool:
        _init_worker(self.data, self.threads)
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.data, self.threads),
            )
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=error is None, cancel_futures=error is not None)

    def submit(self, tasks: list[Task], config: TrainConfig, checkpoints: str | None = None) -> Batch:
        """Queue `tasks` on the workers (none: they train in `Batch.wait`) and return their batch."""
        if self._pool is None:
            return Batch(tasks, config, checkpoints, None)
        futures = [self._pool.submit(_run_task, task, config, checkpoints) for task in tasks]
        return Batch(tasks, config, checkpoints, futures)


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
    on_done: Finish | None = None,
    on_start: Callable[[list[Task]], None] | None = None,
    pool: TrainingPool | None = None,
) -> pd.DataFrame:
    """Train every proposal at every size (and every seed, when `seed` is a list) for `tokens`
    tokens; return the whole runs table.

    The runs train in `pool`, or in a `TrainingPool(data, workers, threads)` of their own. `on_start`
    gets the runs left to train (after skipping those already in `runs`), `on_done` each finished
    run and its rows.
    """
    config = config or TrainConfig()
    data = pool.data if pool is not None else data
    data = data if isinstance(data, ProxyData) else load_proxy_data(data)
    tasks = plan_todo(data, proposals, sizes, tokens, runs, seed, config)
    if on_start is not None:
        on_start(tasks)

    def finish(task: Task, rows: list[dict[str, Any]]) -> None:
        append_runs(runs, rows)
        if on_done is not None:
            on_done(task, rows)

    ckpt = str(checkpoints) if checkpoints is not None else None
    own = pool is None
    pool = pool or TrainingPool(data, min(workers or os.cpu_count() or 1, len(tasks) or 1), threads)
    with pool if own else contextlib.nullcontext():
        pool.submit(tasks, config, ckpt).wait(finish)
    if not Path(runs).exists():
        raise ValueError("nothing to train: no proposals")
    return pd.read_parquet(runs)


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


def plan_todo(
    data: ProxyData,
    proposals: str | os.PathLike[str] | pd.DataFrame | Mapping[str, Mapping[str, float]],
    sizes: Sequence[str],
    tokens: int,
    runs: str | os.PathLike[str],
    seed: int | Sequence[int],
    config: TrainConfig,
) -> list[Task]:
    """`plan_tasks` less the runs whose final row is already in the runs table `runs`."""
    for size in sizes:
        get_size(size)
    done = done_runs(runs)
    planned = plan_tasks(read_proposals(proposals), sizes, tokens, seed, data)
    return [t for t in planned if t.final_run(config) not in done]


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
