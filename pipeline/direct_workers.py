"""DirectRunner worker processes: forked from one process that imported Beam once, and bound to the job.

In `multi_processing` mode Beam starts each SDK worker as `python -m ...sdk_worker_main`, and each
spends about 2 CPU-seconds importing Beam (pandas, boto3, pymongo, ...) before it does any work. Here
one "zygote" process starts with the job, imports the worker module (and the job's own modules)
while the job builds its graph, and forks every worker from that warm state: the import is paid
once, off the critical path. Beam sees each worker as the `Popen` it expects (wait, poll, kill).
The zygote and its workers die with the job, even on SIGKILL (PR_SET_PDEATHSIG down the chain); the
zygote is Linux only, and anywhere it cannot run Beam starts its workers as before.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

FORK_WORKERS = True  # False: Beam starts every worker process itself (each imports Beam on its own)
# A process that loads numpy starts OpenBLAS's threads, one per core, and they spin for a while before
# they sleep (also those of scipy's own OpenBLAS): about 0.1 CPU-s per library and process, taken from
# the other processes on a small machine. A job's processes use BLAS for nothing that needs threads
# (the workers are already one per core), so they load it single-threaded: a 200-document job used
# 0.5-0.9 fewer CPU-seconds (`bench/score_bench.py` prints its start-up).
SINGLE_THREADED_BLAS = {"OPENBLAS_NUM_THREADS": "1"}
_WORKER_MODULE = "apache_beam.runners.worker.sdk_worker_main"
# Runs in the worker around Beam's worker main: ask the kernel to SIGKILL this process when its parent
# (the job) dies, check that the parent is still the job (it may have died before the prctl); at the
# end, exit without tearing down the interpreter.
_WORKER_BOOT = (
    "import ctypes, os, runpy, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "del sys.argv[1:]\n"
    f"runpy.run_module({_WORKER_MODULE!r}, run_name='__main__', alter_sys=True)\n"
    "sys.stdout.flush()\n"
    "sys.stderr.flush()\n"
    "os._exit(0)  # done: skip tearing down the interpreter (see the zygote's worker)\n"
)
# The zygote: argv = job pid, request fd, reply fd, modules to preload. Requests are JSON lines (a
# worker's environment); replies are "ready", "pid P" per request and "exit P CODE" per worker. Raw
# fds only (no file objects), so a forked worker closes them once and for all.
_ZYGOTE = f"""
import ctypes, importlib, json, os, select, signal, sys, traceback
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the job
job, requests, replies = map(int, sys.argv[1:4])
if os.getppid() != job:
    os._exit(1)
for name in [{_WORKER_MODULE!r}, *sys.argv[4:]]:
    try:
        importlib.import_module(name)
    except Exception:  # the worker meets the same error where it can report it
        pass
del sys.argv[1:]
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.signal(signal.SIGCHLD, lambda *_: None)
signal.set_wakeup_fd(wake_w)
zygote, workers, pending = os.getpid(), set(), b""

def reply(text):
    os.write(replies, text.encode() + b"\\n")

def worker(env):
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in (requests, replies, wake_r, wake_w):
        os.close(fd)
    libc.prctl(1, signal.SIGKILL)  # die with the zygote
    if os.getppid() != zygote:
        os._exit(1)
    os.environ.clear()
    os.environ.update(env)
    code = 1
    try:
        importlib.import_module({_WORKER_MODULE!r}).main(sys.argv)  # what `python -m` runs
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:  # the work is done and its logs sent: skip tearing down the interpreter (as forked
        sys.stdout.flush()  # children of multiprocessing do); it cost a worker 1.6 CPU-s at 0.2 GB,
        sys.stderr.flush()  # on the job's critical path (Beam waits for every worker's exit)
        os._exit(code)

reply("ready")
while True:
    ready = select.select([requests, wake_r], [], [])[0]
    if wake_r in ready:
        os.read(wake_r, 4096)
    while workers:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if not pid:
            break
        workers.discard(pid)
        reply(f"exit {{pid}} {{os.waitstatus_to_exitcode(status)}}")
    if requests not in ready:
        continue
    data = os.read(requests, 1 << 20)
    if not data:
        break
    pending += data
    *lines, pending = pending.split(b"\\n")
    for line in lines:
        pid = os.fork()
        if pid == 0:
            worker(json.loads(line))
        workers.add(pid)
        reply(f"pid {{pid}}")
