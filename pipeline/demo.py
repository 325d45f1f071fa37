"""The end-to-end main job on the bundled corpus, one function per stage.

build corpus -> train a quality classifier -> score and select (Beam) -> propose mixtures ->
proxy sweep at small sizes -> RegMix fit + optimise -> scaling-law fit -> predict the target
(N, D) for the optimised, natural and uniform mixtures -> train the target on all three, with two
seeds each, and compare measured with predicted against the seed noise -> report.
"""

from __future__ import annotations

import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixer.files import atomic_path, write_json, write_parquet
from mixer.mixture import write_mixture
from mixer.runs import LOSS, LOSS_PREFIX, RUN, WEIGHT_PREFIX, D, N
from pipeline import comparison
from pipeline.layout import RunLayout
from pipeline.progress import Tracker, document_progress, silent

Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and budgets of the demo; `quick()` is the version the tests run."""

    seed: int = 0
    corpus_bytes: int = 3_000_000  # per domain; the bundled legal text has about 1.1 MB
    keep_top: float = 0.5
    vocab_size: int = 1024
    mixtures: int = 20  # 40 proxy runs keep the demo under 4 minutes on 2 cores (docs/demo.md: timings)
    sizes: tuple[str, ...] = ("20k", "50k")  # same depth as the target, so N extrapolates smoothly
    tokens: int = 150_000
    eval_points: int = 3  # the law fits D >= tokens / 5: the 4th point (tokens / 8) went unused
    regressors: tuple[str, ...] = ("linear", "lightgbm", "law-blend")
    target_size: str = "100k"
    target_tokens: int = 300_000
    max_epochs: float = 4.0
    law_starts: int = 64
    law_bootstrap: int = 20
    target_seeds: int = 2  # each compared mixture's target is trained this many times: the seed noise
    workers: int | None = None
    validate: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """About a minute on 2 cores: fewer, smaller runs; same stages."""
        fast = cls(
            corpus_bytes=400_000,
            mixtures=10,
            tokens=60_000,
            eval_points=3,
            target_tokens=120_000,
            law_starts=16,
            law_bootstrap=5,
        )
        return replace(fast, **overrides)


def build_corpus(paths: RunLayout, config: DemoConfig, log: Log) -> dict[str, Any]:
    from pipeline.corpus import CorpusOptions
    from pipeline.corpus import build_corpus as build

    log(f"building the corpus in {paths.corpus}")
    return build(paths.corpus, CorpusOptions(max_bytes_per_domain=config.corpus_bytes))


def _read_texts(path: Path) -> list[str]:
    import json

    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def train_quality_classifier(paths: RunLayout, config: DemoConfig, log: Log) -> dict[str, Any]:
    """A DCLM-style classifier: reference-like text (every 4th `prose` document: documentation
    written for people) against as many documents drawn from the other domains.

    Per-domain selection then keeps, within each domain, the documents that read most like
    explanatory prose (commented code, licence preambles over boilerplate)."""
    from scorers.fasttext import FastTextQualityClassifier

    texts = {f.stem: _read_texts(f) for f in sorted(paths.corpus.glob("*.jsonl"))}
    positive = texts.pop("prose")[::4]
    others = [t for domain in sorted(texts) for t in texts[domain]]
    rng = random.Random(config.seed)
    negative = rng.sample(others, min(len(positive), len(others)))
    log(f"training the quality classifier on {len(positive)} + {len(negative)} documents")
    # default "auto" settings: held-out AUC 0.995 here against 0.979 with DCLM's (measured)
    classifier = FastTextQualityClassifier(seed=config.seed, dim=32, bucket=100_000).fit(positive, negative)
    classifier.save(paths.quality / "quality.bin")
    return classifier.report_.as_dict()


def score_corpus(paths: RunLayout, config: DemoConfig, log: Log, track: Tracker = silent) -> dict[str, Any]:
    from pipeline.dedup import DedupOptions
    from pipeline.job import ScoreJobConfig, run_score_job
    from pipeline.read import count_records
    from pipeline.registry import ScorerConfig
    from pipeline.select import Selection

    inputs = {f.stem: [str(f)] for f in sorted(paths.corpus.glob("*.jsonl"))}
    log(f"scoring {len(inputs)} domains with the Beam job (MinHash dedup, keep top {config.keep_top:.0%})")
    job = ScoreJobConfig(
        inputs=inputs,
        output=str(paths.scored),
        scorer=ScorerConfig("fasttext", model=str(paths.quality / "quality.bin")),
        selection=Selection(keep_top=config.keep_top),
        dedup=DedupOptions("minhash"),
        vocab_size=config.vocab_size,
    )
    with document_progress(track, total=count_records(inputs)) as settle:
        result = run_score_job(job)
        settle(result["in"])
    return result


def propose(paths: RunLayout, config: DemoConfig, log: Log) -> pd.DataFrame:
    from mixer.runs import load_token_counts
    from mixer.sampler import propose_mixtures, write_proposals

    counts = load_token_counts(paths.domain_stats)
    log(f"proposing {config.mixtures} proxy mixtures over {sorted(counts)}")
    frame = propose_mixtures(counts, config.mixtures, proxy_tokens=config.tokens, seed=config.seed)
    write_proposals(frame, paths.proposals_dir, {"method": "regmix-propose", "seed": config.seed})
    return frame


def _train_config(config: DemoConfig, target: bool = False):
    """The proxies' schedule, evaluated at `eval_points` token counts; the target is evaluated once, at
    the end (only its final loss is compared)."""
    from pipeline.proxy.train import TrainConfig

    return TrainConfig(eval_points=1 if target else config.eval_points)


def sweep(paths: RunLayout, config: DemoConfig, pool: Any, log: Log, track: Tracker = silent) -> pd.DataFrame:
    """Every proposal at every proxy size, in `pool` (a `pipeline.proxy.sweep.TrainingPool`)."""
    from pipeline.proxy.sweep import run_sweep_tracked

    log(f"proxy sweep: {config.mixtures} mixtures x sizes {list(config.sizes)} x {config.tokens} tokens")
    return run_sweep_tracked(
        track,
        "proxy sweep",
        pool.data,
        paths.proposals,
        list(config.sizes),
        config.tokens,
        paths.runs,
        seed=config.seed,
        config=_train_config(config),
        pool=pool,
    )


def final_rows(runs: pd.DataFrame, size: str | None = None) -> pd.DataFrame:
    """One row per (mixture, size, seed): the evaluation at the full budget."""
    frame = runs if size is None else runs[runs["size"] == size]
    keys = ["mixture", "size", *(["seed"] if "seed" in frame.columns else [])]
    return frame.loc[frame.groupby(keys)[D].idxmax()].reset_index(drop=True)


def fit_and_optimize_regmix(
    paths: RunLayout, config: DemoConfig, runs: pd.DataFrame, natural: dict[str, float], log: Log
) -> tuple[dict[str, float], dict[str, Any]]:
    """RegMix on the largest proxy size's final losses; caps from the target's data budget."""
    from mixer.budget import optimizer_caps
    from mixer.metrics import out_of_fold, regression_metrics
    from mixer.regmix import fit_regmix, make_estimator, optimize_regmix

    table = final_rows(runs, config.sizes[-1])
    weights = table[[RUN, *[c for c in table.columns if c.startswith(WEIGHT_PREFIX)]]]
    X = weights.drop(columns=RUN).to_numpy(dtype=float)
    y = table[LOSS].to_numpy(dtype=float)
    candidates: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    for name in config.regressors:  # model selection by out-of-fold Spearman, then MSE
        oof, _ = out_of_fold(make_estimator(name, seed=config.seed), X, y, seed=config.seed)
        metrics: dict[str, Any] = regression_metrics(y, oof, seed=config.seed)
        candidates[name] = (oof, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    chosen = max(candidates, key=lambda m: (candidates[m][1]["spearman"], -candidates[m][1]["mse"]))
    log(
        f"RegMix: {len(table)} runs at size {config.sizes[-1]}; out-of-fold Spearman "
        + ", ".join(f"{m} {c[1]['spearman']:.3f}" for m, c in candidates.items())
        + f"; using {chosen}"
    )
    # Cross-validated above for the choice: fit once, without a second CV.
    model, _ = fit_regmix(
        weights,
        table[[RUN, LOSS]],
        [LOSS],
        key=RUN,
        model=chosen,
        out=paths.regmix,
        cv_folds=0,
        seed=config.seed,
    )
    oof, metrics = candidates[chosen]
    write_parquet(paths.regmix_cv, pd.DataFrame({"mixture": table["mixture"], "true": y, "predicted": oof}))
    metrics = {
        "model": chosen,
        **metrics,
        **{f"spearman_{m}": c[1]["spearman"] for m, c in candidates.items()},
    }
    write_json(paths.regmix_metrics, metrics)
    caps = optimizer_caps(
        model.domains, stats=paths.domain_stats, tokens=config.target_tokens, max_epochs=config.max_epochs
    )
    result = optimize_regmix(
        model, out=paths.mixture("optimized"), prior=natural, caps=caps, seed=config.seed
    )
    return result["weights"], {
        "cv": metrics,
        "caps": caps,
        "runs": len(table),
        "optimize": {k: v for k, v in result.items() if k != "weights"},
    }


def fit_law(paths: RunLayout, config: DemoConfig, runs: pd.DataFrame, log: Log, track: Tracker = silent):
    """One additive law L_d(N, D, h) per validation domain, on every proxy evaluation past a fifth
    of the budget (the earliest points sit before the power-law regime).

    The overall loss is the mean of the domains' losses, so it is predicted as the mean of the
    domain laws: each domain's loss depends on the mixture mostly through its own weight, a shape
    the additive law's 1 / sum_i C_i h_i^gamma_i term captures, while the mean of several such
    curves is not of that form (on one demo run: 1.6-3.6% error at the target vs 9-12% when one law
    is fitted to the mean loss directly)."""
    from mixer.laws import AdditiveLaw
    from mixer.laws.fitting import counting_searches

    table = runs[runs[D] >= config.tokens / 5].reset_index(drop=True)
    targets = sorted(c for c in runs.columns if c.startswith(LOSS_PREFIX))
    log(f"fitting additive mixture laws for {targets} on {len(table)} (N, D, h) points")
    law = AdditiveLaw(
        targets=targets, n_starts=config.law_starts, n_bootstrap=config.law_bootstrap, seed=config.seed
    )
    total = len(targets) * law.n_searches(len(table))
    with track("law fit", total=total, unit="local searches") as advance, counting_searches(advance):
        law.fit(table)
    law.save(paths.law)
    return law


def predict_mean_loss(law: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over the law's targets of the point prediction and of the interval bounds."""
    parts = [law.predict_interval(frame, target=t) for t in law.targets_]
    return sum(part[["loss", "low", "high"]].reset_index(drop=True) for part in parts) / len(parts)


