"""Choosing domain weights: runs tables, RegMix regression, mixture scaling laws.

The public API (see `mixer.api`) is re-exported here: `load_mixture`, `export_mixture`,
`interleave_config`, `budget_caps`, `check_mixture_budget`, `regmix_mixture`, `law_mixture`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "budget_caps",
    "check_mixture_budget",
    "export_mixture",
    "interleave_config",
    "law_mixture",
    "load_mixture",
    "regmix_mixture",
]

if TYPE_CHECKING:
    from mixer.api import (
        budget_caps,
        check_mixture_budget,
        export_mixture,
        interleave_config,
        law_mixture,
        load_mixture,
        regmix_mixture,
    )


def __getattr__(name: str) -> Any:
    # Loaded on first use, so `import mixer.files` (and `datamixer --help`) stays light.
    if name in __all__:
        from mixer import api

        return getattr(api, name)
    raise AttributeError(f"module 'mixer' has no attribute {name!r}")
