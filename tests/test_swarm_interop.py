"""Reading what Olmix and W&B users already have, counting tokens of tokenized files, and
exporting Olmix's `mix:` block."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from datamixer.cli import main
from mixer.budget import budget_report
from mixer.exports import export_text, olmix_mix
from mixer.mixture import read_mixture
from mixer.priors import count_tokens, megatron_tokens, numpy_tokens, parquet_tokens
from mixer.runs import load_mixtures, load_runs, load_token_counts, read_olmix_swarm, read_wandb_csv

DOMAINS = ["dclm:science_math_and_technology", "dclm:software_development", "wikipedia", "arxiv"]


def run(args: list[str], capsys) -> dict:
    assert main(args) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def olmix_swarm(path: Path, n: int = 30, seed: int = 0) -> pd.DataFrame:
    """An Olmix CSV swarm as `load_from_csv` reads it: ratios.csv and metrics.csv keyed by run_id."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(len(DOMAINS)), size=n)
    ids = [f"run{i:03d}" for i in range(n)]
    ratios = pd.DataFrame(weights, columns=DOMAINS)
    ratios.insert(0, "name", [f"swarm-{i}" for i in range(n)])
    ratios.insert(0, "run_id", ids)
    bpb = 1.5 - 0.4 * weights[:, 1] + 0.2 * weights[:, 3] ** 2
    metrics = pd.DataFrame(
        {
            "run_id": ids[::-1],
            "name": ids[::-1],
            "index": range(n),
            "mmlu_bpb": bpb[::-1],
            "gsm8k_bpb": 2.0 - 0.3 * weights[::-1, 0],
        }
    )
    path.mkdir(parents=True, exist_ok=True)
    ratios.to_csv(path / "ratios.csv", index=False)
    metrics.iloc[:-1].to_csv(path / "metrics.csv", index=False)  # one run has no metrics yet
    return ratios


def test_olmix_swarm_reads_as_a_runs_table(tmp_path: Path, capsys) -> None:
    ratios = olmix_swarm(tmp_path / "swarm")
    with pytest.warns(UserWarning, match="1 run\\(s\\) in only one of ratios.csv and metrics.csv"):
        frame = read_olmix_swarm(tmp_path / "swarm")
    assert list(frame.columns) == ["run", *[f"h_{d}" for d in DOMAINS], "mmlu_bpb", "gsm8k_bpb"]
    assert len(frame) == 29 and frame.attrs["unmatched_runs"] == 1
    row = frame.set_index("run").loc["run007"]
    assert row["h_wikipedia"] == pytest.approx(ratios.set_index("run_id").loc["run007", "wikipedia"])
    assert row["mmlu_bpb"] == pytest.approx(
        1.5 - 0.4 * row["h_dclm:software_development"] + 0.2 * row["h_arxiv"] ** 2
    )
    # The one loader reads the swarm wherever a mixture or loss table is read.
    assert load_mixtures(tmp_path / "swarm" / "ratios.csv", key="run").shape == (29, 4)
    fitted = run(
        [
            "regmix",
            "fit",
            "--mixtures",
            str(tmp_path / "swarm"),
            "--losses",
            str(tmp_path / "swarm"),
            "--key",
            "run",
            "--target",
            "mmlu_bpb",
            "--model",
            "linear",
            "--cv-folds",
            "3",
            "--out",
            str(tmp_path / "model"),
        ],
        capsys,
    )
    assert fitted["n"] == 29 and fitted["domains"] == 4 and fitted["cv_spearman"] > 0.9
    # Olmix's optimal mixture scores with the model, and the swarm grows away from its own runs.
    optimal = [{"domain": d, "weight": 0.25} for d in DOMAINS]
    (tmp_path / "mmlu_bpb_optimal.json").write_text(json.dumps(optimal))
    predicted = run(
        [
            "regmix",
            "predict",
            "--model",
            str(tmp_path / "model"),
            "--mixtures",
            str(tmp_path / "mmlu_bpb_optimal.json"),
        ],
        capsys,
    )
    assert predicted["n"] == 1 and 1.0 < predicted["prediction"]["mmlu_bpb"] < 1.6
    pd.DataFrame({"domain": DOMAINS, "tokens": [1e9, 1e9, 5e8, 5e8]}).to_csv(tmp_path / "t.csv", index=False)
    grown = run(
        [
            "regmix",
            "propose",
            "--tokens",
            str(tmp_path / "t.csv"),
            "--existing",
            str(tmp_path / "swarm"),
            "--n",
            "10",
            "--proxy-tokens",
            "1e8",
            "--out",
            str(tmp_path / "next"),
        ],
        capsys,
    )
    assert grown["n_existing"] == 30 and grown["nearest_existing_l1"] > grown["min_distance"] > 0
    imported = run(
        ["runs", "import", str(tmp_path / "swarm"), "--out", str(tmp_path / "runs.parquet")], capsys
    )
    assert imported["format"] == "olmix" and imported["runs"] == 29 and imported["unmatched_runs"] == 1
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "runs.parquet"), frame, check_like=True)


