"""Loss-law fitting speed and extrapolation on the shared reference data.

Prints, in one run (load average before and after; CPU seconds beside wall seconds, because on a
shared machine CPU time is what compares between runs):
1. Chinchilla (240 lowest-loss points): the screened grid search (objective at all 4,500 Hoffmann
   starts at once, L-BFGS from the best 8) vs L-BFGS from every one of the 4,500 starts.
2. Speed: the additive law on all 1,098 RedPajama rows, basin-hopping (the search before) vs least
   squares (the default above 512 rows), same starts: seconds, ratio old/new, objective of each;
   the joint law with least squares (and, with --joint-old, with basin-hopping, its default);
   then one table of both laws side by side (time and objective of each search).
3. Extrapolation, leaving out the largest size: every law fitted on 70M-305M, error on all 410M
   rows, one law fitted on the overall loss vs the overall loss predicted as the valid-weighted
   sum of per-domain laws (`per_domain=True`); the mixing law, which holds N and D fixed, is scored
   on held-out mixtures at 410M / 30k steps instead. Each with and without size-aware weighting
   (`size_weight=1`: rows weighted by N / N_min, so the larger proxies count more).
The last line is JSON with the headline figures.

Usage: python bench/law_bench.py [--skip-grid] [--skip-joint] [--joint-old] [--skip-per-domain]
       [--joint-per-domain] [--only-speed]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from mixer.laws import AdditiveLaw, ChinchillaLaw, JointLaw, MixingLaw, evaluate
from mixer.reference_data import chinchilla_runs, mixinglaws_runs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LAWS = {"chinchilla": ChinchillaLaw, "additive": AdditiveLaw, "joint": JointLaw}


def timed(function):
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def load() -> str:
    return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())


def bench_chinchilla(skip_grid: bool) -> dict:
    runs = chinchilla_runs(DATA)
    fast, fast_s, fast_cpu = timed(lambda: ChinchillaLaw(method="screened", n_bootstrap=0).fit(runs))
    f = fast.fits_[0]
    print(
        f"chinchilla screened (4,500 evaluated, L-BFGS from 8): {fast_s:.2f} s ({fast_cpu:.2f} s CPU), "
        f"objective {f.diagnostics['objective']:.10g}, E {f.params['E']:.4f} A {f.params['A']:.1f} "
        f"B {f.params['B']:.1f} alpha {f.params['alpha']:.4f} beta {f.params['beta']:.4f}"
    )
    if skip_grid:
        return {"chinchilla_screened_s": round(fast_s, 2)}
    grid, grid_s, grid_cpu = timed(lambda: ChinchillaLaw(method="grid", n_bootstrap=0).fit(runs))
    g = grid.fits_[0]
    rel = np.max(np.abs(np.array(list(g.params.values())) / np.array(list(f.params.values())) - 1))
    print(
        f"chinchilla full grid (L-BFGS from all 4,500): {grid_s:.2f} s ({grid_cpu:.2f} s CPU), objective "
        f"{g.diagnostics['objective']:.10g} ({g.diagnostics['n_at_best']} of 4,500 starts reached it)"
    )
    print(
        f"  speed-up {grid_cpu / fast_cpu:.1f}x (CPU); objective difference "
        f"{g.diagnostics['objective'] - f.diagnostics['objective']:.2e}; max relative parameter "
        f"difference {rel:.2e}"
    )
    return {"chinchilla_grid_over_screened_cpu": round(grid_cpu / fast_cpu, 1)}


def _fit_line(name: str, law, wall: float, cpu: float) -> str:
    d = law.fits_[0].diagnostics
    return (
        f"{name}: {wall:.1f} s ({cpu:.1f} s CPU), objective {d['objective']:.10g} "
        f"({d['n_at_best']} of {d['n_searches']} refined searches reached it, "
        f"{d['n_evaluations']} objective evaluations)"
    )


def bench_fit_speed(skip_joint: bool, joint_old: bool) -> dict:
    runs = mixinglaws_runs(DATA)
    print(f"fit on all {len(runs)} RedPajama rows (70M-410M), no bootstrap, same 256 starts:")
    results = {}
    kinds = ("additive",) + (() if skip_joint else ("joint",))
    for kind in kinds:
        searches = (
            ("basinhopping", "least_squares") if kind == "additive" or joint_old else ("least_squares",)
        )
        for search in searches:
            law, wall, cpu = timed(lambda s=search, k=kind: LAWS[k](n_bootstrap=0, search=s).fit(runs))
            print("  " + _fit_line(f"{kind}, {search}", law, wall, cpu), flush=True)
            results[(kind, search)] = (law.fits_[0].diagnostics["objective"], wall, cpu)
        if len(searches) == 2:
            (old_obj, old_wall, old_cpu), (new_obj, new_wall, new_cpu) = (
                results[(kind, s)] for s in searches
            )
            print(
                f"  {kind}: least squares / basin-hopping: {old_wall / new_wall:.1f}x faster (wall), "
                f"{old_cpu / new_cpu:.1f}x (CPU); objective {new_obj:.6g} vs {old_obj:.6g} "
                f"({'lower or equal' if new_obj <= old_obj * (1 + 1e-9) else 'HIGHER'})"
            )
    _side_by_side(results, {kind: LAWS[kind](n_bootstrap=0)._search_for(len(runs)) for kind in kinds})
    return {
        f"{k}_{s}": {"objective": o, "wall_s": round(w, 2), "cpu_s": round(c, 2)}
        for (k, s), (o, w, c) in results.items()
    }


def _side_by_side(results: dict, defaults: dict[str, str]) -> None:
    """One table: each law and search, its time and objective; the search `auto` picks is starred."""
    print(f"  {'law':<9} {'search':<16} {'wall s':>7} {'CPU s':>7}  objective (summed Huber)")
    for (kind, search), (objective, wall, cpu) in results.items():
        star = " *" if defaults.get(kind) == search else ""
        print(f"  {kind:<9} {search + star:<16} {wall:7.1f} {cpu:7.1f}  {objective:.7g}")
    missing = [f"{k} ({s})" for k, s in defaults.items() if (k, s) not in results]
    print(
        "  * the search `auto` (the default) picks on these rows"
        + (f"; not run: {', '.join(missing)} (--joint-old)" if missing else "")
    )


def _per_domain_columns(runs) -> list[str]:
    return [c for c in runs.columns if str(c).startswith("loss_")]


def bench_extrapolation(skip_joint: bool, skip_per_domain: bool, joint_per_domain: bool) -> dict:
    runs = mixinglaws_runs(DATA)
    largest = runs.loc[runs["N"].idxmax(), "size"]
    train, test = runs[runs["size"] != largest], runs[runs["size"] == largest]
    no_h = [c for c in runs.columns if c.startswith("h_")]
    print(
        f"extrapolation: fit on {sorted(set(train['size']))} ({len(train)} rows), predict {largest} "
        f"({len(test)} rows), overall loss (Pile valid-weighted):"
    )
    out = {}
    for kind in ("chinchilla", "additive") + (() if skip_joint else ("joint",)):
        drop = no_h if kind == "chinchilla" else []
        fit_on, score_on = train.drop(columns=drop), test.drop(columns=drop)
        per_domain_options = (
            (False,)
            if skip_per_domain or (kind == "joint" and not joint_per_domain)
            else (
                False,
                True,
            )
        )
        for per_domain in per_domain_options:
            for size_weight in (0.0, 1.0):
                law, wall, cpu = timed(
                    lambda k=kind, p=per_domain, w=size_weight, f=fit_on: LAWS[k](
                        n_bootstrap=0, per_domain=p, size_weight=w
                    ).fit(f)
                )
                m = evaluate(law, score_on, "loss")
                how = f"sum of {len(law.components('loss'))} per-domain laws" if per_domain else "one law"
                print(
                    f"  {kind}, {how}, size_weight {size_weight:g}: MRE {m['mre']:.3%}, "
                    f"max {m['max_re']:.3%}, Spearman {m['spearman']:.4f} ({wall:.1f} s, {cpu:.1f} s CPU)",
                    flush=True,
                )
                key = f"{kind}{'_per_domain' if per_domain else ''}_w{size_weight:g}_mre"
                out[key] = round(m["mre"], 5)
    final = test[test["step"] == test["step"].max()]
    mixtures = sorted(final["mixture"].unique())
    held = set(mixtures[::4])
    fit_rows, held_rows = final[~final["mixture"].isin(held)], final[final["mixture"].isin(held)]
    law, wall, _ = timed(lambda: MixingLaw(n_bootstrap=0).fit(fit_rows))
    m = evaluate(law, held_rows)
    print(
        f"  mixing law at {largest} / {int(final['step'].max())} steps, fit on {len(fit_rows)} mixtures, "
        f"{len(held_rows)} held out: MRE {m['mre']:.3%}, max {m['max_re']:.3%} ({wall:.1f} s)"
    )
    out["mixing_heldout_mixtures_mre"] = round(m["mre"], 5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-grid", action="store_true", help="skip the 4,500-start Chinchilla fit")
    parser.add_argument("--skip-joint", action="store_true", help="skip the joint law (slowest)")
    parser.add_argument("--joint-old", action="store_true", help="also time the joint law with basin-hopping")
    parser.add_argument("--skip-per-domain", action="store_true", help="skip the per-domain sums (22 fits)")
    parser.add_argument(
        "--joint-per-domain", action="store_true", help="also the joint law's per-domain sums"
    )
    parser.add_argument("--only-speed", action="store_true", help="only the fit speed on all rows (2.)")
    args = parser.parse_args()
    print(f"(shared machine: compare ratios and CPU seconds, not wall seconds; {load()})")
    summary = {"load_before": [round(v, 1) for v in os.getloadavg()]}
    if not args.only_speed:
        summary.update(bench_chinchilla(args.skip_grid))
    summary["fit_speed"] = bench_fit_speed(args.skip_joint, args.joint_old)
    if not args.only_speed:
        summary["extrapolation"] = bench_extrapolation(
            args.skip_joint, args.skip_per_domain, args.joint_per_domain
        )
    summary["load_after"] = [round(v, 1) for v in os.getloadavg()]
    print(f"({load()})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