for pid in workers:  # none when Beam stopped them all (it waits for each worker's exit)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
os._exit(0)  # nothing to finalise: skip tearing down the imported modules
"""


class _ForkedWorker:
    """A worker forked by the zygote, as Beam's SubprocessSdkWorker uses a Popen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done = threading.Event()

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class _Zygote:
    """The job's side of the zygote: starts it, asks it for workers, tracks their exits."""

    def __init__(self, preload: Sequence[str]) -> None:
        request_r, self._requests = os.pipe()
        reply_r, reply_w = os.pipe()
        argv = [sys.executable, "-c", _ZYGOTE, str(os.getpid()), str(request_r), str(reply_w), *preload]
        env = {**SINGLE_THREADED_BLAS, **os.environ}  # the user's setting wins
        self._process = subprocess.Popen(argv, pass_fds=(request_r, reply_w), env=env)
        os.close(request_r)
        os.close(reply_w)
        self._ready = threading.Event()
        self._alive = False
        self._lock = threading.Lock()
        self._workers: dict[int, _ForkedWorker] = {}
        self._forked: queue.Queue[_ForkedWorker | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(reply_r,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        with open(fd, "rb") as replies:
            for line in replies:
                kind, *values = line.split()
                if kind == b"ready":
                    self._alive = True
                    self._ready.set()
                elif kind == b"pid":
                    worker = self._workers[int(values[0])] = _ForkedWorker(int(values[0]))
                    self._forked.put(worker)
                elif kind == b"exit" and int(values[0]) in self._workers:
                    self._workers.pop(int(values[0]))._exited(int(values[1]))
        self._alive = False  # the zygote is gone, and its workers with it (PR_SET_PDEATHSIG)
        self._ready.set()
        self._forked.put(None)
        for worker in self._workers.values():
            worker._exited(-signal.SIGKILL)

    def spawn(self, env: dict[str, str]) -> _ForkedWorker | None:
        """A worker forked with `env`, or None when the zygote is not there to fork one."""
        self._ready.wait()
        with self._lock:
            if not self._alive:
                return None
            try:
                os.write(self._requests, json.dumps(env).encode() + b"\n")
            except OSError:
                return None
            return self._forked.get()

    def close(self) -> None:
        """Stop the zygote (it SIGKILLs any worker still running) and wait for it."""
        with self._lock:
            os.close(self._requests)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=30)


_ZYGOTES: list[_Zygote] = []  # the running jobs' zygotes, latest last


class _WorkerSubprocess:
    """`subprocess` as Beam's local job service sees it: its one `Popen` call (the SDK worker command,
    run through a shell) becomes a worker forked by the job's zygote or, without one, a direct start of
    the worker with _WORKER_BOOT in front."""

    def __init__(self, module) -> None:
        self._module = module

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def Popen(self, args, *rest, shell: bool = False, **kwargs):  # noqa: N802 - the name Beam calls
        if shell and isinstance(args, str) and args.strip().endswith(f"-m {_WORKER_MODULE}"):
            forked = _ZYGOTES[-1].spawn(dict(kwargs.get("env") or os.environ)) if _ZYGOTES else None
            if forked is not None:
                return forked
            args, shell = [sys.executable, "-c", _WORKER_BOOT, str(os.getpid())], False
        return self._module.Popen(args, *rest, shell=shell, **kwargs)


def bind_direct_workers_to_job() -> None:
    """Make the DirectRunner's worker processes (multi_processing mode) die with the job, even when it
    is killed with SIGKILL; without this they outlive it (~180 MB each). Linux only; a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    from apache_beam.runners.portability import local_job_service

    if not isinstance(local_job_service.subprocess, _WorkerSubprocess):
        local_job_service.subprocess = _WorkerSubprocess(local_job_service.subprocess)


def _multi_processing(options: Any) -> bool:
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner
    direct = runner is None or str(runner).lower().removesuffix("runner") in ("direct", "")
    return direct and options.view_as(DirectOptions).direct_running_mode == "multi_processing"


def direct_worker_count(options: Any) -> int:
    """How many worker processes a multi_processing DirectRunner job runs (`--direct_num_workers`, or
    one per core when 0, as Beam counts them); 0 in any other mode or runner."""
    from apache_beam.options.pipeline_options import DirectOptions

    if not _multi_processing(options):
        return 0
    return options.view_as(DirectOptions).direct_num_workers or multiprocessing.cpu_count()


@contextlib.contextmanager
def direct_workers(options: Any, preload: Sequence[str] = ()) -> Iterator[None]:
    """For the pipelines run inside: DirectRunner workers bound to the job and, in multi_processing
    mode on Linux, forked from a zygote that imports Beam and `preload` while the job starts."""
    bind_direct_workers_to_job()
    if not (FORK_WORKERS and sys.platform.startswith("linux") and _multi_processing(options)):
        yield
        return
    zygote = _Zygote(preload)
    _ZYGOTES.append(zygote)
    try:
        yield
    finally:
        _ZYGOTES.remove(zygote)
        zygote.close()
