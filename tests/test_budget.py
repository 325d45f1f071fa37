"""Data budget: epochs per domain, the repetition limit, and the caps the optimisers take."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamixer.cli import main
from mixer import budget, runs
from mixer.budget import (
    RepetitionWarning,
    budget_report,
    check_budget,
    epoch_caps,
    parse_tokens,
    read_domain_stats,
)
from mixer.mixture import write_mixture
from pipeline import schema

AVAILABLE = {"code": 50_000_000, "prose": 800_000_000, "web": 9_000_000_000}
WEIGHTS = {"code": 0.25, "prose": 0.35, "web": 0.4}  # code: 0.25 * 1e9 / 5e7 = 5 epochs


def write_stats(path, available=AVAILABLE):
    """A domain_stats.parquet with the pipeline's schema (columns this test does not set are 0)."""
    domains = sorted(available)
    given = {schema.DOMAIN: domains, schema.TOKENS_KEPT: [available[d] for d in domains]}
    columns = {
        f.name: given.get(f.name, [0 if pa.types.is_integer(f.type) else None] * len(domains))
        for f in schema.DOMAIN_STATS_SCHEMA
    }
    pq.write_table(pa.Table.from_pydict(columns, schema=schema.DOMAIN_STATS_SCHEMA), path)
    return path


def test_stats_columns_match_the_pipeline_schema():
    assert budget.DOMAIN == schema.DOMAIN
    assert schema.TOKENS_KEPT in runs.TOKEN_TABLE_COLUMNS


def test_epoch_caps_formula_clip_and_infeasible():
    caps = epoch_caps(1e9, AVAILABLE, max_epochs=4)
    assert caps == {"code": pytest.approx(0.2), "prose": 1.0, "web": 1.0}
    assert epoch_caps(1e9, {"a": 1e8, "b": 4e8}, max_epochs=2) == {"a": pytest.approx(0.2), "b": 0.8}
    with pytest.raises(ValueError, match="caps sum to 0.6000 < 1"):
        epoch_caps(1e9, {"a": 1e8, "b": 2e8}, max_epochs=2)
    with pytest.raises(ValueError, match="max_epochs must be positive"):
        epoch_caps(1e9, AVAILABLE, max_epochs=0)


def test_report_flags_the_domain_with_too_few_tokens():
    report = budget_report(WEIGHTS, AVAILABLE, 10**9)
    table = report.table.set_index("domain")
    assert table.loc["code", "epochs"] == pytest.approx(5.0)
    assert table.loc["prose", "epochs"] == pytest.approx(0.4375)
    assert table.loc["web", "tokens_planned"] == pytest.approx(4e8)
    assert report.over_limit == ["code"]
    assert "code: 5.00 epochs" in report.message()
    assert budget_report(WEIGHTS, AVAILABLE, 10**9, max_epochs=5).over_limit == []


def test_mixture_at_its_caps_is_within_the_limit():
    caps = epoch_caps(1e9, AVAILABLE)
    weights = {"code": caps["code"], "prose": 0.3, "web": 1 - 0.3 - caps["code"]}
    assert budget_report(weights, AVAILABLE, 10**9).over_limit == []


def test_check_budget_warns_or_fails_with_strict():
    with pytest.warns(RepetitionWarning, match="code: 5.00 epochs"):
        report = check_budget(WEIGHTS, AVAILABLE, 10**9)
    assert report.to_dict()["over_limit"] == ["code"]
    with pytest.raises(ValueError, match="repeated more than 4 epochs: code"):
        check_budget(WEIGHTS, AVAILABLE, 10**9, strict=True)


def test_domain_with_no_tokens_has_infinite_epochs_and_zero_cap():
    report = budget_report({"a": 0.5, "b": 0.5}, {"a": 0, "b": 10**12}, 10**9)
    table = report.table.set_index("domain")
    assert table.loc["a", "epochs"] == float("inf")
    assert table.loc["a", "cap"] == 0.0
    assert report.over_limit == ["a"]


def test_report_needs_stats_for_every_mixture_domain():
    with pytest.raises(ValueError, match=r"no row for mixture domain\(s\) \['math'\]"):
        budget_report({"math": 0.5, "web": 0.5}, AVAILABLE, 10**9)


def test_read_domain_stats_and_its_errors(tmp_path):
    assert read_domain_stats(write_stats(tmp_path / "domain_stats.parquet")) == AVAILABLE
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"domain": ["a", "b"], "tokens_in": [1, 2]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="tokens_kept"):
        read_domain_stats(bad)
    pd.DataFrame({"domain": ["a", "b"], "tokens_kept": [1, -2]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="row 2 .*'tokens_kept'"):
        read_domain_stats(bad)
    pd.DataFrame({"domain": ["a", "a"], "tokens_kept": [1, 2]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="row 2 .*duplicate"):
        read_domain_stats(bad)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("1000000", 10**6),
        ("1e9", 10**9),
        ("300M", 3 * 10**8),
        ("100B", 10**11),
        ("2.5T", 25 * 10**11),
        (5e9, 5 * 10**9),
        ("4k", 4000),
    ],
)
def test_parse_tokens(text, tokens):
    assert parse_tokens(text) == tokens


