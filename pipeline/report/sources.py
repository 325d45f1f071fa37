"""What a report is built from: a `datamixer demo` directory, or the output of one step (a `score`
output directory, a `regmix propose` directory, a `regmix fit` model directory, a `law fit` JSON).
Each reader turns the files it finds into sections; a file that is missing leaves its section out
and is listed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixer import tree
from mixer.mixture import read_mixture
from mixer.regmix import CV_PREDICTIONS
from mixer.regmix import MANIFEST as REGMIX_MANIFEST
from pipeline import layout, schema
from pipeline.report import sections
from pipeline.report.headline import build_headline
from pipeline.report.page import Report

INTERACTION_FILE = "interaction.parquet"  # domain, target, effect (written by `regmix fit`)
PROPOSALS_FILE = "proposals.parquet"  # mixture, h_<leaf>... (written by `regmix propose`)
TREE_FILE = "tree.yaml"  # the domain tree `regmix propose --tree` sampled from


def detect(path: Path) -> str:
    """`demo`, `score`, `propose`, `regmix` or `law` (a JSON file), from the files in `path`."""
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "law"
        raise ValueError(f"{path}: a report is built from a directory or a `law fit` JSON file")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory")
    if (path / REGMIX_MANIFEST).exists():
        return "regmix"
    if (path / schema.DOMAIN_STATS_FILE).exists():
        return "score"
    if (path / PROPOSALS_FILE).exists():
        return "propose"
    return "demo"


def _read_scored(directory: Path) -> pd.DataFrame | None:
    shards = sorted(directory.glob(f"{schema.SCORED_PREFIX}-*.parquet"))
    if not shards:
        return None
    frames = [pd.read_parquet(p).drop(columns=[schema.TEXT], errors="ignore") for p in shards]
    return pd.concat(frames, ignore_index=True)


def _read_dead(directory: Path) -> pd.DataFrame | None:
    shards = sorted(directory.glob(f"{schema.DEAD_LETTER_PREFIX}-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in shards], ignore_index=True) if shards else None


def score_sections(directory: Path, report: Report) -> None:
    """A `score` output: per-domain counts, drops by reason, score distributions with cut-offs."""
    stats_path = directory / schema.DOMAIN_STATS_FILE
    stats = pd.read_parquet(stats_path) if stats_path.exists() else None
    if stats is None:
        report.missing.append(str(stats_path.name))
    else:
        report.sections.append(sections.selection_section(stats))
    scored = _read_scored(directory)
    if scored is None:
        report.missing.append(f"{schema.SCORED_PREFIX}-*.parquet")
        return
    report.sections.append(sections.drops_section(sections.drop_counts(scored, _read_dead(directory))))
    for column in [c for c in scored.columns if c.startswith(schema.SCORE_PREFIX)]:
        cutoff_column = schema.CUTOFF_PREFIX + column[len(schema.SCORE_PREFIX) :]
        cutoffs = (
            dict(zip(stats[schema.DOMAIN], stats[cutoff_column], strict=True))
            if stats is not None and cutoff_column in stats.columns
            else None
        )
        report.sections.append(sections.score_section(scored, column, cutoffs))


def propose_sections(directory: Path, report: Report) -> None:
    """A `regmix propose` output: the proposals' weights by tree level (per domain when flat)."""
    path = directory / TREE_FILE
    names = [level.name for level in tree.read_tree(path).levels] if path.exists() else ["domain"]
    weights = sections.level_weights(pd.read_parquet(directory / PROPOSALS_FILE), names)
    report.sections.append(sections.levels_section(weights, links=(PROPOSALS_FILE,)))


def regmix_sections(directory: Path, report: Report) -> None:
    """A `regmix fit` model directory: out-of-fold predicted vs true per target; domain effects."""
    path = directory / CV_PREDICTIONS
    if path.exists():
        cv = pd.read_parquet(path)
        summary = json.loads((directory / REGMIX_MANIFEST).read_text()).get("info", {}).get("cv", {})
        for target, part in cv.groupby("target", sort=True):
            metrics = {k: v for k, v in summary.get(target, {}).items() if isinstance(v, float)}
            report.sections.append(sections.regression_section(part, metrics, key=f"regression_{target}"))
    else:
        report.missing.append(f"{CV_PREDICTIONS} (fit with --cv-folds 2 or more)")
    if (directory / INTERACTION_FILE).exists():
        report.sections.append(sections.interaction_section(pd.read_parquet(directory / INTERACTION_FILE)))