def _runs_frame(
    mixtures: dict[str, dict[str, float]], n: float, d: float, domains: list[str]
) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"mixture": name, N: n, D: d, **{WEIGHT_PREFIX + k: w.get(k, 0.0) for k in domains}}
            for name, w in mixtures.items()
        ]
    )


def law_curves(
    law: Any, runs: pd.DataFrame, mixtures: dict[str, dict[str, float]], target_n: float, target_d: float
) -> pd.DataFrame:
    """The law's loss over D for each proxy size and the target, for each compared mixture."""
    sizes = sorted(set(runs[N].astype(float))) + [target_n]
    grid = np.geomspace(runs[D].min(), target_d, 24)
    domains = list(law.domains_)
    frame = pd.concat([_runs_frame(mixtures, n, d, domains) for n in sizes for d in grid], ignore_index=True)
    frame["predicted"] = np.mean([law.predict(frame, target=t) for t in law.targets_], axis=0)
    return frame


def start_targets(
    paths: RunLayout, config: DemoConfig, pool: Any, mixtures: dict[str, dict[str, float]], log: Log
) -> Any:
    """Queue the target size on each mixture with `target_seeds` seeds in `pool`; they train while
    this process goes on (the baselines during RegMix and the law fit, the chosen one during the
    law fit). Returns the `Batch` that `finish_targets` waits for."""
    from pipeline.proxy.sweep import plan_todo

    seeds = [config.seed + i for i in range(config.target_seeds)]
    log(
        f"training the target ({config.target_size}, {config.target_tokens} tokens) on {sorted(mixtures)}, "
        f"seeds {seeds}"
    )
    target = _train_config(config, target=True)
    tasks = plan_todo(
        pool.data, mixtures, [config.target_size], config.target_tokens, paths.target_runs, seeds, target
    )
    return pool.submit(tasks, target, str(paths.checkpoints))


