"""Resolve `_target_` nodes of examples/hydra/config.yaml the way `hydra.utils.instantiate` does,
without Hydra: import the dotted name and call it with the node's other keys as keyword arguments.

    python examples/hydra/run.py [examples/hydra/config.yaml]
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

CONFIG = Path(__file__).with_name("config.yaml")


def locate(dotted: str) -> Any:
    """The object a `_target_` string names, e.g. `mixer.load_mixture`."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def instantiate(node: Any) -> Any:
    """Call every `_target_` in a parsed config, innermost first, as Hydra does (keys starting
    with `_` are Hydra's own and not passed on)."""
    if isinstance(node, dict):
        values = {k: instantiate(v) for k, v in node.items() if not str(k).startswith("_")}
        return locate(node["_target_"])(**values) if "_target_" in node else values
    if isinstance(node, list):
        return [instantiate(v) for v in node]
    return node


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = yaml.safe_load(Path(argv[0] if argv else CONFIG).read_text())
    data = instantiate(config["data"])
    print(json.dumps(data, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
