"""`datamixer report` on a `regmix propose` output: the proposals' weights by tree level (one box
plot per level, a mean/min/max table per node) and, for a flat swarm, per domain."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from datamixer.cli import main
from mixer.mixture import write_mixture
from pipeline import layout
from pipeline.report import collect

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "swarm_tree.yaml"


def _run(args: list[str], capsys) -> dict:
    assert main(args) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _expected_rows(proposals: pd.DataFrame, depth: int) -> dict[str, tuple[float, float, float]]:
    """Node -> (mean, min, max) of its summed weight across proposals, computed here with pandas."""
    leaves = proposals.filter(like="h_")
    nodes = leaves.T.groupby(lambda c: ":".join(c[2:].split(":")[: depth + 1])).sum().T
    return {node: (nodes[node].mean(), nodes[node].min(), nodes[node].max()) for node in nodes.columns}


def _page_rows(page: str) -> set[str]:
    """The short table's rows as 'cell|cell|...' strings."""
    rows = re.findall(r"<tr>(.*?)</tr>", re.sub(r">\s+<", "><", page))
    return {"|".join(re.findall(r"<td>(.*?)</td>", row)) for row in rows}


def test_report_of_a_tree_proposal_shows_weights_by_level(tmp_path, capsys):
    out = tmp_path / "swarm"
    _run(["regmix", "propose", "--tree", str(EXAMPLE), "--n", "40", "--seed", "3", "--out", str(out)], capsys)
    result = _run(["report", str(out)], capsys)
    assert result["kind"] == "propose" and result["sections"] == ["proposals_by_level"]
    assert result["plots"] == 1 and (out / "report" / "proposals_by_level.png").stat().st_size > 0
    page = (out / "report.html").read_text()
    assert "Proposed mixtures by tree level (40)" in page
    assert "<a href='proposals.parquet'>" in page
    proposals = pd.read_parquet(out / "proposals.parquet")
    rows = _page_rows(page)
    for depth, level in enumerate(["source", "topic", "quality"]):
        expected = _expected_rows(proposals, depth)
        assert len(expected) == [4, 7, 10][depth]
        for node, values in expected.items():
            assert "|".join([level, node, *(f"{v:.4g}" for v in values)]) in rows
    assert "<td>web:science</td>" in page and "<td>web:forums:rest</td>" in page
    full = pd.read_parquet(out / "report" / "proposals_by_level.parquet")
    assert len(full) == 40 * (4 + 7 + 10)


def test_report_of_a_flat_proposal_shows_weights_per_domain(tmp_path, capsys):
    tokens = tmp_path / "tokens.csv"
    pd.DataFrame({"domain": ["web", "code", "books"], "tokens": [8e9, 2e9, 1e9]}).to_csv(tokens, index=False)
    out = tmp_path / "flat"
    _run(["regmix", "propose", "--tokens", str(tokens), "--n", "16", "--out", str(out)], capsys)
    assert _run(["report", str(out)], capsys)["sections"] == ["proposals_by_level"]
    page = (out / "report.html").read_text()
    assert "Proposed mixtures per domain (16)" in page
    rows = _page_rows(page)
    for node, values in _expected_rows(pd.read_parquet(out / "proposals.parquet"), 0).items():
        assert "|".join(["domain", node, *(f"{v:.4g}" for v in values)]) in rows


def test_demo_mixtures_with_tree_domains_are_shown_by_level(tmp_path):
    """A demo whose domains are ':' paths also shows the compared mixtures summed per level."""
    paths = layout.RunLayout(tmp_path)
    optimized = {"web:science": 0.5, "web:news": 0.2, "code": 0.3}
    natural = {"web:science": 0.1, "web:news": 0.6, "code": 0.3}
    write_mixture(paths.mixture("optimized"), optimized)
    write_mixture(paths.mixture("natural"), natural)
    report = collect(tmp_path)
    assert [s.key for s in report.sections] == ["mixtures", "mixtures_by_level"]
    short = report.sections[1].short.set_index(["level", "node"])
    assert list(short.columns) == ["optimized", "natural"]
    assert short.loc[("level0", "web"), "optimized"] == pytest.approx(0.7)
    assert short.loc[("level0", "web"), "natural"] == pytest.approx(0.7)
    assert short.loc[("level1", "web:news"), "natural"] == pytest.approx(0.6)
    assert short.loc[("level1", "code"), "optimized"] == pytest.approx(0.3)
    assert len(short) == 2 + 3
    write_mixture(paths.mixture("optimized"), {"web": 0.7, "code": 0.3})  # flat names: no such section
    write_mixture(paths.mixture("natural"), {"web": 0.4, "code": 0.6})
    assert [s.key for s in collect(tmp_path).sections] == ["mixtures"]
