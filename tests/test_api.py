"""The public API: loading, the docs/export.md example, Hydra `_target_` use, the training example, and
the optimisers run with data-budget caps."""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import mixer
from mixer import api
from mixer.budget import RepetitionWarning, epoch_caps
from mixer.mixture import read_mixture, write_mixture

ROOT = Path(__file__).resolve().parents[1]
REGMIX = ROOT.parent / "shared" / "data" / "regmix" / "mixture_config_1b"
EXAMPLE = ROOT / "examples" / "mixture.yaml"
EXAMPLE_WEIGHTS = {"code": 0.15, "math": 0.05, "prose": 0.3, "web": 0.5}
PUBLIC = (
    "load_mixture",
    "export_mixture",
    "interleave_config",
    "budget_caps",
    "check_mixture_budget",
    "regmix_mixture",
    "law_mixture",
)


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_load_mixture_sorted_validated_and_domain_checked(tmp_path):
    path = write_mixture(tmp_path / "mix.json", {"web": 0.75, "code": 0.25})
    assert list(mixer.load_mixture(path)) == ["code", "web"]
    assert mixer.load_mixture(path, domains=["web", "code"]) == {"code": 0.25, "web": 0.75}
    with pytest.raises(ValueError, match=r"not in the trainer \['code'\], not in the mixture \['math'\]"):
        mixer.load_mixture(path, domains=["web", "math"])
    with pytest.raises(FileNotFoundError, match="no such mixture file"):
        mixer.load_mixture(tmp_path / "none.yaml")
    regmix = mixer.load_mixture(REGMIX / "regmix.yaml")
    assert len(regmix) == 17 and abs(sum(regmix.values()) - 1) < 1e-12


def test_public_names_are_plain_keyword_functions():
    for name in PUBLIC:
        function = getattr(mixer, name)
        assert function is getattr(api, name)
        assert inspect.isfunction(function), name
        params = inspect.signature(function).parameters.values()
        assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params), name


