"""The end-to-end main job (`datamixer demo --quick`) and the report it renders."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from datamixer.cli import main
from mixer.laws import load_law
from mixer.mixture import read_mixture
from mixer.runs import load_runs
from pipeline.layout import RunLayout


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out, json.loads(stdout.getvalue().strip().splitlines()[-1])


def test_demo_runs_every_stage_and_chains_the_files(demo):
    out, result = demo
    paths = RunLayout(out)
    stats = pd.read_parquet(paths.domain_stats)
    assert set(stats["domain"]) == {"code", "legal", "prose"}
    assert (stats["docs_in"] == stats["docs_scored"] + stats["docs_dead_letter"]).all()
    assert (stats["tokens_kept"] < stats["tokens_in"]).all()
    runs = load_runs(paths.runs)
    assert runs["N"].nunique() == 2 and runs["mixture"].nunique() == 10
    assert result["proxy_models"] == 20
    optimized = read_mixture(paths.mixture("optimized"))
    assert abs(sum(optimized.values()) - 1) < 1e-9 and set(optimized) == {"code", "legal", "prose"}
    assert result["mixture"] == {k: round(v, 4) for k, v in sorted(optimized.items())}
    law = load_law(paths.law)
    assert sorted(law.domains_) == ["code", "legal", "prose"]
    law_optimal = read_mixture(paths.mixture("law_optimal"))
    assert result["law_optimal_mixture"] == {k: round(v, 4) for k, v in sorted(law_optimal.items())}


def test_demo_prints_predicted_beside_measured_at_the_target(demo):
    out, result = demo
    target = pd.read_parquet(RunLayout(out).target).set_index("mixture")
    assert set(target.index) == {"optimized", "natural", "uniform"}
    assert (target["low"] <= target["predicted"] + 1e-9).all()
    assert (target["predicted"] <= target["high"] + 1e-9).all()
    assert target.loc[["optimized", "natural"], "measured"].notna().all()
    assert result["measured"] == target["measured"].dropna().round(4).to_dict()
    gain = result["gain_over_natural"]
    measured_gain = target.loc["natural", "measured"] - target.loc["optimized", "measured"]
    assert gain["measured"] == pytest.approx(measured_gain, abs=1e-4)


def test_report_command_rebuilds_the_page_in_place(demo, capsys):
    out, _ = demo
    before = (out / "report.html").stat().st_mtime_ns
    assert main(["report", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["plots"] >= 7 and not result["missing"]
    assert (out / "report.html").stat().st_mtime_ns >= before


def test_report_of_a_missing_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such run directory" in err[0]


def test_report_has_every_section_with_plots_and_tables(demo):
    out, _ = demo
    page = (out / "report.html").read_text()
    for section in ("domain_stats", "proposals", "regression", "mixtures", "law", "target"):
        assert f"id='{section}'" in page, section
        assert (out / "report" / f"{section}.png").stat().st_size > 1000
        assert not pd.read_parquet(out / "report" / f"{section}.parquet").empty
    assert "id='scores_score_fasttext'" in page
    assert page.count("data:image/png;base64,") >= 7
    assert "Not in this run" not in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(demo, tmp_path):
    out, _ = demo
    # A page script counts images that decoded and tables that laid out; --dump-dom shows the result.
    page = (out / "report.html").read_text().replace(
        "</body>",
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.body.dataset.images=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
        "document.body.dataset.tables=[...document.querySelectorAll('table')]"
        ".filter(t=>t.getBoundingClientRect().height>0).length;});</script></body>",
    )
    probe = tmp_path / "probe.html"
    probe.write_text(page)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom"]
    dom = subprocess.run([CHROMIUM, *flags, probe.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    images = int(dom.split('data-images="')[1].split('"')[0])
    tables = int(dom.split('data-tables="')[1].split('"')[0])
    assert images >= 7
    assert tables >= 7