def finish_targets(paths: RunLayout, batches: list[Any], track: Tracker = silent) -> pd.DataFrame:
    """Wait for the queued target runs, writing each to `target_runs`; one final row per (mixture, seed)."""
    from pipeline.proxy.sweep import append_runs

    with track("target training", total=sum(len(b.tasks) for b in batches), unit="runs") as advance:
        for batch in batches:
            batch.wait(lambda task, rows: (append_runs(paths.target_runs, rows), advance(1)))
    return final_rows(pd.read_parquet(paths.target_runs))


def run_demo(
    out: str | Path, config: DemoConfig | None = None, log: Log = print, track: Tracker = silent
) -> dict[str, Any]:
    """Run every stage into a fresh directory that replaces `out` when all succeed."""
    config = config or DemoConfig()
    with atomic_path(Path(out)) as tmp:
        tmp.mkdir()
        result = _run_stages(RunLayout(tmp), config, log, track)
    result["out"] = str(out)
    result["report"] = str(Path(out) / Path(result["report"]).name)
    write_json(Path(out) / "summary.json", result)
    return result


def _baselines(paths: RunLayout) -> tuple[dict[str, float], dict[str, float]]:
    """The natural (token share of the kept data) and uniform mixtures, written beside the others."""
    from mixer.runs import load_token_counts

    counts = load_token_counts(paths.domain_stats)
    total = sum(counts.values())
    natural = {d: c / total for d, c in counts.items()}
    uniform = {d: 1.0 / len(counts) for d in counts}
    write_mixture(paths.mixture("natural"), natural, {"method": "token share of kept data"})
    write_mixture(paths.mixture("uniform"), uniform, {"method": "uniform"})
    return natural, uniform


