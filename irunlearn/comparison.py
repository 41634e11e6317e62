"""Summarising runs of several methods: mean ± std per method over seeds (`irunlearn compare`'s table)."""

from __future__ import annotations

import pandas as pd

# The genuineness battery's headline columns in the order tables show them (CLI, README, analysis scripts),
# then what a run cost. `Evaluator.evaluate(..., genuineness=True)` reports every one of them on every bench.
BATTERY_COLUMNS: tuple[str, ...] = (
    "forget_acc",
    "paraphrase_forget_acc",
    "idk_rate",
    "retain_acc",
    "probe_p_known_sae",
    "probe_p_known_resid",
    "dist_ratio",
    "indistinguishability",
    "indistinguishability_resid",
    "ppl_ratio",
    "generation_health",
    "repetition_rate",
    "relearn_acc",
    "relearn_acc_unknown_ref",
)
COST_COLUMNS: tuple[str, ...] = ("steps", "seconds")


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (`<metric>_std`) of every numeric column per method, over runs (seeds), and `runs`.

    `runs` is `irunlearn.run(...).summary` (one row per seed × task × method).

    >>> summarise(irunlearn.run(bench, model, sae, methods, n_targets=5, seeds=[0, 1, 2]).summary)
    """
    numeric = runs.select_dtypes("number").columns.drop("seed", errors="ignore")
    grouped = runs.groupby("method", sort=False)[list(numeric)]
    table = grouped.mean().join(grouped.std(ddof=0).add_suffix("_std"))
    table["runs"] = runs.groupby("method", sort=False).size()
    return table.reset_index()
