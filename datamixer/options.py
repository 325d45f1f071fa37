"""Options several commands share, declared once (typer `Annotated` types), and the parsers of their
values: comma lists, `name=value` mappings or files. A command's own options stay in its module."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

# Typer settings of a command that runs a Beam job: what follows `--` goes to the runner.
BEAM_COMMAND = {"allow_extra_args": True, "ignore_unknown_options": True}
MIXTURE_SUFFIXES = (".yaml", ".yml")

Seed = Annotated[int, typer.Option("--seed", help="Random seed (every result is deterministic under it).")]
OutDir = Annotated[Path, typer.Option("--out", help="Output directory (replaced atomically).")]

# Reading documents
Input = Annotated[list[str], typer.Option("--input", help="JSONL(.gz/.zst)/Parquet glob (repeatable).")]
TextField = Annotated[str, typer.Option("--text-field", help="Field (or column) holding the text.")]
IdField = Annotated[str, typer.Option("--id-field", help="Field (or column) holding the document id.")]
MaxChars = Annotated[int, typer.Option("--max-chars", help="Longest document, in characters.")]
Runner = Annotated[
    str,
    typer.Option(
        "--runner", help="direct, portable, dataflow, spark or flink; Beam flags for it go after `--`."
    ),
]

# Causal LMs (AttentionInfluence, PreSelect)
LMPath = Annotated[Path, typer.Option("--model", help="Local HF causal LM directory or .gguf file.")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 (default: cuda if any).")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (bf16 on CUDA, else fp32), float32, bfloat16.")]
BatchTokens = Annotated[int, typer.Option("--batch-tokens", help="Padded tokens per forward pass.")]

# Mixtures and their constraints
MixtureFile = Annotated[Path, typer.Option("--mixture", help="Mixture file (YAML/JSON): domain -> weight.")]
Caps = Annotated[
    str | None, typer.Option("--caps", help="Per-domain max weight: d=w,... or a YAML/JSON file.")
]
Floors = Annotated[
    str | None,
    typer.Option("--floors", "--floor", help="Per-domain min weight: d=w,... or a YAML/JSON file."),
]
Stats = Annotated[
    Path | None, typer.Option("--stats", help="domain_stats.parquet (tokens kept) for data-budget caps.")
]
TrainTokens = Annotated[
    str | None, typer.Option("--train-tokens", help="Planned tokens of the target run, e.g. 100B.")
]
MaxEpochs = Annotated[
    float, typer.Option("--max-epochs", help="Cap each domain at this many epochs of its data.")
]
Reuse = Annotated[
    Path | None, typer.Option("--reuse", help="Previous mixture YAML: keep the unchanged domains' ratios.")
]
Changed = Annotated[
    str | None, typer.Option("--changed", help="With --reuse: the domains added or revised, d1,d2.")
]


def quiet_beam() -> None:
    """Beam's own INFO logging off: a command reports its progress itself."""
    logging.getLogger("apache_beam").setLevel(logging.WARNING)


def split_list(values: str | list[str] | None) -> list[str]:
    """Comma-separated and/or repeated option values, in order, blanks dropped: `a,b` + `c` -> [a, b, c]."""
    if values is None:
        return []
    values = [values] if isinstance(values, str) else values
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """Repeated `NAME=VALUE` options as a dict; anything else is an error naming the option."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{what}: expected NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def parse_mapping(text: str | None, what: str) -> dict[str, float]:
    """`domain=value,domain=value`, or a YAML/JSON file holding {domain: value}, or that mapping under
    the option's name (`caps:` for --caps) or `weights:` (a mixture file)."""
    if not text:
        return {}
    path = Path(text)
    items: list[tuple[Any, Any]]
    if path.suffix.lower() in (*MIXTURE_SUFFIXES, ".json") and path.exists():
        from mixer.files import read_yaml

        data = json.loads(path.read_text()) if path.suffix.lower() == ".json" else read_yaml(path)
        for key in (what.lstrip("-"), "weights"):
            if isinstance(data, dict) and isinstance(data.get(key), dict):
                data = data[key]
        if not isinstance(data, dict):
            raise ValueError(f"{path}: {what} file must map name -> number")
        items = list(data.items())
    else:
        items = []
        for part in text.split(","):
            name, sep, value = part.rpartition("=")
            if not sep or not name.strip():
                raise ValueError(f"{what}: expected name=value pairs separated by commas, got {part!r}")
            items.append((name.strip(), value.strip()))
    out: dict[str, float] = {}
    for name, value in items:
        try:
            out[str(name)] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: value for {name!r} is not a number: {value!r}") from None
    return out