def predict_at_target(law: Any, mixtures: dict[str, dict[str, float]], n: float, d: float) -> pd.DataFrame:
    """The law's mean loss with its bootstrap interval for each mixture at (n, d)."""
    interval = predict_mean_loss(law, _runs_frame(mixtures, n, d, list(law.domains_)))
    return pd.DataFrame(
        {
            "mixture": list(mixtures),
            N: n,
            D: d,
            "predicted": interval["loss"].to_numpy(),
            "low": interval["low"].to_numpy(),
            "high": interval["high"].to_numpy(),
            "measured": np.nan,
        }
    )


def law_optimum(paths: RunLayout, law: Any, n: float, d: float, caps: dict[str, float] | None) -> Any:
    """The law's own best mixture for the target budget (same data-budget caps as RegMix)."""
    from mixer.laws import optimize_mixture

    targets = list(law.targets_)
    best = optimize_mixture(
        law, n, d, floor=0.0, caps=caps, targets=targets, weights=[1.0 / len(targets)] * len(targets)
    )
    write_mixture(
        paths.mixture("law_optimal"),
        best.weights,
        {
            "method": "additive laws per domain, mean loss, exponentiated gradient",
            "N": n,
            "D": d,
            "predicted_loss": best.loss,
            "warnings": best.warnings,
        },
    )
    return best


def claim(
    predictions: pd.DataFrame,
    final: pd.DataFrame | None,
    mixtures: dict[str, dict[str, float]],
    law: Any,
    regmix_info: dict[str, Any],
) -> dict[str, Any]:
    """`comparison.json`: the three-way comparison, the two optimisers' disagreement and the warnings."""
    result = comparison.compare(predictions, final)
    predicted = predictions.set_index("mixture")["predicted"]
    n, d = float(predictions[N].iloc[0]), float(predictions[D].iloc[0])
    result["target"] = {"N": n, "D": d}
    result["disagreement"] = comparison.disagreement(
        "RegMix",
        mixtures["optimized"],
        "the law",
        mixtures["law_optimal"],
        {"RegMix": float(predicted["optimized"]), "the law": float(predicted["law_optimal"])},
    )
    result["warnings"] = [
        *comparison.extrapolation_warnings(law.data_, n, d, {"optimized": mixtures["optimized"]}),
        *comparison.cap_warnings(mixtures["optimized"], regmix_info["caps"]),
        *comparison.spearman_warnings(regmix_info["cv"].get("spearman"), regmix_info.get("runs")),
    ]
    result["regmix"] = {
        "model": regmix_info["cv"].get("model"),
        "cv_spearman": regmix_info["cv"].get("spearman"),
    }
    return result


def _run_stages(paths: RunLayout, config: DemoConfig, log: Log, track: Tracker) -> dict[str, Any]:
    from pipeline.proxy.data import load_proxy_data
    from pipeline.proxy.sweep import TrainingPool
    from pipeline.report import write_report

    clock = StageClock()
    clock.stage("corpus", lambda: build_corpus(paths, config, log))
    quality = clock.stage("quality", lambda: train_quality_classifier(paths, config, log))
    scored = clock.stage("score", lambda: score_corpus(paths, config, log, track))
    clock.stage("propose", lambda: propose(paths, config, log))
    data = clock.stage("load", lambda: load_proxy_data(paths.scored, vocab_size=config.vocab_size))
    with TrainingPool(data, config.workers) as pool:  # one set of workers for the proxies and the target
        runs = clock.stage("sweep", lambda: sweep(paths, config, pool, log, track))
        natural, uniform = _baselines(paths)
        baselines = {"natural": natural, "uniform": uniform}
        targets = [start_targets(paths, config, pool, baselines, log)] if config.validate else []
        optimized, regmix_info = clock.stage(
            "regmix", lambda: fit_and_optimize_regmix(paths, config, runs, natural, log)
        )
        if config.validate:
            targets.append(start_targets(paths, config, pool, {"optimized": optimized}, log))
        law = clock.stage("law", lambda: fit_law(paths, config, runs, log, track))
        compared = {"optimized": optimized, **baselines}
        predictions, best = _predict(paths, config, law, runs, compared, regmix_info)
        final = None
        if config.validate:
            final = clock.stage("target", lambda: finish_targets(paths, targets, track))
            predictions["measured"] = predictions["mixture"].map(final.groupby("mixture")[LOSS].mean())
    write_parquet(paths.target, predictions)
    checked = claim(predictions, final, {**compared, "law_optimal": best.weights}, law, regmix_info)
    write_json(paths.comparison, checked)
    report = clock.stage("report", lambda: write_report(paths.root, "datamixer demo"))
    parts = (scored, runs, compared, best, predictions, checked, regmix_info, quality, report)
    return _summary(paths, config, *parts, clock.figures())


