"""Experiments: named suites of runs, ablation grids, hyperparameter search and the CI regression check.

``SUITES`` is the table of the suites ``repbench run --suite`` knows; each entry is a function returning its
list of RunConfig, imported when the suite is asked for.
"""

from bench.core.registry import Registry

SUITES = Registry("suite", {
    "ci": "bench.experiments.check:ci",
    "quick": "bench.experiments.suites:quick",
    "quick-ablation": "bench.experiments.ablate:quick_ablation_suite",
    "smoke": "bench.experiments.suites:smoke",
    "standard": "bench.experiments.suites:standard",
})