def test_docs_example_runs(monkeypatch, capsys):
    page = (ROOT / "docs" / "export.md").read_text()
    section = page[page.index("<!-- export:example -->") : page.index("<!-- /export:example -->")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(ROOT)
    exec(compile(code, "docs/export.md:export:example", "exec"), {})
    assert capsys.readouterr().out.strip() == "{'code': 0.4, 'math': 0.03, 'prose': 1.0, 'web': 1.0}"


def test_hydra_config_targets_resolve_to_dicts(monkeypatch):
    run = load_module(ROOT / "examples" / "hydra" / "run.py", "hydra_run_example")
    config = yaml.safe_load((ROOT / "examples" / "hydra" / "config.yaml").read_text())
    monkeypatch.chdir(ROOT)
    data = run.instantiate(config["data"])
    assert data["weights"] == EXAMPLE_WEIGHTS
    assert data["interleave"]["probabilities"] == [0.15, 0.05, 0.3, 0.5]
    assert data["budget"]["over_limit"] == [] and data["budget"]["epochs"]["math"] == pytest.approx(1e9 / 3e8)
    assert run.locate(config["data"]["weights"]["_target_"]) is mixer.load_mixture
    config["data"]["budget"]["stats"]["math"] = 1.0e8  # 10 epochs of math: strict fails
    with pytest.raises(ValueError, match="math: 10.00 epochs"):
        run.instantiate(config["data"])


def test_hydra_instantiate_builds_the_data_section(monkeypatch):
    """The same config through Hydra's own `instantiate` (OmegaConf nodes, not plain dicts)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    monkeypatch.chdir(ROOT)
    config = OmegaConf.load(ROOT / "examples" / "hydra" / "config.yaml")
    data = instantiate(config.data, _convert_="all")
    assert data["weights"] == EXAMPLE_WEIGHTS
    assert data["interleave"]["probabilities"] == [0.15, 0.05, 0.3, 0.5]
    assert data["budget"]["over_limit"] == []


def test_training_example_trains_on_the_mixture_through_api_and_every_export(tmp_path, capsys):
    train = load_module(ROOT / "examples" / "train_with_mixture.py", "train_with_mixture_example")
    assert train.main(["--mixture", str(EXAMPLE), "--steps", "200"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["docs"] == 6400 and np.isfinite(result["loss"])
    for domain, weight in EXAMPLE_WEIGHTS.items():
        assert abs(result["shares"][domain] - weight) < 0.02, (domain, result["shares"])
    # Every export, read back the way its trainer reads it, gives the same weights, so the same run.
    for fmt in train.FORMATS:
        paths = str(ROOT / "examples" / "domains.yaml") if fmt == "megatron" else None
        out = tmp_path / f"mixture.{fmt}"
        out.write_text(mixer.export_mixture(EXAMPLE, format=fmt, paths=paths))
        assert train.weights_from_export(str(out), fmt) == pytest.approx(EXAMPLE_WEIGHTS, abs=1e-9), fmt


def test_budget_caps_and_check_from_a_stats_file(tmp_path):
    stats = tmp_path / "domain_stats.parquet"
    pd.DataFrame(
        {
            "domain": ["code", "math", "prose", "web"],
            "tokens_kept": [2 * 10**9, 15 * 10**7, 2 * 10**10, 10**11],
        }
    ).to_parquet(stats)
    caps = mixer.budget_caps(stats, "20B")
    assert caps == pytest.approx({"code": 0.4, "math": 0.03, "prose": 1.0, "web": 1.0})
    with pytest.warns(RepetitionWarning, match="math"):
        report = mixer.check_mixture_budget(EXAMPLE, stats, tokens=2 * 10**10)
    assert report["over_limit"] == ["math"]
    with pytest.raises(ValueError, match="repeated more than 6 epochs: math: 6.67 epochs"):
        mixer.check_mixture_budget(EXAMPLE, stats, tokens="20B", max_epochs=6, strict=True)
    relaxed = mixer.check_mixture_budget(EXAMPLE, stats, tokens="20B", max_epochs=7, strict=True)
    assert relaxed["over_limit"] == []


@pytest.fixture(scope="module")
def regmix_model(tmp_path_factory):
    """A linear RegMix model on 40 synthetic runs where more `web` always lowers the loss."""
    from mixer.regmix import fit_regmix

    root = tmp_path_factory.mktemp("regmix")
    rng = np.random.default_rng(0)
    h = rng.dirichlet(np.ones(3), 40)
    loss = 3.0 - 0.8 * h[:, 2] - 0.3 * h[:, 0] + rng.normal(0, 0.01, 40)
    pd.DataFrame({"index": range(40), "code": h[:, 0], "prose": h[:, 1], "web": h[:, 2]}).to_csv(
        root / "mixtures.csv", index=False
    )
    pd.DataFrame({"index": range(40), "loss": loss}).to_csv(root / "losses.csv", index=False)
    fit_regmix(
        root / "mixtures.csv", root / "losses.csv", "loss", model="linear", out=root / "model", cv_folds=0
    )
    return root / "model"


def test_regmix_mixture_respects_data_budget_caps(regmix_model, tmp_path):
    options = {"model": regmix_model, "draws": 20_000, "top_k": 50}
    free = mixer.regmix_mixture(**options)
    assert free["web"] > 0.8
    stats = {"code": 1e9, "prose": 1e9, "web": 1.25e8}  # web: at most 4 x 1.25e8 / 1e9 = 0.5
    capped = mixer.regmix_mixture(**options, stats=stats, tokens="1B", out=tmp_path / "mix.yaml")
    assert capped["web"] <= 0.5 + 1e-6
    assert capped["web"] > 0.45
    assert read_mixture(tmp_path / "mix.yaml") == pytest.approx(capped)
    provenance = yaml.safe_load((tmp_path / "mix.yaml").read_text())["provenance"]
    assert provenance["caps"] == pytest.approx(epoch_caps(1e9, stats))
    summary = mixer.regmix_mixture(**options, stats=stats, tokens="1B", caps={"code": 0.1}, summary=True)
    assert summary["weights"]["code"] <= 0.1 + 1e-6 and summary["weights"]["web"] <= 0.5 + 1e-6
    prior = write_mixture(tmp_path / "prior.yaml", {"code": 0.2, "prose": 0.2, "web": 0.6})
    assert mixer.regmix_mixture(**options, prior=prior) == mixer.regmix_mixture(
        **options, prior={"code": 1, "prose": 1, "web": 3}
    )
    with pytest.raises(ValueError, match="need both `stats`"):
        mixer.regmix_mixture(**options, stats=stats)
    with pytest.raises(ValueError, match=r"no row for domain\(s\) \['web'\]"):
        mixer.regmix_mixture(**options, stats={"code": 1e9, "prose": 1e9}, tokens="1B")


def test_law_mixture_passes_budget_caps_to_the_law_optimizer(monkeypatch, tmp_path):
    """Wiring only (fitting a law takes seconds): the caps reach mixer.laws.optimize_mixture."""
    import mixer.laws as laws

    calls = {}

    class FakeLaw:
        domains_ = ["code", "prose", "web"]
        kind = "additive"

    class FakeOptimum:
        weights = {"web": 0.5, "code": 0.25, "prose": 0.25}
        loss = 2.0
        losses = {"loss": 2.0}
        spread = {}
        warnings = []

        def to_dict(self):
            return {"weights": self.weights, "loss": self.loss}

    def fake_optimize(law, N, D, **kwargs):
        calls.update(N=N, D=D, **kwargs)
        return FakeOptimum()

    monkeypatch.setattr(laws, "load_law", lambda path: FakeLaw())
    monkeypatch.setattr(laws, "optimize_mixture", fake_optimize)
    stats = {"code": 1e9, "prose": 1e9, "web": 2.5e8, "unused": 5.0}
    weights = mixer.law_mixture(law="law.json", N=1e8, D="2B", stats=stats, out=tmp_path / "m.yaml")
    assert weights == {"code": 0.25, "prose": 0.25, "web": 0.5}
    assert calls["D"] == 2e9 and calls["N"] == 1e8
    assert calls["caps"] == pytest.approx({"code": 1.0, "prose": 1.0, "web": 0.5})
    mixer.law_mixture(law="law.json", N=1e8, D=1e9, stats=stats, tokens="4B", caps={"code": 0.2})
    assert calls["caps"] == pytest.approx({"code": 0.2, "prose": 1.0, "web": 0.25})
    mixer.law_mixture(law="law.json", N=1e8, D=1e9)
    assert calls["caps"] is None
    provenance = yaml.safe_load((tmp_path / "m.yaml").read_text())["provenance"]
    assert provenance["caps"]["web"] == 0.5
    assert provenance["budget"] == {"tokens": 2 * 10**9, "max_epochs": 4.0}


def test_law_mixture_with_a_fitted_mixing_law_respects_budget_caps(tmp_path):
    """End to end with a real (quick) law fit: more `web` always lowers the loss."""
    from mixer.laws import make_law

    rng = np.random.default_rng(0)
    h = rng.dirichlet(np.ones(3), 12)
    runs = pd.DataFrame(
        {
            "run": [f"r{i}" for i in range(12)],
            "N": 4e6,
            "D": 1e8,
            "h_code": h[:, 0],
            "h_prose": h[:, 1],
            "h_web": h[:, 2],
            "loss": 2 + 0.3 / (0.1 + h[:, 2]),
        }
    )
    make_law("mixing", n_starts=4, n_restarts=1, niter=0, n_bootstrap=0).fit(runs).save(tmp_path / "law.json")
    options = {"law": tmp_path / "law.json", "N": 4e6, "D": 1e8}
    assert mixer.law_mixture(**options)["web"] > 0.99
    stats = {"code": 1e9, "prose": 1e9, "web": 1.25e7}  # web: at most 4 x 1.25e7 / 1e8 = 0.5
    capped = mixer.law_mixture(**options, stats=stats, out=tmp_path / "mix.yaml")
    assert capped["web"] == pytest.approx(0.5, abs=1e-6)
    assert read_mixture(tmp_path / "mix.yaml") == pytest.approx(capped)
    assert mixer.law_mixture(**options, stats=stats, tokens="2e8")["web"] == pytest.approx(0.25, abs=1e-6)
