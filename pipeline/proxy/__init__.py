"""Proxy-model training: tiny Llama LMs on domain mixtures, rows for the runs table.

`load_proxy_data(score_dir)` reads and splits the kept documents once; `train_proxy(data, weights,
tokens, size)` trains one model and returns its runs-table rows; `run_sweep(data, proposals,
sizes, tokens, runs)` trains every proposal at every size in parallel and resumably, in a
`TrainingPool` of worker processes that several sweeps can share.
"""

from pipeline.proxy.data import ProxyData, load_proxy_data
from pipeline.proxy.model import SIZES, ModelSize
from pipeline.proxy.sweep import TrainingPool, append_runs, read_proposals, run_sweep
from pipeline.proxy.train import TrainConfig, train_proxy

__all__ = [
    "SIZES",
    "ModelSize",
    "ProxyData",
    "TrainConfig",
    "TrainingPool",
    "append_runs",
    "load_proxy_data",
    "read_proposals",
    "run_sweep",
    "train_proxy",
]
