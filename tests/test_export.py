"""Exports: each format round-trips through its reader (the real package where it is installed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from datamixer.cli import main
from mixer.exports import (
    FORMATS,
    allocate_tokens,
    export_text,
    hf_config,
    megatron_blend,
    olmo_config,
    read_paths,
    round_weights,
    to_hf,
    to_json,
    to_megatron,
    to_olmo,
    to_yaml,
)
from mixer.mixture import read_mixture, write_mixture

REGMIX = Path(__file__).resolve().parents[2] / "shared" / "data" / "regmix" / "mixture_config_1b"
WEIGHTS = {"web": 0.5, "prose": 0.3, "code": 0.15, "math": 0.05}


def megatron_get_blend_from_list(blend: list[str]) -> tuple[list[str], list[float] | None]:
    """Megatron-LM's documented reading of a blend list (megatron.core.datasets.utils), for when
    megatron-core is not installed: pairs "weight prefix", or prefixes alone if any weight is not
    a number."""
    if len(blend) % 2 == 1:
        return [p.strip() for p in blend], None
    weights, prefixes = blend[::2], blend[1::2]
    try:
        return [p.strip() for p in prefixes], [float(w) for w in weights]
    except ValueError:
        return [p.strip() for p in blend], None


def test_round_weights_sum_to_one_sorted_and_deterministic():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 30))
        raw = rng.dirichlet(np.full(n, 0.3))
        weights = {f"d{i:02d}": float(w) for i, w in enumerate(raw[::-1])}
        digits = int(rng.integers(3, 13))
        rounded = round_weights(weights, digits)
        assert list(rounded) == sorted(weights), trial
        assert abs(sum(rounded.values()) - 1.0) <= 1e-9, (trial, sum(rounded.values()))
        assert all(v >= 0 for v in rounded.values())
        assert max(abs(rounded[d] - raw[::-1][i]) for i, d in enumerate(weights)) <= n * 10.0**-digits
        assert round_weights(dict(reversed(list(weights.items()))), digits) == rounded


def test_round_weights_residue_goes_to_largest_first_by_name():
    thirds = round_weights({"b": 1 / 3, "a": 1 / 3, "c": 1 / 3}, digits=4)
    assert thirds == {"a": 0.3334, "b": 0.3333, "c": 0.3333}


def test_json_and_yaml_round_trip_through_read_mixture(tmp_path):
    for fmt, render, parse in (("json", to_json, json.loads), ("yaml", to_yaml, yaml.safe_load)):
        text = render(WEIGHTS)
        data = parse(text)
        assert list(data) == sorted(WEIGHTS)
        assert abs(sum(data.values()) - 1.0) <= 1e-9
        path = tmp_path / f"mix.{fmt}"
        path.write_text(text)
        assert read_mixture(path) == pytest.approx(WEIGHTS, abs=1e-6)


def test_json_of_real_regmix_mixture_sums_to_one():
    weights = read_mixture(REGMIX / "regmix.yaml")
    data = json.loads(to_json(weights, digits=9))
    assert len(data) == 17
    assert abs(sum(data.values()) - 1.0) <= 1e-9
    assert data["train_the_pile_pile_cc"] == pytest.approx(weights["train_the_pile_pile_cc"], abs=1e-9)


def test_megatron_blend_reads_back_through_megatron_parser(tmp_path):
    paths = {d: f"/data/{d}_text_document" for d in WEIGHTS}
    text = to_megatron(WEIGHTS, paths=paths)
    assert text.splitlines()[0] == "0.15 /data/code_text_document"
    # Megatron-LM reads `--data-args-path FILE` as get_blend_from_list(open(FILE).read().split()).
    prefixes, weights = megatron_get_blend_from_list(text.split())
    assert prefixes == [paths[d] for d in sorted(WEIGHTS)]
    assert weights == pytest.approx([WEIGHTS[d] for d in sorted(WEIGHTS)])
    assert megatron_blend(WEIGHTS, paths=paths) == text.split()


def test_megatron_blend_with_megatron_core_if_installed():
    utils = pytest.importorskip("megatron.core.datasets.utils")
    blend = megatron_blend(WEIGHTS, paths={d: f"/data/{d}" for d in WEIGHTS})
    prefixes, weights = utils.get_blend_from_list(blend)
    assert prefixes == [f"/data/{d}" for d in sorted(WEIGHTS)]
    assert weights == pytest.approx([WEIGHTS[d] for d in sorted(WEIGHTS)])


def test_megatron_drops_zero_weights_and_needs_one_prefix_per_domain():
    assert megatron_blend({"a": 1.0, "b": 0.0}) == ["1.0", "a"]
    with pytest.raises(ValueError, match="one dataset prefix per domain; domain 'a'"):
        megatron_blend({"a": 0.5, "b": 0.5}, paths={"a": ["x", "y"], "b": "z"})
    with pytest.raises(ValueError, match=r"no entry for domain\(s\) \['b'\]"):
        megatron_blend({"a": 0.5, "b": 0.5}, paths={"a": "x"})


def test_hf_export_drives_interleave_datasets_to_the_mixture_shares():
    datasets = pytest.importorskip("datasets")
    config = json.loads(to_hf(WEIGHTS))
    assert config["datasets"] == sorted(WEIGHTS)
    assert abs(sum(config["probabilities"]) - 1.0) <= 1e-9
    parts = {d: datasets.Dataset.from_dict({"domain": [d] * 2000}) for d in WEIGHTS}
    # all_exhausted keeps sampling until every dataset has been read once: ~40,000 draws here.
    mixed = datasets.interleave_datasets(
        [parts[d] for d in config["datasets"]],
        probabilities=config["probabilities"],
        seed=0,
        stopping_strategy="all_exhausted",
    )
    drawn = mixed["domain"]
    assert len(drawn) > 20_000
    for domain, weight in WEIGHTS.items():
        share = drawn.count(domain) / len(drawn)
        assert abs(share - weight) < 0.02, (domain, share, weight)


def test_hf_config_paths_and_token_targets():
    config = hf_config(WEIGHTS, paths={d: f"{d}/*.parquet" for d in WEIGHTS}, tokens=1_000_003)
    assert config["data_files"]["web"] == ["web/*.parquet"]
    assert sum(config["tokens"].values()) == 1_000_003
    assert config["tokens"]["web"] == pytest.approx(500_001.5, abs=1)


def test_allocate_tokens_is_exact_and_deterministic():
    assert allocate_tokens({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 100) == {"a": 34, "b": 33, "c": 33}
    assert sum(allocate_tokens(WEIGHTS, 10**11 + 7).values()) == 10**11 + 7


def _check_olmo_format(config: dict, tokens: int | None) -> None:
    """OLMo-core's SourceMixtureList/SourceMixtureConfig rules: target_ratio in (0, 1] summing to 1,
    paths non-empty, max_repetition_ratio >= 1; requested_tokens > 0."""
    sources = config["source_list"]["sources"]
    assert {s["source_name"] for s in sources} == set(WEIGHTS)
    assert np.isclose(sum(s["target_ratio"] for s in sources), 1.0)
    for source in sources:
        assert set(source) == {"source_name", "target_ratio", "paths", "max_repetition_ratio"}
        assert 0 < source["target_ratio"] <= 1
        assert source["paths"] and all(isinstance(p, str) for p in source["paths"])
        assert source["max_repetition_ratio"] >= 1
    assert config.get("requested_tokens") == tokens


def test_olmo_export_has_the_source_mixture_fields():
    paths = {d: [f"s3://bucket/{d}/part-0.npy", f"s3://bucket/{d}/part-1.npy"] for d in WEIGHTS}
    config = yaml.safe_load(to_olmo(WEIGHTS, paths=paths, tokens=10**9))
    _check_olmo_format(config, 10**9)
    by_name = {s["source_name"]: s for s in config["source_list"]["sources"]}
    assert by_name["web"]["target_ratio"] == 0.5
    assert by_name["code"]["paths"] == paths["code"]
    assert by_name["code"]["max_repetition_ratio"] == 4.0
    no_repeats = olmo_config(WEIGHTS, max_repetition=1.0)["source_list"]["sources"]
    assert {s["max_repetition_ratio"] for s in no_repeats} == {1.0}
    with pytest.raises(ValueError, match="max_repetition must be >= 1"):
        olmo_config(WEIGHTS, max_repetition=0.5)


def test_olmo_export_with_olmo_core_if_installed():
    source_mixture = pytest.importorskip("olmo_core.data.source_mixture")
    config = yaml.safe_load(to_olmo(WEIGHTS, tokens=10**9))
    parsed = source_mixture.SourceMixtureDatasetConfig.from_dict({**config, "global_batch_size": 4096})
    parsed.validate()
    assert [s.target_ratio for s in parsed.source_list.sources] == [WEIGHTS[d] for d in sorted(WEIGHTS)]


def test_export_text_rejects_unknown_format_and_misplaced_options():
    with pytest.raises(ValueError, match="unknown export format 'csv'"):
        export_text(WEIGHTS, "csv")
    with pytest.raises(ValueError, match=r"format 'json' has no place for option\(s\) \['tokens'\]"):
        export_text(WEIGHTS, "json", tokens=10)
    with pytest.raises(ValueError, match="sum to"):
        export_text({"a": 0.5, "b": 0.2}, "json")


def test_read_paths_accepts_strings_lists_and_a_paths_key(tmp_path):
    path = tmp_path / "domains.yaml"
    path.write_text(yaml.safe_dump({"paths": {"a": "x", "b": ["y", "z"]}}))
    assert read_paths(path) == {"a": ["x"], "b": ["y", "z"]}
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        read_paths(path)


def test_cli_defaults_match_the_library():
    from datamixer.commands import export as command
    from mixer import budget, exports

    assert command.FORMATS == exports.FORMATS
    assert command.DEFAULT_DIGITS == exports.DEFAULT_DIGITS
    assert command.DEFAULT_MAX_EPOCHS == budget.DEFAULT_MAX_EPOCHS == exports.DEFAULT_MAX_REPETITION


def test_cli_export_every_format_to_file(tmp_path, cli):
    mix = write_mixture(tmp_path / "mix.yaml", WEIGHTS, {"method": "test"})
    domains = tmp_path / "domains.yaml"
    domains.write_text(yaml.safe_dump({d: f"/data/{d}" for d in WEIGHTS}))
    for fmt in FORMATS:
        out = tmp_path / f"out.{fmt}"
        args = ["export", "--mixture", str(mix), "--format", fmt, "--out", str(out)]
        if fmt in ("megatron", "hf", "olmo"):
            args += ["--paths", str(domains)]
        if fmt == "olmo":
            args += ["--tokens", "2B"]
        result = cli(args)
        assert result == {"format": fmt, "domains": 4, "out": str(out)}
        text = out.read_text()
        assert text == export_text(
            WEIGHTS,
            fmt,
            paths=read_paths(domains) if fmt in ("megatron", "hf", "olmo") else None,
            tokens=2 * 10**9 if fmt == "olmo" else None,
        )
    assert yaml.safe_load((tmp_path / "out.olmo").read_text())["requested_tokens"] == 2 * 10**9


def test_cli_export_to_stdout_and_errors(tmp_path, capsys):
    mix = write_mixture(tmp_path / "mix.yaml", WEIGHTS)
    assert main(["export", "--mixture", str(mix), "--format", "megatron"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:-1] == to_megatron(WEIGHTS).splitlines()
    assert json.loads(lines[-1])["out"] is None
    assert main(["export", "--mixture", str(mix), "--format", "toml"]) == 1
    assert "unknown export format 'toml'" in capsys.readouterr().err
    assert main(["export", "--mixture", str(tmp_path / "missing.yaml"), "--format", "json"]) == 1
    assert "missing.yaml: no such mixture file" in capsys.readouterr().err
