"""RegMix speed: fit on 512 runs, optimise over 1,000,000 draws, against a bare numpy Dirichlet draw.

Wall times on a shared machine inflate with other jobs' load; the single-threaded parts' CPU time
is printed too. Also checks that the surrogate-guided search (`search="refine"`, the default) finds the same
top-k as scoring every draw with the full 1,000-tree model (brute force, about a minute).

    python bench/regmix_bench.py [--draws 1000000] [--no-brute]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixer import optimize as opt  # noqa: E402
from mixer.regmix import fit_regmix, optimize_regmix  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "regmix"
TARGET = "metric/the_pile_pile_cc_val_loss"


CPU_SECONDS: dict[str, float] = {}


def timed(func, *args, **kwargs):
    """(result, wall seconds); CPU seconds of this process go to CPU_SECONDS[func name]."""
    start, cpu = time.perf_counter(), time.process_time()
    result = func(*args, **kwargs)
    CPU_SECONDS[getattr(func, "__name__", "call")] = time.process_time() - cpu
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--draws", type=int, default=1_000_000)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--no-brute", action="store_true", help="skip the brute-force comparison")
    args = parser.parse_args()

    (model, _), fit_s = timed(
        fit_regmix, DATA / "train_mixture_1m.csv", DATA / "train_pile_loss_1m.csv", TARGET, cv_folds=0
    )
    (_, summary_cv), fit_cv_s = timed(
        fit_regmix, DATA / "train_mixture_1m.csv", DATA / "train_pile_loss_1m.csv", TARGET, cv_folds=5
    )
    prior = model.matrix(model.training_mixtures).mean(axis=0)
    prior /= prior.sum()
    rng = np.random.default_rng(0)
    _, dirichlet_s = timed(rng.dirichlet, prior, args.draws)

    # Warm-up (imports, LightGBM's first call), then the headline timing of the whole search.
    optimize_regmix(model, n_draws=10_000, top_k=args.top_k)
    summary, optimize_s = timed(optimize_regmix, model, n_draws=args.draws, top_k=args.top_k, seed=0)
    optimize_cpu, dirichlet_cpu = CPU_SECONDS["optimize_regmix"], CPU_SECONDS["dirichlet"]
    summary2, optimize2_s = timed(
        optimize_regmix, model, n_draws=args.draws, top_k=args.top_k, seed=0, n_jobs=2
    )

    print(
        f"fit, 512 runs, 1,000 trees:                 {fit_s:7.2f} s  (with 5-fold CV: {fit_cv_s:.2f} s, "
        f"CV spearman {summary_cv['cv'][TARGET]['spearman']:.4f})"
    )
    print(f"numpy Dirichlet draw, {args.draws:,} x {len(prior)}:     {dirichlet_s:7.2f} s")
    print(
        f"optimize, {args.draws:,} draws (refine, 1 thread): {optimize_s:7.2f} s  "
        f"ratio to the bare draw {optimize_s / dirichlet_s:.2f}x; scored {summary['n_evaluated']:,} draws"
    )
    print(
        f"optimize, same, LightGBM predict 2 threads:  {optimize2_s:7.2f} s  "
        f"ratio {optimize2_s / dirichlet_s:.2f}x"
    )
    print(
        f"  CPU time of this process (load-independent): optimize {optimize_cpu:.2f} s, "
        f"numpy Dirichlet {dirichlet_cpu:.2f} s, ratio {optimize_cpu / dirichlet_cpu:.2f}x"
    )
    print(
        f"  Pile-CC weight {summary['weights']['train_the_pile_pile_cc']:.4f}, "
        f"top-{args.top_k} predicted {summary['topk_predicted_min']:.4f}"
        f"..{summary['topk_predicted_max']:.4f}"
    )

    draws, draw_s = timed(opt.draw_mixtures, prior, args.draws, seed=0)
    score = model.objective()
    (refined, refined_scores, evaluated, rounds), refine_s = timed(opt.top_k_refine, score, draws, args.top_k)
    print(
        f"  of which: draw {draw_s:.2f} s, refine search {refine_s:.2f} s "
        f"({evaluated:,} model calls in {rounds} rounds)"
    )
    if args.no_brute:
        return
    (brute, brute_scores, _), brute_s = timed(opt.top_k_brute, score, draws, args.top_k)
    overlap = len(set(brute.tolist()) & set(refined.tolist()))
    l1 = np.abs(draws[brute].mean(axis=0) - draws[refined].mean(axis=0)).sum()
    print(
        f"brute force, all {args.draws:,} draws scored:    {brute_s:7.2f} s  "
        f"({brute_s / refine_s:.0f}x the refine search)"
    )
    print(
        f"  top-{args.top_k} agreement refine vs brute: {overlap}/{args.top_k} draws, "
        f"L1 between averaged mixtures {l1:.5f}, mean predicted loss "
        f"{refined_scores.mean():.5f} vs {brute_scores.mean():.5f}"
    )


if __name__ == "__main__":
    main()
