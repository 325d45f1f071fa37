"""Loss laws over model size N, training tokens D and domain weights h, as scikit-learn-style
estimators saved as JSON.

* `forms`: each law's form as one object (model and Jacobian, gradient in h, published parameters,
  random starts, size terms) and the `FORMS` registry;
* `fitting`: the summed Huber objective and the searches (screened grid, least squares, basin-hopping,
  bootstrap);
* `estimators`: `ChinchillaLaw`, `AdditiveLaw`, `JointLaw`, `MixingLaw` (fit / predict / JSON) and the
  `LAWS` registry;
* `evaluation`: error metrics, the parameter and residual tables;
* `optimize`: the best mixture at (N, D) and the compute-optimal (N, D).

The mixing law of Ye et al. is `MixingLaw` (estimator, one fit per (N, D)), `mixing_law` (the form
on `Features`), and `fit_mixing_law` / `mixing_law_loss` (on plain arrays).
"""

from __future__ import annotations

from typing import Any

from mixer.laws.estimators import (
    FORMAT,
    LAWS,
    AdditiveLaw,
    ChinchillaLaw,
    Fit,
    JointLaw,
    LawEstimator,
    MixingLaw,
    MixtureLaw,
    data_hash,
    fit_mixing_law,
    load_law,
    make_law,
    mixing_law_loss,
)
from mixer.laws.evaluation import evaluate, evaluation_metrics, params_table, residuals_table
from mixer.laws.fitting import HUBER_DELTA, HuberObjective, huber_terms
from mixer.laws.forms import (
    FORMS,
    Features,
    LawForm,
    additive_law,
    chinchilla_law,
    joint_law,
    mixing_grad_h,
    mixing_law,
)
from mixer.laws.optimize import (
    MixtureOptimum,
    compute_optimal,
    compute_optimal_size,
    in_convex_hull,
    optimize_mixture,
)


def random_starts(form: str, k: int, y: Any, n: int, rng: Any) -> Any:
    """`n` random starts of the named form (`FORMS[form].random_starts`)."""
    return FORMS[form].random_starts(k, y, n, rng)


__all__ = [
    "FORMAT",
    "FORMS",
    "HUBER_DELTA",
    "LAWS",
    "AdditiveLaw",
    "ChinchillaLaw",
    "Features",
    "Fit",
    "HuberObjective",
    "JointLaw",
    "LawEstimator",
    "LawForm",
    "MixingLaw",
    "MixtureLaw",
    "MixtureOptimum",
    "additive_law",
    "chinchilla_law",
    "compute_optimal",
    "compute_optimal_size",
    "data_hash",
    "evaluate",
    "evaluation_metrics",
    "fit_mixing_law",
    "huber_terms",
    "in_convex_hull",
    "joint_law",
    "load_law",
    "make_law",
    "mixing_grad_h",
    "mixing_law",
    "mixing_law_loss",
    "optimize_mixture",
    "params_table",
    "random_starts",
    "residuals_table",
]
