"""Every method on the same task, scored by the same evaluator: one row per method."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from sae_lens import SAE
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from irunlearn.evaluation import Evaluator
from irunlearn.methods import METHODS, forget
from irunlearn.methods.base import ForgetTask, UnlearnResult


def compare_methods(
    model: HookedTransformer,
    sae: SAE,
    task: ForgetTask,
    evaluator: Evaluator,
    methods: Sequence[str] = tuple(METHODS),
    seed: int = 0,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, UnlearnResult]]:
    """Run each method on `task` with its default settings and evaluate it with the full battery.

    Returns one row per method (every metric of DESIGN §5 plus `stop_reason`, `persistent`) and the
    results by method name.
    """
    rows, results = [], {}
    for name in tqdm(methods, desc="methods", disable=not progress):
        result = forget(model, sae, task, method=name, seed=seed, progress=progress)
        summary, _ = evaluator.evaluate(result.model, genuineness=True)
        rows.append(
            {
                "method": name,
                **summary,
                "steps": result.steps,
                "seconds": result.seconds,
                "stop_reason": result.stop_reason,
                "persistent": result.persistent,
            }
        )
        results[name] = result
    return pd.DataFrame(rows), results


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (`<metric>_std`) of every numeric column per method, over runs (seeds)."""
    numeric = runs.select_dtypes("number").columns.drop("seed", errors="ignore")
    grouped = runs.groupby("method", sort=False)[list(numeric)]
    table = grouped.mean().join(grouped.std(ddof=0).add_suffix("_std"))
    table["runs"] = runs.groupby("method", sort=False).size()
    return table.reset_index()
