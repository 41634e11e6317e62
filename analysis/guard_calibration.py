"""How the collapse guard's defaults behave on every weight-editing method, and what it costs per step.

    python analysis/guard_calibration.py [--quick]

For 1 and 5 targets (`resolve_targets(ew, n_random=n, seed=s)`, seeds 0, 1, 2; `--quick`: 1 target, seed
0) each method runs at its default lr with the guard measuring every step but never stopping
(`guard_min_retain=0`, `guard_max_ppl_ratio=inf`), which gives the same history as a guarded run up to the
step the guard would stop (a healthy run's numbers do not depend on the guard). Per run: the lowest held
retain accuracy as a fraction of the original's, the highest perplexity ratio, and the first step at which
the default floors (`ForgetConfig.guard_min_retain`, `guard_max_ppl_ratio`) would roll back. Then `lr=1e6`
for each method (1 target, seed 0), with the default guard: stop reason, steps, converged. Then seconds per
step (median step-to-step time in the history) with the guard every step and without it (`guard_every=0`),
`sae_guided` and `grad_ascent`, 1 target, a fixed 10 steps, median of 3 runs.
Writes analysis/results/guard_calibration.md (other --sizes / --seeds: a suffixed file).
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings
from pathlib import Path

import pandas as pd
import torch
from tables import markdown

from irunlearn import load_world
from irunlearn.methods import METHODS, ForgetConfig, forget
from irunlearn.methods.base import RollbackWarning
from irunlearn.world.recognition import recognize_world
from irunlearn.world.tasks import resolve_targets, world_task

RESULTS = Path(__file__).parent / "results"
WEIGHT_EDITING = [name for name, cls in METHODS.items() if not cls.inference_only]
DEFAULTS = ForgetConfig()


def calibration_runs(ew, recognizer, sizes: list[int], seeds: list[int]) -> pd.DataFrame:
    rows = []
    for n in sizes:
        for seed in seeds:
            task = world_task(ew, resolve_targets(ew, n_random=n, seed=seed), recognizer)
            for method in WEIGHT_EDITING:
                result = forget(
                    ew.model,
                    ew.sae,
                    task,
                    method=method,
                    seed=seed,
                    progress=False,
                    guard_min_retain=0.0,
                    guard_max_ppl_ratio=math.inf,
                )
                steps = result.history.groupby("step")[["guard_retain_acc", "guard_ppl_ratio"]].first()
                original = steps["guard_retain_acc"].iloc[0]
                fails = steps[
                    (steps["guard_retain_acc"] < DEFAULTS.guard_min_retain * original)
                    | (steps["guard_ppl_ratio"] > DEFAULTS.guard_max_ppl_ratio)
                ]
                rows.append(
                    {
                        "targets": n,
                        "seed": seed,
                        "method": method,
                        "stop_reason": result.stop_reason,
                        "steps": result.steps,
                        "min_retain_frac": steps["guard_retain_acc"].min() / original,
                        "max_ppl_ratio": steps["guard_ppl_ratio"].max(),
                        "default_guard_stops_at": int(fails.index[0]) if len(fails) else None,
                    }
                )
                print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def huge_lr_runs(ew, recognizer) -> pd.DataFrame:
    task = world_task(ew, resolve_targets(ew, n_random=1, seed=0), recognizer)
    rows = []
    for method in WEIGHT_EDITING:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = forget(ew.model, ew.sae, task, method=method, lr=1e6, progress=False)
        unchanged = all(
            torch.equal(p, q) for p, q in zip(result.model.parameters(), ew.model.parameters(), strict=True)
        )
        rows.append(
            {
                "method": method,
                "stop_reason": result.stop_reason,
                "steps": result.steps,
                "converged": result.converged,
                "weights_equal_original": unchanged,
                "rollback_warning": any(issubclass(w.category, RollbackWarning) for w in caught),
            }
        )
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def guard_cost(ew, recognizer, repeats: int = 3, steps: int = 10) -> pd.DataFrame:
    task = world_task(ew, resolve_targets(ew, n_random=1, seed=0), recognizer)
    rows = []
    for method in ("sae_guided", "grad_ascent"):
        for guard_every in (1, 0):
            # extra_steps keeps the run going the full `steps` (no early stop), max_forget_acc only for baselines
            per_step = []
            for _ in range(repeats):
                result = forget(
                    ew.model,
                    ew.sae,
                    task,
                    method=method,
                    max_steps=steps,
                    extra_steps=steps,
                    guard_every=guard_every,
                    progress=False,
                )
                per_step.append(result.history.groupby("step")["seconds"].first().diff().median())
            rows.append({"method": method, "guard_every": guard_every, "seconds_per_step": statistics.median(per_step)})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table["overhead"] = table.groupby("method")["seconds_per_step"].transform(lambda s: s.iloc[0] / s.iloc[1] - 1)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 target, seed 0 only")
    parser.add_argument("--sizes", default="1,5", help="comma-separated numbers of targets forgotten together")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated target-draw seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ew = load_world()
    recognizer, _ = recognize_world(ew, progress=False)
    sizes, seeds = [int(n) for n in args.sizes.split(",")], [int(s) for s in args.seeds.split(",")]
    if args.quick:
        sizes, seeds = [1], [0]
    sections = {
        f"Default floors (guard_min_retain={DEFAULTS.guard_min_retain}, guard_max_ppl_ratio="
        f"{DEFAULTS.guard_max_ppl_ratio}) on each method at its default lr": calibration_runs(
            ew, recognizer, sizes, seeds
        ),
        "lr=1e6, default guard (1 target, seed 0)": huge_lr_runs(ew, recognizer),
        "Seconds per step, guard every step vs none (1 target, seed 0, 10 steps, median of 3)": guard_cost(
            ew, recognizer
        ),
    }
    text = "\n\n".join(f"### {title}\n\n{markdown(table)}" for title, table in sections.items())
    print(text)
    RESULTS.mkdir(exist_ok=True)
    suffix = (
        "_quick"
        if args.quick
        else ""
        if (args.sizes, args.seeds) == ("1,5", "0,1,2")
        else f"_{args.sizes}_{args.seeds}"
    )
    (RESULTS / f"guard_calibration{suffix}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
