"""Every method against the oracle: forget01 / forget05 / forget10 × (original, oracle, each method) × metrics.

    python analysis/oracle_table.py [--forget-sets forget01,forget05,forget10] [--methods sae_guided,rmu] [--quiet]

For each standard forget set: the shipped oracle's acceptance figures; then the original model, the oracle
and every method's edited model (default settings, seed 0), each scored by the one evaluator of that
forget set with the existing battery (`evaluate(genuineness=True)`), every registered metric of groups
"oracle" and "depth" (where that group exists), and the oracle's own recognizer's readings of the same
names next to the model's. Writes analysis/results/oracle_table.md and oracle_table_runs.csv.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from tables import markdown

from irunlearn import load_world
from irunlearn.methods import METHODS, forget
from irunlearn.metrics import metrics_in
from irunlearn.oracle_metrics import oracle_probe_readings
from irunlearn.world.generator import FORGET_SET_SIZES
from irunlearn.world.oracle import load_oracle, oracle_acceptance
from irunlearn.world.recognition import recognize_world
from irunlearn.world.tasks import world_evaluator, world_task

RESULTS = Path(__file__).parent / "results"
SEED = 0
SHOWN = [
    "forget_quality",
    "forget_truth_ratio",
    "model_utility",
    "privleak",
    "extraction_strength",
    "exact_memorization",
    "forget_acc",
    "idk_rate",
    "retain_acc",
    "ppl_ratio",
    "probe_p_known_sae",
    "oracle_p_known_sae",
    "indistinguishability",
    "relearn_acc",
]


def score(evaluator, model, oracle, groups: list[str]) -> dict:
    """The existing battery, every metric of `groups`, and the probe readings next to the oracle's."""
    summary, _ = evaluator.evaluate(model, genuineness=True)
    for group in groups:
        summary |= evaluator.metrics(model, [m.name for m in metrics_in(group)])
    readings = oracle_probe_readings(evaluator, model, oracle.model, oracle.sae, oracle.recognizer)
    summary["oracle_p_known_sae"] = float(readings["oracle_p_known_sae"].mean())
    summary["oracle_p_known_resid"] = float(readings["oracle_p_known_resid"].mean())
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forget-sets", default=",".join(FORGET_SET_SIZES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    progress = not args.quiet
    ew = load_world()
    oracles = {name: load_oracle(name, ew) for name in args.forget_sets.split(",")}  # all present before work
    groups = ["oracle"] + (["depth"] if metrics_in("depth") else [])
    recognizer, _ = recognize_world(ew, progress=progress)
    runs, acceptance = [], []
    for name, oracle in oracles.items():
        acceptance.append({"forget_set": name, **oracle_acceptance(ew, oracle), **oracle.info["timings"]})
        task = world_task(ew, oracle.forget, recognizer)
        evaluator = world_evaluator(ew, task, seed=SEED)
        evaluator.oracle = oracle.model
        models = {"original": (ew.model, 0.0), "oracle": (oracle.model, oracle.info["timings"]["total_s"])}
        for method in args.methods.split(","):
            start = time.perf_counter()
            result = forget(ew.model, ew.sae, task, method=method, seed=SEED, progress=progress)
            models[method] = (result.model, time.perf_counter() - start)
        for label, (model, seconds) in models.items():
            runs.append(
                {"forget_set": name, "model": label, **score(evaluator, model, oracle, groups), "seconds": seconds}
            )
            print(f"{name} {label}: " + ", ".join(f"{k}={runs[-1].get(k, float('nan')):.3g}" for k in SHOWN))
    runs = pd.DataFrame(runs)
    RESULTS.mkdir(exist_ok=True)
    runs.to_csv(RESULTS / "oracle_table_runs.csv", index=False)
    shown = [c for c in SHOWN if c in runs.columns] + [
        c for m in metrics_in("depth") for c in m.columns if c in runs.columns
    ]
    text = (
        "# Against the oracle (embedded world)\n\nProduced by `python analysis/oracle_table.py`: each standard "
        f"forget set forgotten by every method (default settings, seed {SEED}) and scored by one evaluator "
        "with the oracle (the world retrained without the forget set) as reference. `oracle_p_known_sae` is the "
        "oracle's own recognizer reading the oracle on the same names. Every column is in `oracle_table_runs.csv`."
        "\n\n## Oracle acceptance\n\n"
        + markdown(pd.DataFrame(acceptance))
        + "\n## Table\n\n"
        + markdown(runs[["forget_set", "model", *shown, "seconds"]])
    )
    (RESULTS / "oracle_table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