def test_olmix_swarm_errors_name_the_file(tmp_path: Path) -> None:
    olmix_swarm(tmp_path / "s")
    (tmp_path / "s" / "metrics.csv").unlink()
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        read_olmix_swarm(tmp_path / "s" / "ratios.csv")
    bad = pd.read_csv(tmp_path / "s" / "ratios.csv")
    bad.loc[3, "arxiv"] += 0.5
    bad.to_csv(tmp_path / "s" / "ratios.csv", index=False)
    pd.DataFrame({"run_id": bad["run_id"], "bpb": 1.0}).to_csv(tmp_path / "s" / "metrics.csv", index=False)
    with pytest.raises(ValueError, match=r"row 4 \(run='run003'\): weights sum to 1.5"):
        read_olmix_swarm(tmp_path / "s")


def test_olmix_optimal_json_and_mix_block_read_as_mixtures(tmp_path: Path) -> None:
    # `*_optimal.json` as olmix/plots/plotting.py writes it: json.dumps of [{"domain", "weight"}].
    optimal = [{"domain": d, "weight": w} for d, w in zip(DOMAINS, [0.3, 0.3, 0.25, 0.15], strict=True)]
    (tmp_path / "opt_avg_all_metrics_log_linear_reg_optimal.json").write_text(json.dumps(optimal))
    weights = read_mixture(tmp_path / "opt_avg_all_metrics_log_linear_reg_optimal.json")
    assert weights == pytest.approx(dict(zip(DOMAINS, [0.3, 0.3, 0.25, 0.15], strict=True)))
    (tmp_path / "dup.json").write_text(json.dumps(optimal + optimal[:1]))
    with pytest.raises(ValueError, match="repeats"):
        read_mixture(tmp_path / "dup.json")
    # A launch config's nested `mix:` (configs/examples/launch/data_proportions/mix_baseline.yaml).
    launch = {
        "name": "mix-baseline",
        "mix": {
            "dclm": {
                "weight": 0.6,
                "science_math_and_technology": {"weight": 0.333333, "repetition_factor": 1.0},
                "software_development": {"weight": 0.333333, "repetition_factor": 1.0},
                "education_and_jobs": {"weight": 0.333333, "repetition_factor": 1.0},
            },
            "wikipedia": {"weight": 0.2, "repetition_factor": 2.0},
            "arxiv": {"weight": 0.2, "repetition_factor": 1.5},
        },
    }
    (tmp_path / "launch.yaml").write_text(yaml.safe_dump(launch))
    mix = read_mixture(tmp_path / "launch.yaml")
    assert mix["dclm:software_development"] == pytest.approx(0.2, abs=1e-6) and mix["arxiv"] == pytest.approx(
        0.2
    )
    # The flat form `olmix generate` writes: colon-joined leaves.
    flat = {"mix": {"dclm:a": {"weight": 0.5, "repetition_factor": 1.0}, "wiki": {"weight": 0.5}}}
    (tmp_path / "flat.yaml").write_text(yaml.safe_dump(flat))
    assert read_mixture(tmp_path / "flat.yaml") == {"dclm:a": 0.5, "wiki": 0.5}