def _predict(
    paths: RunLayout,
    config: DemoConfig,
    law: Any,
    runs: pd.DataFrame,
    compared: dict[str, dict[str, float]],
    regmix_info: dict[str, Any],
) -> tuple[pd.DataFrame, Any]:
    """The law's predictions at the target for the compared mixtures and its own optimum (written as
    `mixtures/law_optimal.yaml`), and its curves (`law_curves.parquet`)."""
    from pipeline.proxy.model import get_size

    target_n = float(get_size(config.target_size).non_embedding_params())
    target_d = float(config.target_tokens)
    best = law_optimum(paths, law, target_n, target_d, regmix_info["caps"])
    predictions = predict_at_target(law, {**compared, "law_optimal": best.weights}, target_n, target_d)
    write_parquet(paths.law_curves, law_curves(law, runs, compared, target_n, target_d))
    return predictions, best


class StageClock:
    """Wall seconds per stage, and at the end the whole run's wall and CPU seconds (this process and
    its finished children: the Beam job runs in this process, the training pool's workers are
    children) with the load average, so a timing can be read against how busy the machine was."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.cpu_before = _cpu_seconds()
        self.load_before = os.getloadavg()[0]
        self.timings: dict[str, float] = {}

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        self.timings[name] = round(time.perf_counter() - t0, 2)
        return value

    def figures(self) -> dict[str, Any]:
        return {
            "seconds": round(time.perf_counter() - self.started, 1),
            "cpu_seconds": round(_cpu_seconds() - self.cpu_before, 1),
            "load_average": [round(self.load_before, 2), round(os.getloadavg()[0], 2)],
            "timings": self.timings,
        }


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have finished."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _summary(
    paths: RunLayout,
    config: DemoConfig,
    scored: dict[str, Any],
    runs: pd.DataFrame,
    compared: dict[str, dict[str, float]],
    best: Any,
    predictions: pd.DataFrame,
    checked: dict[str, Any],
    regmix_info: dict[str, Any],
    quality: dict[str, Any],
    report: dict[str, Any],
    clock: dict[str, Any],
) -> dict[str, Any]:
    """summary.json: the headline figures of the run."""
    by_name = predictions.set_index("mixture")
    result: dict[str, Any] = {
        "out": str(paths.root),
        "documents": scored["in"],
        "kept": scored["kept"],
        "proxy_models": int(runs["mixture"].astype(str).str.cat(runs["size"], "/").nunique()),
        "mixture": {k: round(v, 4) for k, v in sorted(compared["optimized"].items())},
        "chosen_by": "RegMix (" + str(regmix_info["cv"].get("model")) + ")",
        "law_optimal_mixture": {k: round(v, 4) for k, v in sorted(best.weights.items())},
        "regmix_cv_spearman": regmix_info["cv"].get("spearman"),
        "target": {
            "N": int(by_name[N].iloc[0]),
            "D": int(by_name[D].iloc[0]),
            "size": config.target_size,
            "seeds": config.target_seeds if config.validate else 0,
        },
        "predicted": by_name["predicted"].round(4).to_dict(),
        "measured": by_name["measured"].dropna().round(4).to_dict(),
        "comparison": checked,
        "quality_classifier": quality,
        "report": report["report"],
        **clock,
        "config": asdict(config),
    }
    for g in checked["gains"]:
        if g["measured"] is not None:
            result[f"gain_over_{g['baseline']}"] = {
                "predicted": round(g["predicted"], 4),
                "measured": round(g["measured"], 4),
                "stderr": round(g["stderr"], 4) if g["stderr"] is not None else None,
                "beats": g["beats"],
            }
    return result
