"""Comparing every method on embedded-world targets drawn per seed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from irunlearn.comparison import compare_methods, summarise
from irunlearn.methods import METHODS
from irunlearn.world.artifacts import load_world
from irunlearn.world.recognition import recognize_world
from irunlearn.world.tasks import resolve_targets, world_evaluator, world_task


def compare_world(
    path: str | Path | None = None,
    n_targets: int = 1,
    seeds: Sequence[int] = (0,),
    methods: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each seed, draw `n_targets` known people, forget them together with every method, evaluate.

    Returns (runs: one row per method × seed, table: mean and `_std` per method over seeds).
    """
    ew = load_world(path)
    recognizer, _ = recognize_world(ew, progress=progress)
    runs = []
    for seed in seeds:
        task = world_task(ew, resolve_targets(ew, n_random=n_targets, seed=seed), recognizer)
        rows, _ = compare_methods(
            ew.model, ew.sae, task, world_evaluator(ew, task, seed=seed), methods or tuple(METHODS), seed, progress
        )
        runs.append(rows.assign(seed=seed, targets=", ".join(t.name for t in task.targets)))
    runs = pd.concat(runs, ignore_index=True)
    return runs, summarise(runs)
