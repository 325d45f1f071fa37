"""AttentionInfluence (Hua et al. 2025, arXiv:2505.07293): score documents by how much a small LM's loss
rises when its retrieval heads attend uniformly instead of where they learned to.

- `probes`: synthetic 3-shot JSON key-value probes (torch-free).
- `masking`: uniform-prefix heads and argmax recording inside the model's attention function.
- `heads`: per-head retrieval score (Wu et al. 2024, arXiv:2404.15574) and head selection.
- `scorer`: `AttentionInfluenceScorer`, score = (L_masked - L_base) / L_base per document.

Every public name of these modules is importable from here (loaded on first use, so that importing
the torch-free `probes` never pulls in torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "probes": (
        "PROBE_DEFAULTS",
        "DEFAULT_PROBES",
        "DEFAULT_PROBE_TOKENS",
        "MAX_VALUE_TOKENS",
        "KEY_CHARS",
        "N_SHOTS",
        "Probe",
        "CopyKeys",
        "normalize_token",
        "copy_ceiling",
        "probe_defaults",
        "split_sentences",
        "stdlib_sentences",
        "corpus_sentences",
        "build_probes",
    ),
    "masking": (
        "ATTN_IMPLEMENTATION",
        "EAGER_IMPLEMENTATION",
        "Head",
        "uniform_prefix_average",
        "argmax_keys",
        "register_attention",
        "prepare_model",
        "attention_modules",
        "head_count",
        "uniform_heads",
        "recording_argmax",
    ),
    "heads": (
        "DEFAULT_TOP_FRACTION",
        "SCORE_METHOD",
        "retrieval_head_scores",
        "select_heads",
        "heads_document",
        "load_heads",
        "Detection",
        "detect_heads",
    ),
    "scorer": ("DocumentScores", "AttentionInfluenceScorer"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
