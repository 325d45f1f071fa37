"""Where each file of an end-to-end run lives, so the demo writes and the report reads one map."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import schema


@dataclass(frozen=True)
class RunLayout:
    """Paths inside a `datamixer demo --out DIR` directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def quality(self) -> Path:
        return self.root / "quality"

    @property
    def scored(self) -> Path:
        return self.root / "scored"

    @property
    def domain_stats(self) -> Path:
        return self.scored / schema.DOMAIN_STATS_FILE

    @property
    def proposals_dir(self) -> Path:
        return self.root / "proposals"

    @property
    def proposals(self) -> Path:
        return self.proposals_dir / "proposals.parquet"

    @property
    def runs(self) -> Path:
        return self.root / "runs.parquet"

    @property
    def regmix(self) -> Path:
        return self.root / "regmix"

    @property
    def regmix_cv(self) -> Path:
        return self.root / "regmix_cv.parquet"

    @property
    def regmix_metrics(self) -> Path:
        return self.root / "regmix_cv.json"

    @property
    def mixtures(self) -> Path:
        return self.root / "mixtures"

    @property
    def law(self) -> Path:
        return self.root / "law.json"

    @property
    def law_curves(self) -> Path:
        return self.root / "law_curves.parquet"

    @property
    def target(self) -> Path:
        return self.root / "target.parquet"

    @property
    def comparison(self) -> Path:
        """The three-way comparison at the target (`pipeline.comparison`): the report's headline."""
        return self.root / "comparison.json"

    @property
    def target_runs(self) -> Path:
        return self.root / "target_runs.parquet"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def mixture(self, name: str) -> Path:
        """Mixture file of one compared mixture: optimized, natural, uniform."""
        return self.mixtures / f"{name}.yaml"

    def compared_mixtures(self) -> dict[str, Path]:
        return {name: self.mixture(name) for name in ("optimized", "natural", "uniform")}


def law_report_paths(law_json: str | Path) -> dict[str, Path]:
    """Files `datamixer law fit` writes beside LAW.json: parameters, residuals and the plot."""
    out = Path(law_json)
    stem = out.with_suffix("") if out.suffix.lower() == ".json" else out
    return {
        "params": stem.with_name(stem.name + ".params.parquet"),
        "residuals": stem.with_name(stem.name + ".residuals.parquet"),
        "plot": stem.with_name(stem.name + ".png"),
    }
