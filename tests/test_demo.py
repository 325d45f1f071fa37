"""The end-to-end main job (`datamixer demo --quick`) and the report it renders."""

from __future__ import annotations

import contextlib
import html
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

# The demo fixture runs the whole method (about 2 minutes on 2 free cores).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("demo") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out, json.loads(stdout.getvalue().strip().splitlines()[-1]), stderr.getvalue()


@pytest.fixture(scope="module")
def demo(demo_run) -> tuple[Path, dict]:
    return demo_run[0], demo_run[1]


def test_demo_runs_every_stage_and_chains_the_files(demo):
    out, result = demo
    paths = RunLayout(out)
    stats = pd.read_parquet(paths.domain_stats)
    assert set(stats["domain"]) == {"code", "legal", "prose"}
    assert (stats["docs_in"] == stats["docs_scored"] + stats["docs_dead_letter"]).all()
    dropped = stats[[c for c in stats.columns if c.startswith("docs_dropped_")]].sum(axis=1)
    assert (stats["docs_scored"] == stats["docs_kept"] + dropped).all()
    assert stats["docs_dropped_duplicate"].sum() > 0  # the demo dedupes (MinHash) before selecting
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
    assert set(target.index) == {"optimized", "natural", "uniform", "law_optimal"}
    assert (target["low"] <= target["predicted"] + 1e-9).all()
    assert (target["predicted"] <= target["high"] + 1e-9).all()
    assert target.loc[["optimized", "natural", "uniform"], "measured"].notna().all()
    assert pd.isna(target.loc["law_optimal", "measured"])
    assert result["measured"] == target["measured"].dropna().round(4).to_dict()
    finals = pd.read_parquet(RunLayout(out).target_runs)
    finals = finals.loc[finals.groupby(["mixture", "seed"])["D"].idxmax()]
    assert sorted(finals["seed"].unique()) == [0, 1] and len(finals) == 6  # two seeds per mixture
    means = finals.groupby("mixture")["loss"].mean()
    for baseline in ("natural", "uniform"):
        gain = result[f"gain_over_{baseline}"]
        assert gain["measured"] == pytest.approx(means[baseline] - means["optimized"], abs=1e-4)
        assert gain["stderr"] > 0 and isinstance(gain["beats"], bool)
        assert gain["beats"] == (gain["measured"] > 2 * gain["stderr"])


def test_demo_states_the_verdicts_and_the_optimizers_disagreement(demo_run):
    out, result, stderr = demo_run
    checked = json.loads((out / "comparison.json").read_text())
    assert checked == result["comparison"]
    assert [g["baseline"] for g in checked["gains"]] == ["natural", "uniform"]
    for sentence in checked["verdicts"]:
        assert sentence in " ".join(stderr.split())  # printed, perhaps wrapped by rich
        assert ("more than the seed noise" in sentence) or ("beyond the seed noise" in sentence)
    disagreement = checked["disagreement"]
    law_optimal = read_mixture(RunLayout(out).mixture("law_optimal"))
    optimized = read_mixture(RunLayout(out).mixture("optimized"))
    assert disagreement["l1"] == pytest.approx(sum(abs(law_optimal[d] - optimized[d]) for d in optimized))
    assert disagreement["chosen_by"] == "RegMix" and result["chosen_by"].startswith("RegMix")
    assert any(w.startswith("extrapolation: the target") for w in checked["warnings"])  # 2x N and D
    for stage in ("score job: ", "proxy sweep: 20/20 runs in ", "law fit: ", "target training: 6/6 runs in "):
        assert sum(line.startswith(stage) for line in stderr.splitlines()) == 1, stage
    assert "apitools" not in stderr and "with_outputs()" not in stderr


def test_report_command_rebuilds_the_page_in_place(demo, cli):
    out, _ = demo
    page = out / "report.html"
    page.write_text("stale")  # a page the command wrote before: it replaces it
    result = cli(["report", str(out)])
    assert result["plots"] >= 7 and not result["missing"] and result["report"] == str(page)
    assert page.read_text().count("<img class=plot") == result["plots"]


def test_report_of_a_missing_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such run directory" in err[0]


def test_report_has_the_headline_then_every_section_with_plots_and_short_tables(demo):
    out, _ = demo
    page = (out / "report.html").read_text()
    sections = (
        "domain_stats",
        "drops",
        "scores_score_fasttext",
        "proposals",
        "regression",
        "mixtures",
        "law",
        "target",
    )
    assert page.index("id=headline") < min(page.index(f"id='{s}'") for s in sections)
    for section in sections:
        assert f"id='{section}'" in page, section
        assert (out / "report" / f"{section}.png").stat().st_size > 1000
        assert not pd.read_parquet(out / "report" / f"{section}.parquet").empty
        assert f"href='report/{section}.parquet'" in page
    assert (out / "report" / "headline.png").stat().st_size > 1000
    assert page.count("data:image/png;base64,") == len(sections) + 1
    assert "more rows in the Parquet table" not in page and page.count("<tr>") < 80  # short tables only
    assert "Not in this run" not in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path: Path, *args: str) -> str:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,800",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run([CHROMIUM, *flags], capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_with_the_headline_in_one_screen(demo, tmp_path):
    out, result = demo
    # A page script counts images that decoded and tables that laid out, and where the headline
    # ends; --dump-dom shows the result and the text the browser rendered.
    page = (
        (out / "report.html")
        .read_text()
        .replace(
            "</body>",
            "<script>window.addEventListener('load',()=>{const i=[...document.images];"
            "document.body.dataset.images=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
            "document.body.dataset.tables=[...document.querySelectorAll('table')]"
            ".filter(t=>t.getBoundingClientRect().height>0).length;"
            "document.body.dataset.headlineBottom=Math.ceil(document.getElementById('headline')"
            ".getBoundingClientRect().bottom);"
            "document.body.dataset.headlineText=document.getElementById('headline').innerText"
            ".replace(/\\s+/g,' ');});</script></body>",
        )
    )
    probe = tmp_path / "probe.html"
    probe.write_text(page)
    dom = _chromium(tmp_path, "--dump-dom", probe.as_uri())
    attribute = lambda name: html.unescape(dom.split(f'data-{name}="')[1].split('"')[0])  # noqa: E731
    assert int(attribute("images")) == 9
    assert int(attribute("tables")) >= 10
    assert int(attribute("headline-bottom")) <= 800, "the headline needs scrolling at 1280x800"
    text = attribute("headline-text")
    checked = result["comparison"]
    for row in checked["mixtures"]:
        assert f"{row['predicted']:.4f} [{row['low']:.4f}, {row['high']:.4f}]" in text
        if row["measured"] is not None:
            assert f"{row['measured']:.4f}" in text
    for g in checked["gains"]:
        assert f"{g['predicted']:+.4f}" in text and f"{g['measured']:+.4f}" in text
    for sentence in [*checked["verdicts"], checked["disagreement"]["text"], *checked["warnings"]]:
        assert " ".join(sentence.split()) in text
    screenshot = tmp_path / "headline.png"
    _chromium(tmp_path, f"--screenshot={screenshot}", (out / "report.html").as_uri())
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
