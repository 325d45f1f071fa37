"""`datamixer regmix propose | fit | evaluate | predict | optimize`, in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixer.mixture import read_mixture
from mixer.sampler import propose_mixtures

TOKENS = {"web": 5e10, "code": 2e10, "books": 1e10, "math": 5e9}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """A mixture table (key `index`), a loss table, and a runs table (h_*, N, D, loss)."""
    path = tmp_path_factory.mktemp("regmix_runs")
    frame = propose_mixtures(TOKENS, 96, proxy_tokens=2e10, seed=0)
    h = frame[[c for c in frame.columns if c.startswith("h_")]].to_numpy()
    rng = np.random.default_rng(0)
    web = 3 + 1.5 * np.exp(-4 * h[:, 0]) + 0.3 * np.exp(-6 * h[:, 2]) + rng.normal(0, 0.01, len(h))
    code = 2 + 2 * np.exp(-5 * h[:, 1]) + rng.normal(0, 0.01, len(h))
    mixtures = pd.DataFrame(h, columns=list(TOKENS))
    mixtures.insert(0, "index", np.arange(1, len(h) + 1))
    mixtures.to_csv(path / "mixtures.csv", index=False)
    pd.DataFrame({"index": mixtures["index"], "loss_web": web, "loss_code": code}).to_csv(
        path / "losses.csv", index=False
    )
    runs = frame.rename(columns={"mixture": "run"})
    runs["mixture"] = runs["run"]
    runs["N"], runs["D"], runs["loss"] = 1e6, 1e9, web
    runs.to_parquet(path / "runs.parquet", index=False)
    return path


def test_propose_from_csv_json_and_domain_stats(tmp_path: Path, cli) -> None:
    table = pd.DataFrame({"domain": list(TOKENS), "tokens": list(TOKENS.values())})
    table.to_csv(tmp_path / "t.csv", index=False)
    result = cli(
        [
            "regmix",
            "propose",
            "--tokens",
            str(tmp_path / "t.csv"),
            "--n",
            "40",
            "--out",
            str(tmp_path / "a"),
            "--proxy-tokens",
            "2e10",
        ]
    )
    assert result["n"] == 40 and result["domains"] == 4
    proposals = pd.read_parquet(tmp_path / "a" / "proposals.parquet")
    weights = ["h_web", "h_code", "h_books", "h_math"]
    epochs = [f"epochs_{c[2:]}" for c in weights]
    assert list(proposals.columns) == ["mixture", *weights, *epochs, "max_epochs"]
    # Each proposal carries its repetition factor: weight x proxy tokens / available tokens.
    for column in weights:
        implied = proposals[column] * 2e10 / TOKENS[column[2:]]
        assert np.allclose(proposals[f"epochs_{column[2:]}"], implied)
    assert np.allclose(proposals["max_epochs"], proposals[epochs].max(axis=1))
    assert len(list((tmp_path / "a" / "mixtures").glob("mix-*.yaml"))) == 40
    first = read_mixture(tmp_path / "a" / "mixtures" / "mix-0000.yaml")
    expected = {c[2:]: w for c, w in proposals.loc[0, weights].items()}
    assert first == pytest.approx(expected, abs=1e-12)
    # The same counts as domain_stats.parquet (`tokens_kept`) and as JSON give the same proposals.
    pd.DataFrame(
        {"domain": list(TOKENS), "docs_kept": [1, 2, 3, 4], "tokens_kept": list(TOKENS.values())}
    ).to_parquet(tmp_path / "domain_stats.parquet")
    (tmp_path / "t.json").write_text(json.dumps(TOKENS))
    for source, out in (("domain_stats.parquet", "b"), ("t.json", "c")):
        cli(
            [
                "regmix",
                "propose",
                "--tokens",
                str(tmp_path / source),
                "--n",
                "40",
                "--out",
                str(tmp_path / out),
                "--proxy-tokens",
                "2e10",
            ]
        )
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / out / "proposals.parquet"), proposals)
    # A 15-epoch cap on `math` at 1e12 proxy tokens: 15 * 5e9 / 1e12 = 0.075.
    result = cli(
        [
            "regmix",
            "propose",
            "--tokens",
            str(tmp_path / "t.csv"),
            "--n",
            "40",
            "--out",
            str(tmp_path / "d"),
            "--proxy-tokens",
            "1e12",
        ]
    )
    assert "math" in result["caps_binding"] and result["max_weight"]["math"] <= 0.075


def test_fit_evaluate_predict_optimize(runs_dir: Path, tmp_path: Path, cli) -> None:
    mix, loss = str(runs_dir / "mixtures.csv"), str(runs_dir / "losses.csv")
    model = str(tmp_path / "model")
    fitted = cli(
        [
            "regmix",
            "fit",
            "--mixtures",
            mix,
            "--losses",
            loss,
            "--target",
            "loss_web",
            "--target",
            "loss_code",
            "--out",
            model,
            "--cv-folds",
            "3",
            "--model",
            "lightgbm",
        ]
    )
    assert fitted["n"] == 96 and set(fitted["cv"]) == {"loss_web", "loss_code"}
    assert fitted["cv"]["loss_web"]["spearman"] > 0.8
    assert (tmp_path / "model" / "cv_report.parquet").exists()
    evaluated = cli(
        ["regmix", "evaluate", "--model", model, "--mixtures", mix, "--losses", loss, "--target", "loss_web"]
    )
    assert {"n", "spearman", "pearson", "mse"} <= set(evaluated)
    assert evaluated["n"] == 96 and -1 <= evaluated["spearman"] <= 1 and evaluated["spearman"] > 0.9
    predicted = cli(
        ["regmix", "predict", "--model", model, "--mixtures", mix, "--out", str(tmp_path / "pred.csv")]
    )
    assert predicted["n"] == 96 and len(pd.read_csv(tmp_path / "pred.csv")) == 96
    out = tmp_path / "opt" / "mix.yaml"
    optimized = cli(
        [
            "regmix",
            "optimize",
            "--model",
            model,
            "--out",
            str(out),
            "--draws",
            "20000",
            "--top-k",
            "20",
            "--caps",
            "web=0.5",
            "--target-weights",
            "loss_web=1,loss_code=1",
        ]
    )
    weights = read_mixture(out)
    assert weights["web"] <= 0.5 + 1e-9 and sum(weights.values()) == pytest.approx(1.0)
    assert optimized["targets"] == {"loss_web": 0.5, "loss_code": 0.5}
    assert read_mixture(out.with_suffix(".json")) == pytest.approx(weights)
    assert len(pd.read_parquet(out.with_name("mix.topk.parquet"))) == 20
    single = cli(["regmix", "predict", "--model", model, "--mixtures", str(out)])
    combined = (single["prediction"]["loss_web"] + single["prediction"]["loss_code"]) / 2
    assert single["n"] == 1 and combined == pytest.approx(optimized["predicted"], rel=1e-9)


def test_fit_on_runs_table_with_run_key(runs_dir: Path, tmp_path: Path, cli) -> None:
    runs = str(runs_dir / "runs.parquet")
    fitted = cli(
        [
            "regmix",
            "fit",
            "--mixtures",
            runs,
            "--losses",
            runs,
            "--target",
            "loss",
            "--key",
            "run",
            "--model",
            "linear",
            "--out",
            str(tmp_path / "m"),
            "--cv-folds",
            "0",
        ]
    )
    assert fitted["domains"] == 4  # only the h_* columns are weights, not N, D or loss
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["domains"] == list(TOKENS)


def test_bad_rows_and_options_are_one_line_errors(runs_dir: Path, tmp_path: Path, cli_error) -> None:
    good = pd.read_csv(runs_dir / "mixtures.csv")
    loss = str(runs_dir / "losses.csv")
    cases = {
        "negative": (4, "code", -0.1, r"row 5 \(index=5\).*'code' is negative"),
        "nan": (6, "web", np.nan, r"row 7 \(index=7\).*'web' is missing"),
        "sum": (9, "books", 0.9, r"row 10 \(index=10\).*sum to"),
    }
    for name, (row, column, value, pattern) in cases.items():
        bad = good.copy()
        bad.loc[row, column] = value
        bad.to_csv(tmp_path / f"{name}.csv", index=False)
        err = cli_error(
            [
                "regmix",
                "fit",
                "--mixtures",
                str(tmp_path / f"{name}.csv"),
                "--losses",
                loss,
                "--target",
                "loss_web",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        assert re.search(pattern, err), err
    mix = str(runs_dir / "mixtures.csv")
    err = cli_error(
        [
            "regmix",
            "fit",
            "--mixtures",
            mix,
            "--losses",
            loss,
            "--target",
            "nope",
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert "nope" in err
    err = cli_error(
        [
            "regmix",
            "fit",
            "--mixtures",
            mix,
            "--losses",
            loss,
            "--target",
            "loss_web",
            "--model",
            "forest",
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert "forest" in err
    err = cli_error(
        ["regmix", "optimize", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x.yaml")]
    )
    assert "manifest.json" in err
    err = cli_error(
        ["regmix", "propose", "--tokens", str(tmp_path / "none.csv"), "--out", str(tmp_path / "p")]
    )
    assert "none.csv" in err
