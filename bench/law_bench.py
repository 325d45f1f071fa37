"""Loss-law fitting speed and accuracy on the shared reference data.

Prints, in one run:
1. Chinchilla (240 lowest-loss points): the screened grid search (objective at all 4,500 Hoffmann
   starts at once, L-BFGS from the best 8) vs L-BFGS from every one of the 4,500 starts: time, ratio,
   and how far apart their optima are.
2. The additive law on all RedPajama runs (70M-410M): fit time with default settings, with and
   without the bootstrap.
3. Fit on 70M-305M, predict 410M: MRE per law (and its spread over restarts); the mixing law, which
   holds N and D fixed, is scored on held-out mixtures at 410M / 30k steps instead.

Usage: python bench/law_bench.py [--skip-grid] [--skip-joint]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mixer.laws import AdditiveLaw, ChinchillaLaw, JointLaw, MixingLaw, evaluate
from mixer.reference_data import chinchilla_runs, mixinglaws_runs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def bench_chinchilla(skip_grid: bool) -> None:
    runs = chinchilla_runs(DATA)
    fast, fast_s = timed(lambda: ChinchillaLaw(method="screened", n_bootstrap=0).fit(runs))
    f = fast.fits_[0]
    print(
        f"chinchilla screened (4,500 evaluated, L-BFGS from 8): {fast_s:.2f} s, objective "
        f"{f.diagnostics['objective']:.10g}, E {f.params['E']:.4f} A {f.params['A']:.1f} "
        f"B {f.params['B']:.1f} "
        f"alpha {f.params['alpha']:.4f} beta {f.params['beta']:.4f}"
    )
    if skip_grid:
        return
    grid, grid_s = timed(lambda: ChinchillaLaw(method="grid", n_bootstrap=0).fit(runs))
    g = grid.fits_[0]
    rel = np.max(np.abs(np.array(list(g.params.values())) / np.array(list(f.params.values())) - 1))
    print(
        f"chinchilla full grid (L-BFGS from all 4,500): {grid_s:.2f} s, objective "
        f"{g.diagnostics['objective']:.10g} ({g.diagnostics['n_at_best']} of 4,500 starts reached it)"
    )
    print(
        f"  speed-up {grid_s / fast_s:.1f}x; objective difference "
        f"{g.diagnostics['objective'] - f.diagnostics['objective']:.2e}; "
        f"max relative parameter difference {rel:.2e}"
    )


def bench_additive_fit() -> None:
    runs = mixinglaws_runs(DATA)
    no_boot, s0 = timed(lambda: AdditiveLaw(n_bootstrap=0).fit(runs))
    _, s1 = timed(lambda: AdditiveLaw().fit(runs))
    d = no_boot.fits_[0].diagnostics
    print(
        f"additive law on all {len(runs)} RedPajama rows (70M-410M): {s0:.1f} s without bootstrap "
        f"({d['n_searches']} restarts x {d['optimizer']['niter'] + 1} local searches, {d['n_evaluations']} "
        f"objective evaluations), {s1:.1f} s with the default 50 bootstrap refits"
    )


def bench_extrapolation(skip_joint: bool) -> None:
    runs = mixinglaws_runs(DATA)
    train, test = runs[runs["size"] != "410M"], runs[runs["size"] == "410M"]
    observed = test["loss"].to_numpy()
    no_h = [c for c in runs.columns if c.startswith("h_")]
    law, s = timed(lambda: ChinchillaLaw(n_bootstrap=0).fit(train.drop(columns=no_h)))
    m = evaluate(law, test.drop(columns=no_h))
    print(
        f"410M from 70M-305M, chinchilla (ignores h): MRE {m['mre']:.3%}, max {m['max_re']:.3%}, "
        f"Spearman {m['spearman']:.4f} ({s:.1f} s)"
    )
    kinds = [("additive", AdditiveLaw)] + ([] if skip_joint else [("joint", JointLaw)])
    for name, cls in kinds:
        law, s = timed(lambda cls=cls: cls(n_bootstrap=0).fit(train))
        m = evaluate(law, test)
        restart = np.mean(np.abs(law.predict_restarts(test) - observed) / observed, axis=1)
        objectives = law.fits_[0].diagnostics["objectives_top"]
        print(
            f"410M from 70M-305M, {name}: MRE {m['mre']:.3%}, max {m['max_re']:.3%}, Spearman "
            f"{m['spearman']:.4f} ({s:.1f} s); over its {restart.size} restarts MRE {restart.min():.3%}-"
            f"{restart.max():.3%}, objective {min(objectives):.5g}-{max(objectives):.5g}"
        )
    final = test[test["step"] == test["step"].max()]
    mixtures = sorted(final["mixture"].unique())
    held = set(mixtures[::4])
    fit_rows, held_rows = final[~final["mixture"].isin(held)], final[final["mixture"].isin(held)]
    law, s = timed(lambda: MixingLaw(n_bootstrap=0).fit(fit_rows))
    m = evaluate(law, held_rows)
    print(
        f"mixing law at 410M / {int(final['step'].max())} steps, fit on {len(fit_rows)} mixtures, "
        f"{len(held_rows)} held out: MRE {m['mre']:.3%}, max {m['max_re']:.3%} ({s:.1f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-grid", action="store_true", help="skip the 4,500-start Chinchilla fit")
    parser.add_argument("--skip-joint", action="store_true", help="skip the joint law (slowest)")
    args = parser.parse_args()
    print("(timings on a shared machine: compare ratios, not absolutes)")
    bench_chinchilla(args.skip_grid)
    bench_additive_fit()
    bench_extrapolation(args.skip_joint)


if __name__ == "__main__":
    main()
