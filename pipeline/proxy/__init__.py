"""Proxy-model training: tiny Llama LMs on domain mixtures, rows for the runs table.

`load_proxy_data(score_dir)` reads and splits the kept documents once; `train_proxy(data, weights,
tokens, size)` trains one model and returns its runs-table rows; `run_sweep(data, proposals,
sizes, tokens, runs)` trains every proposal at every size in parallel and resumably.
"""

from pipeline.proxy.data import ProxyData, load_proxy_data
from pipeline.proxy.model import SIZES, ModelSize
from pipeline.proxy.sweep import append_runs, read_proposals, run_sweep
from pipeline.proxy.train import TrainConfig, train_proxy

__all__ = [
    "SIZES",
    "ModelSize",
    "ProxyData",
    "TrainConfig",
    "append_runs",
    "load_proxy_data",
    "read_proposals",
    "run_sweep",
    "train_proxy",
]
