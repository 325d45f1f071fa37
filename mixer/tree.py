"""Hierarchical domains (source -> topic -> quality bucket) and the level-by-level proxy sampler.

A tree file (YAML) names the domains and, per level, how to sample them:

    levels:                       # top level first; every field optional (RegMix's defaults)
      - {name: source, min_strength: 0.1, max_strength: 5.0, temperature: 0.5, min_weight: 0.02}
      - {name: topic, temperature: 0.7, min_weight: 0.05}
      - {name: quality, prior: {top10: 0.6, rest: 0.4}}   # manual prior: by name or full path
    domains:
      web:
        science: {top10: 2.0e9, rest: 1.8e10}   # leaves: token counts ...
        news: {top10: {paths: [data/web/news/top10*.bin]}, rest: 4.0e9}   # ... or paths to count
      code: 5.0e9                                # a leaf may sit at any depth

Leaves are named by their path joined with ':' (`web:science:top10`), as Olmix names them, and those
leaf names are the domains everywhere else (runs tables, mixture files, exports, the data budget).

Sampling follows Olmix's `generate_weights_dirichlet` (allenai/olmix, olmix/generate/
synthesize_mixture.py): each sibling group draws conditional weights from Dirichlet(prior * s), s
log-uniform in the level's strength range, the prior being the children's token shares ** the
level's temperature (or the manual prior); a leaf's weight is the product down its path. Olmix has
two levels (source, then topic or quality); here every level of the tree gets its own settings.
Minimum weights are relative to the parent (Olmix's topic rule; at the top level that is absolute).
Bounds reuse `mixer.sampler`: a node's cap is the sum of its leaves' token caps, so its conditional
cap is cap / parent weight; RegMix's rejection runs for its draw budget, then draws are projected
into the bounds (`box_simplex_projection`), and small weights are zeroed by the same `zero_small`,
so the count asked for is always the count returned.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixer import sampler
from mixer.files import safe_load_yaml
from mixer.mixture import check_known, nonnegative_number
from mixer.runs import WEIGHT_PREFIX
from mixer.simplex import check_bounds

SEPARATOR = ":"
NONZERO_FLOOR = 1e-3  # conditional floor of a --nonzero domain whose level has no minimum weight
LEAF_KEYS = ("tokens", "paths")


@dataclass(frozen=True)
class Level:
    """Sampling settings for one depth of the tree (conditional on the parent)."""

    name: str
    min_strength: float = sampler.MIN_CONCENTRATION
    max_strength: float = sampler.MAX_CONCENTRATION
    temperature: float = sampler.TEMPERATURE
    min_weight: float = 0.0
    prior: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Node:
    """A domain or group of domains; `path` is its full name (`web:science`)."""

    path: str
    name: str
    depth: int
    children: tuple[Node, ...] = ()
    tokens: float | None = None
    paths: tuple[str, ...] = ()

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def leaves(self) -> list[Node]:
        return [self] if self.is_leaf else [leaf for c in self.children for leaf in c.leaves()]


@dataclass(frozen=True)
class DomainTree:
    """The domains as a tree, with one `Level` per depth."""

    roots: tuple[Node, ...]
    levels: tuple[Level, ...]

    def leaves(self) -> list[Node]:
        return [leaf for r in self.roots for leaf in r.leaves()]

    @property
    def domains(self) -> list[str]:
        return [leaf.path for leaf in self.leaves()]

    def groups(self) -> list[tuple[Node | None, tuple[Node, ...]]]:
        """(parent, children) sibling groups, parents before their children; None is the root."""
        out: list[tuple[Node | None, tuple[Node, ...]]] = [(None, self.roots)]
        queue = list(self.roots)
        while queue:
            node = queue.pop(0)
            if node.children:
                out.append((node, node.children))
                queue.extend(node.children)
        return out

    def leaf_tokens(self, tokens: Mapping[str, float] | None = None) -> dict[str, float]:
        """Leaf -> tokens: counts in the tree, overridden by `tokens`; an error names any leaf
        with neither."""
        given = dict(tokens or {})
        check_known(given, self.domains, "token table", "tree")
        out = {leaf.path: given.get(leaf.path, leaf.tokens) for leaf in self.leaves()}
        missing = [d for d, v in out.items() if v is None]
        if missing:
            raise ValueError(
                f"no token count for leaf/leaves {missing}: give them in the tree or a "
                "token table (`datamixer priors` counts them from tokenized files)"
            )
        return {d: float(v) for d, v in out.items()}  # type: ignore[arg-type]

    def to_dict(self, tokens: Mapping[str, float] | None = None) -> dict[str, Any]:
        """The tree as the YAML body `read_tree` reads (leaves as token counts where known)."""
        counts = dict(tokens or {})

        def body(node: Node) -> Any:
            if node.is_leaf:
                value = counts.get(node.path, node.tokens)
                return float(value) if value is not None else {"paths": list(node.paths)}
            return {c.name: body(c) for c in node.children}

        levels = [
            {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in vars(lv).items()} for lv in self.levels
        ]
        return {"levels": levels, "domains": {r.name: body(r) for r in self.roots}}


def _parse_node(name: str, value: Any, parent: str, depth: int, where: str) -> Node:
    path = f"{parent}{SEPARATOR}{name}" if parent else str(name)
    if SEPARATOR in str(name) or not str(name):
        raise ValueError(f"{where}: domain name {name!r} must be non-empty and contain no {SEPARATOR!r}")
    if isinstance(value, Mapping) and value and set(value) <= set(LEAF_KEYS):
        tokens = value.get("tokens")
        paths = value.get("paths") or ()
        paths = (paths,) if isinstance(paths, str) else tuple(str(p) for p in paths)
        if tokens is None and not paths:
            raise ValueError(f"{where}: leaf {path!r} needs `tokens` or `paths`")
        return Node(path, str(name), depth, tokens=_count(tokens, path, where), paths=paths)
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{where}: node {path!r} has no children")
        children = tuple(_parse_node(str(k), v, path, depth + 1, where) for k, v in value.items())
        return Node(path, str(name), depth, children)
    return Node(path, str(name), depth, tokens=_count(value, path, where))


def _count(value: Any, path: str, where: str) -> float | None:
    return None if value is None else nonnegative_number(value, f"{where}: leaf {path!r}: token count")


def _number(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{where}: {value!r} is not finite")
    return number


def _parse_level(index: int, raw: Any, where: str) -> Level:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: levels[{index}] must be a mapping, got {raw!r}")
    known = set(Level.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{where}: levels[{index}]: unknown setting(s) {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {"name": str(raw.get("name", f"level{index}"))}
    for key in ("min_strength", "max_strength", "temperature", "min_weight"):
        if key in raw:
            values[key] = _number(raw[key], f"{where}: levels[{index}].{key}")
    prior = raw.get("prior") or {}
    if not isinstance(prior, Mapping):
        raise ValueError(f"{where}: levels[{index}].prior must map node -> weight, got {prior!r}")
    values["prior"] = {str(k): _number(v, f"{where}: levels[{index}].prior[{k!r}]") for k, v in prior.items()}
    level = Level(**values)
    if not 0 < level.min_strength <= level.max_strength:
        raise ValueError(f"{where}: level {level.name!r}: need 0 < min_strength <= max_strength")
    if level.temperature <= 0:
        raise ValueError(f"{where}: level {level.name!r}: temperature must be > 0")
    if not 0 <= level.min_weight < 1:
        raise ValueError(f"{where}: level {level.name!r}: min_weight must be in [0, 1)")
    if any(v < 0 for v in level.prior.values()):
        raise ValueError(f"{where}: level {level.name!r}: prior weights must be >= 0")
    return level


def parse_tree(data: Any, where: str = "tree") -> DomainTree:
    """A `DomainTree` from the parsed YAML body (`levels`, `domains`); errors name the node."""
    if not isinstance(data, Mapping) or not isinstance(data.get("domains"), Mapping) or not data["domains"]:
        raise ValueError(f"{where}: expected a mapping with a non-empty `domains` tree")
    extra = sorted(set(data) - {"levels", "domains"})
    if extra:
        raise ValueError(f"{where}: unknown top-level key(s) {extra}; expected `levels` and `domains`")
    roots = tuple(_parse_node(str(k), v, "", 0, where) for k, v in data["domains"].items())
    raw_levels = data.get("levels") or []
    levels = tuple(_parse_level(i, raw, where) for i, raw in enumerate(raw_levels))
    tree = DomainTree(roots, levels)
    depth = max(leaf.depth for leaf in tree.leaves()) + 1
    if len(levels) < depth:  # unnamed deeper levels sample with the defaults
        tree = DomainTree(roots, levels + tuple(Level(f"level{i}") for i in range(len(levels), depth)))
    elif len(levels) > depth:
        raise ValueError(f"{where}: {len(levels)} levels configured but the tree is {depth} deep")
    for parent, children in tree.groups():
        _group_prior(tree, parent, children)  # validates manual priors early
    for level in tree.levels:
        known = {
            k
            for _, children in tree.groups()
            for c in children
            if tree.levels[c.depth] is level
            for k in (c.path, c.name)
        }
        unknown = sorted(set(level.prior) - known)
        if unknown:
            raise ValueError(f"{where}: level {level.name!r}: prior names {unknown}, not nodes of that level")
    return tree


def read_tree(path: str | os.PathLike[str]) -> DomainTree:
    """Read a tree YAML file (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such tree file")
    return parse_tree(safe_load_yaml(path.read_text(), path), str(path))


def _group_prior(
    tree: DomainTree, parent: Node | None, children: Sequence[Node], shares: Mapping[str, float] | None = None
) -> np.ndarray | None:
    """The children's prior: the level's manual prior (by path or name) or tempered token shares."""
    level = tree.levels[children[0].depth]
    manual = [level.prior.get(c.path, level.prior.get(c.name)) for c in children]
    if any(v is not None for v in manual):
        if any(v is None for v in manual):
            missing = [c.path for c, v in zip(children, manual, strict=True) if v is None]
            raise ValueError(
                f"level {level.name!r}: manual prior covers some of the siblings under "
                f"{parent.path if parent else 'the root'} but not {missing}"
            )
        values = np.array(manual, dtype=float)
        if values.sum() <= 0:
            raise ValueError(
                f"level {level.name!r}: manual prior sums to 0 under {parent.path if parent else 'the root'}"
            )
        return values / values.sum()
    if shares is None:
        return None
    mass = np.array([sum(shares[leaf.path] for leaf in c.leaves()) for c in children])
    if mass.sum() <= 0:
        return np.full(len(children), 1.0 / len(children))
    prior = np.where(
        mass > 0, sampler.tempered_prior(np.maximum(mass / mass.sum(), 1e-300), level.temperature), 0.0
    )
    return prior / prior.sum()


def weights_by_level(
    weights: Mapping[str, float], level_names: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Leaf weights summed per level: {level name: {node path: weight}} (pure).

    Works from the ':'-joined leaf names alone (ours and Olmix's); a leaf shallower than a level
    stands for itself there. Level names default to `level0`, `level1`, ...
    """
    depth = max((str(d).count(SEPARATOR) + 1 for d in weights), default=0)
    names = list(level_names or [])
    names += [f"level{i}" for i in range(len(names), depth)]
    out: dict[str, dict[str, float]] = {}
    for i in range(depth):
        level: dict[str, float] = {}
        for domain, weight in weights.items():
            key = SEPARATOR.join(str(domain).split(SEPARATOR)[: i + 1])
            level[key] = level.get(key, 0.0) + float(weight)
        out[names[i]] = level
    return out


def level_frame(frame: pd.DataFrame, depth: int) -> pd.DataFrame:
    """A runs or proposals table with its `h_<leaf>` columns summed to `h_<node>` at `depth`
    (0: sources), other columns kept: fit or plot a swarm at one level of the tree (pure)."""
    weights = [c for c in frame.columns if str(c).startswith(WEIGHT_PREFIX)]
    groups: dict[str, list[str]] = {}
    for column in weights:
        parts = str(column)[len(WEIGHT_PREFIX) :].split(SEPARATOR)
        groups.setdefault(WEIGHT_PREFIX + SEPARATOR.join(parts[: depth + 1]), []).append(column)
    summed = pd.DataFrame({node: frame[cols].sum(axis=1) for node, cols in groups.items()}, index=frame.index)
    return pd.concat([frame.drop(columns=weights), summed], axis=1)


@dataclass
class _Group:
    """One sibling group prepared for vectorised sampling."""

    parent: int | None  # index into the node list, None for the root
    children: list[int]
    prior: np.ndarray
    cap: np.ndarray  # absolute caps of the children (sum of their leaves' caps)
    floor: np.ndarray  # conditional floors (--nonzero)
    level: Level


def _prepare(
    tree: DomainTree, shares: Mapping[str, float], leaf_caps: Mapping[str, float], nonzero: set[str]
) -> tuple[list[Node], list[_Group]]:
    nodes: list[Node] = []
    index: dict[str, int] = {}
    groups = []
    for parent, children in tree.groups():
        for child in children:
            index[child.path] = len(nodes)
            nodes.append(child)
        level = tree.levels[children[0].depth]
        floor_value = max(level.min_weight, NONZERO_FLOOR)
        floor = np.array([floor_value if c.path in nonzero else 0.0 for c in children])
        if floor.sum() > 1:
            raise ValueError(
                f"--nonzero: {int((floor > 0).sum())} siblings under "
                f"{parent.path if parent else 'the root'} each need >= {floor_value:g}"
            )
        cap = np.array([min(1.0, sum(leaf_caps[leaf.path] for leaf in c.leaves())) for c in children])
        prior = np.maximum(_group_prior(tree, parent, children, shares), 1e-12)  # type: ignore[arg-type]
        groups.append(
            _Group(
                None if parent is None else index[parent.path],
                [index[c.path] for c in children],
                prior,
                cap,
                floor,
                level,
            )
        )
    return nodes, groups


def _expand_nonzero(tree: DomainTree, nonzero: Sequence[str]) -> set[str]:
    """The named nodes (leaf or inner, full path or unique name) and all their ancestors."""
    every = {leaf.path for leaf in tree.leaves()}
    for leaf in list(every):
        parts = leaf.split(SEPARATOR)
        every.update(SEPARATOR.join(parts[:i]) for i in range(1, len(parts)))
    out: set[str] = set()
    for name in nonzero:
        matches = [p for p in every if p == name] or [p for p in every if p.split(SEPARATOR)[-1] == name]
        if len(matches) != 1:
            raise ValueError(
                f"--nonzero: {name!r} matches {len(matches)} nodes of the tree "
                f"({sorted(matches)[:5]}); give its full path, e.g. web:science"
            )
        parts = matches[0].split(SEPARATOR)
        out.update(SEPARATOR.join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def _draw(
    groups: list[_Group], n_nodes: int, batch: int, rng: np.random.Generator, project: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Absolute node weights (batch x nodes) and which rows drew inside every bound."""
    absolute = np.zeros((batch, n_nodes))
    inside = np.ones(batch, dtype=bool)
    for g in groups:
        parent = np.ones(batch) if g.parent is None else absolute[:, g.parent]
        lv = g.level
        strength = np.exp(rng.uniform(math.log(lv.min_strength), math.log(lv.max_strength), size=batch))
        draws = sampler.sample_dirichlet(g.prior[None, :] * strength[:, None], rng)
        with np.errstate(divide="ignore"):
            # + 1e-12: the children's caps sum to the parent's, which rounding may overshoot.
            upper = np.where(
                parent[:, None] > 0, np.minimum(1.0, g.cap[None, :] / parent[:, None] + 1e-12), 1.0
            )
        lower = np.minimum(np.broadcast_to(g.floor, draws.shape), upper)
        ok = ((draws <= upper + 1e-12) & (draws >= lower - 1e-12)).all(axis=1)
        inside &= ok | (parent <= 0)
        if project:
            draws = sampler.box_simplex_projection(draws, lower, upper)
        if lv.min_weight > 0:
            draws = sampler.zero_small(draws, lower, upper, lv.min_weight)
        absolute[:, g.children] = parent[:, None] * draws
    return absolute, inside


def propose_tree_mixtures(
    tree: DomainTree,
    n: int,
    tokens: Mapping[str, float] | None = None,
    proxy_tokens: float = sampler.PROXY_TOKENS,
    max_epochs: float = sampler.MAX_EPOCHS,
    dedup_l1: float = sampler.DEDUP_L1,
    caps: Mapping[str, float] | None = None,
    nonzero: Sequence[str] = (),
    existing: np.ndarray | None = None,
    min_distance: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """`n` distinct proxy mixtures over the tree's leaves: `mixture` and `h_<leaf>` columns.

    `existing` (rows x leaves, plus an optional last column of weight on other domains) keeps
    every new mixture farther than `min_distance` (L1) from each of those runs.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    counts = tree.leaf_tokens(tokens)
    shares = sampler.token_shares(counts)
    leaf_caps = {**sampler.domain_caps(counts, proxy_tokens, max_epochs), **dict(caps or {})}
    check_known(dict(caps or {}), list(counts), "cap", "tree")
    check_bounds(np.zeros(len(counts)), np.array([leaf_caps[d] for d in counts]), list(counts))
    nodes, groups = _prepare(tree, shares, leaf_caps, _expand_nonzero(tree, nonzero))
    leaf_index = [i for i, node in enumerate(nodes) if node.is_leaf]
    order = [nodes[i].path for i in leaf_index]
    columns = [order.index(d) for d in counts]  # leaves in the tree's order
    rng = np.random.default_rng(seed)

    def draw(batch: int, rejecting: bool) -> tuple[np.ndarray, np.ndarray]:
        absolute, inside = _draw(groups, len(nodes), batch, rng, project=not rejecting)
        rows = absolute[:, leaf_index][:, columns]
        if rejecting:
            rows, inside = rows[inside], inside[inside]
        return rows / rows.sum(axis=1, keepdims=True), inside

    advice = "lower n, dedup_l1 or --min-distance, or loosen the caps"
    return sampler.collect_proposals(draw, n, list(counts), dedup_l1, existing, min_distance, advice)