def test_olmix_export_round_trips_and_budget_uses_leaves(tmp_path: Path, capsys) -> None:
    weights = {"web:sci:top": 0.12, "web:sci:rest": 0.18, "web:news": 0.2, "code": 0.5}
    block = olmix_mix(weights, max_repetition=2.0)
    assert block["web"]["weight"] == 0.5 and block["web"]["sci"]["weight"] == 0.6
    assert block["web"]["sci"]["top"] == {"weight": 0.4, "repetition_factor": 2.0}
    text = export_text(weights, "olmix", max_repetition=2.0)
    (tmp_path / "mix.yaml").write_text(text)
    assert read_mixture(tmp_path / "mix.yaml") == pytest.approx(weights, abs=1e-6)
    with pytest.raises(ValueError, match="no place"):
        export_text(weights, "olmix", paths={d: [d] for d in weights})
    # With planned and available tokens, each leaf gets the repetition it needs (Olmix's rule).
    available = {"web:sci:top": 1e9, "web:sci:rest": 9e9, "web:news": 5e9, "code": 3e9}
    block = olmix_mix(weights, tokens=10**10, available=available, max_repetition=2.0)
    assert block["web"]["sci"]["top"]["repetition_factor"] == 1.2  # 0.12 x 1e10 / 1e9
    assert block["code"]["repetition_factor"] == 1.667 and block["web"]["news"]["repetition_factor"] == 1.0
    with pytest.raises(ValueError, match="'code' needs 1.67 epochs"):
        olmix_mix(weights, tokens=10**10, available=available, max_repetition=1.5)
    with pytest.raises(ValueError, match="need both"):
        export_text(weights, "olmix", tokens=10**10)
    with pytest.raises(ValueError, match="cannot nest"):
        olmix_mix({"web": 0.5, "web:sci": 0.5})
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"weights": weights}))
    result = run(
        [
            "export",
            "--mixture",
            str(tmp_path / "m.yaml"),
            "--format",
            "olmix",
            "--out",
            str(tmp_path / "out.yaml"),
        ],
        capsys,
    )
    assert result["domains"] == 4 and "mix" in yaml.safe_load((tmp_path / "out.yaml").read_text())
    pd.DataFrame({"domain": list(available), "tokens_kept": list(available.values())}).to_parquet(
        tmp_path / "domain_stats.parquet"
    )
    run(
        [
            "export",
            "--mixture",
            str(tmp_path / "m.yaml"),
            "--format",
            "olmix",
            "--tokens",
            "10B",
            "--stats",
            str(tmp_path / "domain_stats.parquet"),
            "--max-repetition",
            "2",
            "--out",
            str(tmp_path / "out.yaml"),
        ],
        capsys,
    )
    assert yaml.safe_load((tmp_path / "out.yaml").read_text())["mix"]["code"]["repetition_factor"] == 1.667
    # The data budget works on the leaf names unchanged.
    report = budget_report(
        weights, {"web:sci:top": 1e9, "web:sci:rest": 9e9, "web:news": 5e9, "code": 1e9}, 10e9, 4.0
    )
    assert report.table.set_index("domain").loc["web:sci:top", "epochs"] == pytest.approx(1.2)
    assert report.over_limit == ["code"]