def extrapolation_curves(
    law: Any, factors: tuple[float, ...] = (4.0, 16.0), points: int = 24
) -> pd.DataFrame:
    """The law's mean loss over its targets along D (up to 4x the largest fitted D), at the fitted
    sizes and at `factors` x the largest; mixture laws at the mean training mixture."""
    data = law.data_
    fitted = sorted(data["N_values"])
    sizes = [*fitted, *(max(fitted) * f for f in factors)]
    grid = np.geomspace(min(data["D_range"]), 4 * max(data["D_range"]), points)
    mixture = None
    if law.form.uses_mixture:
        mean = law.training_mixtures().mean(axis=0)
        mixture = dict(zip(law.domains_, mean, strict=True))
    frame = pd.concat(
        [law.frame_for(n, d, mixture) for n in sizes for d in grid],
        ignore_index=True,
    )
    frame["predicted"] = np.mean([law.predict(frame, target=t) for t in law.targets_], axis=0)
    frame["fitted"] = frame["N"].isin(fitted)
    return frame


def law_sections(path: Path, report: Report) -> None:
    """A `law fit` JSON: the fit on its rows (from LAW.residuals.parquet) and the extrapolation by size."""
    from mixer.laws import load_law

    law = load_law(path)
    residuals_path = layout.law_report_paths(path)["residuals"]
    residuals = pd.read_parquet(residuals_path) if residuals_path.exists() else None
    if residuals is None:
        report.missing.append(residuals_path.name)
    else:
        report.sections.append(sections.law_fit_section(residuals, law.kind))
    report.sections.append(sections.law_extrapolation_section(extrapolation_curves(law), residuals))


def demo_sections(run_dir: Path, report: Report) -> None:
    """Every stage of a `datamixer demo` directory, in the order they ran, under the headline."""
    paths = layout.RunLayout(run_dir)
    need = _needing(run_dir, report)
    mixtures = {
        name: read_mixture(p)
        for name, p in {**paths.compared_mixtures(), "law_optimal": paths.mixture("law_optimal")}.items()
        if p.exists()
    }
    if paths.comparison.exists():
        report.headline = build_headline(json.loads(paths.comparison.read_text()), mixtures)
    else:
        need(paths.comparison)
    if need(paths.scored):
        score_sections(paths.scored, report)
    if need(paths.proposals):
        report.sections.append(sections.proposals_section(pd.read_parquet(paths.proposals), mixtures))
    if need(paths.regmix_cv):
        metrics = json.loads(paths.regmix_metrics.read_text()) if paths.regmix_metrics.exists() else {}
        report.sections.append(sections.regression_section(pd.read_parquet(paths.regmix_cv), metrics))
    if mixtures:
        report.sections.append(sections.mixtures_section(mixtures))
        if any(tree.SEPARATOR in str(d) for mix in mixtures.values() for d in mix):
            report.sections.append(sections.mixtures_by_level_section(mixtures))
    target = pd.read_parquet(paths.target) if need(paths.target) else None
    if need(paths.runs) and need(paths.law_curves):
        report.sections.append(
            sections.law_section(
                pd.read_parquet(paths.runs), pd.read_parquet(paths.law_curves), target, _law_fit_table(paths)
            )
        )
    if target is not None:
        final = _final_target_rows(paths.target_runs) if paths.target_runs.exists() else None
        report.sections.append(sections.target_section(target, final))


def _needing(root: Path, report: Report) -> Callable[[Path], bool]:
    def need(path: Path) -> bool:
        if path.exists():
            return True
        report.missing.append(str(path.relative_to(root)))
        return False

    return need


def _final_target_rows(path: Path) -> pd.DataFrame:
    runs = pd.read_parquet(path)
    keys = [c for c in ("mixture", "size", "seed") if c in runs.columns]
    return runs.loc[runs.groupby(keys)["D"].idxmax()].reset_index(drop=True)


def _law_fit_table(paths: layout.RunLayout) -> pd.DataFrame | None:
    """The demo law's relative error per proxy size on the rows it was fitted to."""
    if not paths.law.exists():
        return None
    from mixer.laws import load_law

    law = load_law(paths.law)
    runs = pd.read_parquet(paths.runs)
    runs = runs[runs["D"] >= min(law.data_["D_range"])].reset_index(drop=True)
    predicted = np.mean([law.predict(runs, target=t) for t in law.targets_], axis=0)
    return sections.fit_by_size(
        pd.DataFrame({"N": runs["N"], "observed": runs["loss"], "predicted": predicted})
    )


def collect(path: str | Path) -> Report:
    """Build every section whose input exists at `path` (any of the kinds `detect` knows)."""
    path = Path(path)
    kind = detect(path)
    report = Report(kind=kind)
    readers = {"demo": demo_sections, "score": score_sections, "propose": propose_sections}
    readers.update(regmix=regmix_sections, law=law_sections)
    readers[kind](path, report)
    return report