def test_parse_tokens_rejects_nonsense():
    for text in ("lots", "-5B", "0", "1..2B"):
        with pytest.raises(ValueError, match="tokens"):
            parse_tokens(text)


def test_cli_budget_warns_then_fails_with_strict(tmp_path, capsys, cli):
    mix = write_mixture(tmp_path / "mix.yaml", WEIGHTS)
    stats = write_stats(tmp_path / "domain_stats.parquet")
    out = tmp_path / "budget.parquet"
    args = ["budget", "--mixture", str(mix), "--stats", str(stats), "--tokens", "1B"]
    assert main([*args, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["ok"] is False
    assert result["over_limit"] == ["code"]
    assert result["epochs"]["code"] == pytest.approx(5.0)
    assert result["caps"]["code"] == pytest.approx(0.2)
    assert "warning: domain(s) repeated more than 4 epochs: code" in captured.err
    assert pd.read_parquet(out).set_index("domain").loc["code", "over_limit"]

    assert main([*args, "--strict"]) == 1
    assert "error: ValueError: domain(s) repeated more than 4 epochs: code" in capsys.readouterr().err

    assert cli([*args, "--strict", "--max-epochs", "5"])["ok"] is True


def test_optimizer_caps_merge_given_caps_with_the_budget(tmp_path):
    stats = write_stats(tmp_path / "domain_stats.parquet")
    assert budget.optimizer_caps(["code", "web"]) is None
    assert budget.optimizer_caps(["code", "web"], caps={"web": 0.7}) == {"web": 0.7}
    caps = budget.optimizer_caps(["code", "web"], caps={"web": 0.7}, stats=stats, tokens="1B")
    assert caps == {"code": pytest.approx(0.2), "web": 0.7}
    with pytest.raises(ValueError, match="caps sum to"):
        budget.optimizer_caps(["code"], stats=stats, tokens="1B")
    with pytest.raises(ValueError, match="need both"):
        budget.optimizer_caps(["code", "web"], tokens="1B")


def test_optimize_commands_take_the_data_budget_as_caps(tmp_path, capsys, cli):
    """`regmix optimize` and `law optimize` cap a scarce domain at max_epochs * kept / planned."""

    import numpy as np
    import pandas as pd

    from datamixer.cli import main
    from mixer.mixture import read_mixture

    rng = np.random.default_rng(0)
    h = rng.dirichlet([1.0, 1.0], size=48)
    runs = pd.DataFrame({"run": [f"r{i}" for i in range(48)], "h_web": h[:, 0], "h_code": h[:, 1]})
    runs["loss"] = 3.0 + 0.5 * np.exp(-3 * runs["h_web"]) + 0.05 * runs["h_code"]
    runs_path = tmp_path / "runs.parquet"
    runs.to_parquet(runs_path)
    stats = tmp_path / "domain_stats.parquet"
    pd.DataFrame({"domain": ["web", "code"], "tokens_kept": [100, 10_000]}).to_parquet(stats)
    model = tmp_path / "model"
    assert (
        main(
            [
                "regmix",
                "fit",
                "--mixtures",
                str(runs_path),
                "--losses",
                str(runs_path),
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
    out = tmp_path / "mix.yaml"
    assert (
        main(
            [
                "regmix",
                "optimize",
                "--model",
                str(model),
                "--out",
                str(out),
                "--draws",
                "20000",
                "--stats",
                str(stats),
                "--train-tokens",
                "1000",
                "--max-epochs",
                "2",
            ]
        )
        == 0
    )
    assert read_mixture(out)["web"] <= 0.2 + 1e-6  # 2 epochs x 100 tokens / 1000 planned
    capsys.readouterr()

    big = pd.concat([runs.assign(N=n, D=d) for n in (1e6, 4e6) for d in (1e8, 4e8)], ignore_index=True)
    big["run"] = [f"r{i}" for i in range(len(big))]
    big["loss"] = big["loss"] + 20 / big["N"] ** 0.3 + 50 / big["D"] ** 0.3
    big.to_parquet(runs_path)
    law = tmp_path / "law.json"
    assert main(["law", "fit", "--runs", str(runs_path), "--law", "additive", "--out", str(law)]) == 0
    capsys.readouterr()
    out = tmp_path / "law_mix.yaml"
    result = cli(
        [
            "law",
            "optimize",
            "--law",
            str(law),
            "--N",
            "1e7",
            "--D",
            "1000",
            "--out",
            str(out),
            "--stats",
            str(stats),
            "--max-epochs",
            "2",
        ]
    )
    assert result["weights"]["web"] <= 0.2 + 1e-6