def test_wandb_csv_flat_and_api_layouts(tmp_path: Path) -> None:
    # The runs table's "Export CSV": run metadata, then config and summary keys as columns.
    ui = pd.DataFrame(
        {
            "Name": ["a", "b", "c"],
            "State": "finished",
            "ID": ["r1", "r2", "r3"],
            "mix.web": [0.5, 0.2, 0.7],
            "mix.code": [0.5, 0.8, None],
            "mix.math": [None, None, 0.3],
            "model.params": [1e7, 1e7, 3e7],
            "eval/loss": [3.1, 3.3, 3.0],
            "_step": 100,
        }
    )
    ui.to_csv(tmp_path / "wandb_export.csv", index=False)
    frame = read_wandb_csv(
        tmp_path / "wandb_export.csv", "mix.*", {"loss": "eval/loss"}, {"N": "model.params"}
    )
    assert list(frame.columns) == ["run", "h_web", "h_code", "h_math", "N", "loss"]
    assert frame["run"].tolist() == ["r1", "r2", "r3"] and frame.loc[2, "h_code"] == 0.0
    # W&B's public-API recipe: `summary` and `config` columns holding one dict per run.
    api = pd.DataFrame(
        {
            "name": ["a", "b"],
            "config": [
                repr({"data": {"weights": {"web": 0.5, "code": 0.5}}, "lr": 1e-3}),
                repr({"data": {"weights": {"web": 0.9, "code": 0.1}}, "lr": 1e-3}),
            ],
            "summary": [
                repr({"eval/loss": 3.1, "_runtime": 10}),
                repr({"eval/loss": 2.9, "grad": float("nan")}),
            ],
        }
    )
    api.to_csv(tmp_path / "project.csv", index=False)
    frame = read_wandb_csv(tmp_path / "project.csv", "config.data.weights.*", {"loss": "summary.eval/loss"})
    assert frame.to_dict("list") == {
        "run": ["a", "b"],
        "h_web": [0.5, 0.9],
        "h_code": [0.5, 0.1],
        "loss": [3.1, 2.9],
    }
    with pytest.raises(ValueError, match=r"row 2 \(run='r2'\): weights sum to 0.7"):
        bad = ui.assign(**{"mix.code": [0.5, 0.5, 0.3]})
        read_wandb_csv(bad, "mix.*", {"loss": "eval/loss"})
    with pytest.raises(ValueError, match="no column matches"):
        read_wandb_csv(ui, "config.mix.*", {"loss": "eval/loss"})


def test_wandb_cli_import_feeds_load_runs(tmp_path: Path, capsys) -> None:
    pd.DataFrame(
        {
            "ID": ["r1", "r2"],
            "mix.web": [0.5, 0.2],
            "mix.code": [0.5, 0.8],
            "params": [1e7, 2e7],
            "tokens": [1e9, 2e9],
            "eval/loss": [3.1, 3.3],
        }
    ).to_csv(tmp_path / "w.csv", index=False)
    result = run(
        [
            "runs",
            "import",
            str(tmp_path / "w.csv"),
            "--weights",
            "mix.*",
            "--target",
            "loss=eval/loss",
            "--column",
            "N=params",
            "--column",
            "D=tokens",
            "--out",
            str(tmp_path / "runs.parquet"),
        ],
        capsys,
    )
    assert result["format"] == "wandb" and result["runs"] == 2
    runs = load_runs(tmp_path / "runs.parquet")
    assert runs["N"].tolist() == [1e7, 2e7] and runs["h_code"].tolist() == [0.5, 0.8]


def megatron_dataset(prefix: Path, lengths: list[int], dtype: type = np.uint16) -> None:
    """A real Megatron .bin/.idx pair, written by megatron-core's own builder."""
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    builder = indexed.IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for length in lengths:
        builder.add_item(torch.arange(length) % 500)
        builder.end_document()
    builder.finalize(f"{prefix}.idx")


