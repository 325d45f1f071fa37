"""`datamixer report` on the output of single steps: a score directory (drops by reason, scores with
cut-offs), a `regmix fit` model directory (out-of-fold predictions, domain effects), a `law fit` JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamixer.cli import main
from pipeline import schema as S
from pipeline.report import collect, detect, output_paths
from pipeline.report.sections import drop_counts


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture()
def score_dir(tmp_path):
    """A score output with the stages' drop reasons (kept by the stages: null), a score cut-off and
    two dead letters."""
    rng = np.random.default_rng(0)
    n = 40
    domains = ["code"] * 20 + ["prose"] * 20
    reasons = [None] * 12 + ["duplicate"] * 5 + ["language"] * 3 + [None] * 16 + ["too_short"] * 4
    scores = rng.uniform(size=n)
    keep = [r is None and s > 0.5 for r, s in zip(reasons, scores, strict=True)]
    table = pa.table(
        {
            S.ID: [f"d{i}" for i in range(n)],
            S.DOMAIN: domains,
            S.N_TOKENS: [10] * n,
            "score_fasttext": scores,
            S.KEEP: keep,
            "drop_reason": reasons,
        }
    )
    pq.write_table(table, tmp_path / "scored-00000-of-00001.parquet")
    dead = pa.table(
        {S.DOMAIN: ["code", "prose"], S.STAGE: ["read", "read"], S.ERROR: ["bad json", "no text"]}
    )
    pq.write_table(dead, tmp_path / "dead_letter-00000-of-00001.parquet")
    stats = pd.DataFrame(
        {
            S.DOMAIN: ["code", "prose"],
            S.DOCS_IN: [21, 21],
            S.DOCS_SCORED: [20, 20],
            S.DOCS_KEPT: [sum(keep[:20]), sum(keep[20:])],
            S.DOCS_DEAD_LETTER: [1, 1],
            S.TOKENS_IN: [200, 200],
            S.TOKENS_KEPT: [10 * sum(keep[:20]), 10 * sum(keep[20:])],
            "cutoff_fasttext": [0.5, 0.5],
        }
    )
    stats.to_parquet(tmp_path / S.DOMAIN_STATS_FILE)
    return tmp_path, keep


def test_drop_counts_split_stage_drops_score_cutoff_and_dead_letters(score_dir):
    directory, keep = score_dir
    scored = pd.read_parquet(directory / "scored-00000-of-00001.parquet")
    dead = pd.read_parquet(directory / "dead_letter-00000-of-00001.parquet")
    counts = drop_counts(scored, dead).set_index([S.DOMAIN, "outcome"])["documents"]
    assert counts[("code", "duplicate")] == 5 and counts[("code", "language")] == 3
    assert counts[("prose", "too_short")] == 4
    assert counts[("code", "kept")] == sum(keep[:20])
    assert counts[("code", "below score cut-off")] == 12 - sum(keep[:20])
    assert counts[("prose", "dead letter: read")] == 1
    assert counts.sum() == 42  # every document and dead letter lands in exactly one outcome


def test_report_of_a_score_directory(score_dir, capsys):
    directory, _ = score_dir
    assert detect(directory) == "score"
    assert main(["report", str(directory)]) == 0
    result = _last_json(capsys)
    assert result["kind"] == "score" and result["sections"] == [
        "domain_stats",
        "drops",
        "scores_score_fasttext",
    ]
    page = (directory / "report.html").read_text()
    for reason in ("duplicate", "language", "too_short", "below score cut-off", "dead letter: read"):
        assert reason in page
    assert "report/drops.parquet" in page  # the full table is linked, not dumped
    cutoffs = pd.read_parquet(directory / "report" / "scores_score_fasttext.parquet")
    assert list(cutoffs["cutoff"]) == [0.5, 0.5]


def _synthetic_runs(n: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    h = rng.dirichlet([1.0, 1.0, 1.0], size=n)
    loss = 3.0 - 0.8 * h[:, 0] + 0.3 * h[:, 1] ** 2 + rng.normal(0, 0.01, n)
    return pd.DataFrame(
        {
            "run": [f"r{i}" for i in range(n)],
            "h_code": h[:, 0],
            "h_legal": h[:, 1],
            "h_prose": h[:, 2],
            "loss": loss,
        }
    )


def test_report_of_a_regmix_fit_directory_with_interactions(tmp_path, capsys):
    runs = tmp_path / "runs.parquet"
    _synthetic_runs().to_parquet(runs)
    model = tmp_path / "model"
    assert (
        main(
            [
                "regmix",
                "fit",
                "--mixtures",
                str(runs),
                "--losses",
                str(runs),
                "--target",
                "loss",
                "--key",
                "run",
                "--model",
                "linear",
                "--out",
                str(model),
            ]
        )
        == 0
    )
    capsys.readouterr()
    cv = pd.read_parquet(model / "cv_predictions.parquet")
    assert len(cv) == 30 and set(cv.columns) == {"run", "target", "true", "predicted"}
    assert cv[["true", "predicted"]].corr(method="spearman").iloc[0, 1] > 0.9
    effects = pd.read_parquet(model / "interaction.parquet")  # written by `regmix fit`
    assert list(effects.columns) == ["domain", "target", "effect"]
    assert main(["report", str(model)]) == 0
    assert _last_json(capsys)["sections"] == ["regression_loss", "interaction"]
    page = (model / "report.html").read_text()
    assert "Domain effects on each target loss" in page
    heatmap = pd.read_parquet(model / "report" / "interaction.parquet")
    assert (
        heatmap.sort_values("domain")["effect"].tolist() == effects.sort_values("domain")["effect"].tolist()
    )
    (model / "interaction.parquet").unlink()  # an older model directory: no heatmap, nothing missing
    assert main(["report", str(model)]) == 0
    assert _last_json(capsys)["sections"] == ["regression_loss"]


def test_report_of_a_law_fit_json_sits_beside_it(tmp_path, capsys):
    rng = np.random.default_rng(1)
    rows = [
        {"N": n, "D": d, "loss": 1.7 + 400 / n**0.34 + 410 / d**0.28 + rng.normal(0, 0.002)}
        for n in (1e6, 3e6, 1e7)
        for d in np.geomspace(2e7, 4e8, 6)
    ]
    runs = tmp_path / "runs.parquet"
    pd.DataFrame(rows).to_parquet(runs)
    law = tmp_path / "law.json"
    assert (
        main(
            ["law", "fit", "--runs", str(runs), "--law", "chinchilla", "--out", str(law), "--bootstrap", "5"]
        )
        == 0
    )
    capsys.readouterr()
    assert detect(law) == "law"
    assert main(["report", str(law)]) == 0
    result = _last_json(capsys)
    page, folder = output_paths(law)
    assert result["report"] == str(page) and page.name == "law.report.html" and folder.is_dir()
    assert result["sections"] == ["law_fit", "law_extrapolation"]
    curves = pd.read_parquet(folder / "law_extrapolation.parquet")
    assert set(curves["N"]) == {1e6, 3e6, 1e7, 4e7, 1.6e8}
    assert curves.loc[~curves["fitted"], "N"].min() == 4e7
    big = curves[curves["N"] == 1.6e8]
    assert (np.diff(big["predicted"].to_numpy()) < 0).all()  # loss falls with D at the largest size


def test_law_json_without_its_residuals_still_reports_the_extrapolation(tmp_path):
    rows = [
        {"N": n, "D": d, "loss": 1.7 + 400 / n**0.34 + 410 / d**0.28}
        for n in (1e6, 3e6, 1e7)
        for d in np.geomspace(2e7, 4e8, 5)
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "runs.parquet")
    assert (
        main(
            [
                "law",
                "fit",
                "--runs",
                str(tmp_path / "runs.parquet"),
                "--law",
                "chinchilla",
                "--out",
                str(tmp_path / "law.json"),
                "--bootstrap",
                "3",
            ]
        )
        == 0
    )
    (tmp_path / "law.residuals.parquet").unlink()
    report = collect(tmp_path / "law.json")
    assert [s.key for s in report.sections] == ["law_extrapolation"]
    assert report.missing == ["law.residuals.parquet"]


def test_report_of_a_directory_with_nothing_to_report_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "nothing to report" in capsys.readouterr().err