def test_token_counts_per_format(tmp_path: Path) -> None:
    megatron_dataset(tmp_path / "web", [5, 7, 11])
    assert megatron_tokens(tmp_path / "web.idx") == 23 == megatron_tokens(tmp_path / "web.bin")
    megatron_dataset(tmp_path / "wide", [4, 4], dtype=np.int32)
    assert megatron_tokens(tmp_path / "wide") == 8
    with open(tmp_path / "web.bin", "ab") as handle:
        handle.write(b"\0\0")
    with pytest.raises(ValueError, match="describes 23 tokens"):
        megatron_tokens(tmp_path / "web.idx")
    (tmp_path / "junk.idx").write_bytes(b"NOTMEGATRON" + bytes(30))
    with pytest.raises(ValueError, match="not a Megatron index"):
        megatron_tokens(tmp_path / "junk.idx")
    np.save(tmp_path / "arr.npy", np.arange(12, dtype=np.uint32).reshape(3, 4))
    assert numpy_tokens(tmp_path / "arr.npy") == 12
    np.arange(10, dtype=np.uint32).tofile(tmp_path / "raw.npy")  # OLMo's headerless token files
    assert numpy_tokens(tmp_path / "raw.npy") == 10 and numpy_tokens(tmp_path / "raw.npy", "uint16") == 20
    np.arange(9, dtype=np.uint32).tofile(tmp_path / "odd.npy")
    with pytest.raises(ValueError, match="whole number"):
        numpy_tokens(tmp_path / "odd.npy", "uint64")
    pd.DataFrame({"n_tokens": [10, 20, 30], "keep": [True, False, True]}).to_parquet(tmp_path / "s.parquet")
    assert parquet_tokens(tmp_path / "s.parquet") == 40
    pd.DataFrame({"len": [1, 2]}).to_parquet(tmp_path / "t.parquet")
    assert parquet_tokens(tmp_path / "t.parquet", "len") == 3
    with pytest.raises(ValueError, match="no token-count column"):
        parquet_tokens(tmp_path / "t.parquet")
    # A glob over a .bin/.idx pair counts the dataset once.
    counts = count_tokens({"wide": [str(tmp_path / "wide.*")], "arr": [str(tmp_path / "arr.npy")]})
    assert counts == {"wide": {"tokens": 8, "files": 1}, "arr": {"tokens": 12, "files": 1}}


def test_priors_cli_counts_tree_leaves_for_propose(tmp_path: Path, capsys) -> None:
    megatron_dataset(tmp_path / "sci_top", [300] * 10)
    megatron_dataset(tmp_path / "sci_rest", [300] * 40)
    np.arange(2000, dtype=np.uint32).tofile(tmp_path / "code.npy")
    tree = {
        "levels": [{"name": "source"}, {"name": "quality", "min_weight": 0.1}],
        "domains": {
            "web": {
                "top": {"paths": [str(tmp_path / "sci_top.idx")]},
                "rest": {"paths": [str(tmp_path / "sci_rest.*")]},
            },
            "code": {"paths": str(tmp_path / "code.npy")},
            "books": 5000,
        },
    }
    (tmp_path / "tree.yaml").write_text(yaml.safe_dump(tree))
    result = run(
        ["priors", "--tree", str(tmp_path / "tree.yaml"), "--out", str(tmp_path / "tokens.parquet")], capsys
    )
    assert result["per_domain"] == {"web:top": 3000, "web:rest": 12000, "code": 2000, "books": 5000}
    proposed = run(
        [
            "regmix",
            "propose",
            "--tree",
            str(tmp_path / "tree.yaml"),
            "--tokens",
            str(tmp_path / "tokens.parquet"),
            "--n",
            "16",
            "--proxy-tokens",
            "2e4",
            "--out",
            str(tmp_path / "swarm"),
        ],
        capsys,
    )
    assert proposed["n"] == 16 and proposed["domains"] == 4
    saved = yaml.safe_load((tmp_path / "swarm" / "tree.yaml").read_text())
    assert saved["domains"]["web"]["rest"] == 12000.0
    # Olmix's priors JSON, written and read back (olmix/fit/loaders.py `load_priors_from_json`).
    run(["priors", "--tree", str(tmp_path / "tree.yaml"), "--out", str(tmp_path / "priors.json")], capsys)
    priors = json.loads((tmp_path / "priors.json").read_text())
    assert priors["total_tokens"] == 22000 and priors["relative_sizes"]["code"] == pytest.approx(2000 / 22000)
    (tmp_path / "metadata.json").write_text(json.dumps({"metadata": {"group_id": "x"}, "priors": priors}))
    assert load_token_counts(tmp_path / "metadata.json") == result["per_domain"]
