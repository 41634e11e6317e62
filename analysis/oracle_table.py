"""Every method against the oracle: forget01 / forget05 / forget10 × (original, oracle, each method) × metrics.

    python analysis/oracle_table.py [--forget-sets forget01,forget05,forget10] [--methods sae_guided,rmu]
                                    [--groups oracle,depth] [--resume] [--quiet]

For each standard forget set: the shipped oracle's acceptance figures; then the original model, the oracle
and every method's edited model (default settings, seed 0), each scored by the one evaluator of that
forget set with the existing battery (`evaluate(genuineness=True)`), every registered metric of `--groups`
(default "oracle"; "depth" adds the full relearning-attack protocol, hours on a CPU for every row) and the
single metrics of `--metrics` (e.g. `key_restoration,forced_choice`), and
the oracle's own recognizer's readings of the same names next to the model's. Writes
analysis/results/oracle_table.md and oracle_table_runs.csv, the CSV row by row, so an interrupted run keeps
what it finished (`--resume` skips the (forget set, model) rows already there).
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
from irunlearn.metrics import get_metric, metrics_in
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


def score(evaluator, model, oracle, names: list[str]) -> dict:
    """The existing battery, the registered metrics `names`, and the probe readings next to the oracle's."""
    summary, _ = evaluator.evaluate(model, genuineness=True)
    summary |= evaluator.metrics(model, names)
    readings = oracle_probe_readings(evaluator, model, oracle.model, oracle.sae, oracle.recognizer)
    summary["oracle_p_known_sae"] = float(readings["oracle_p_known_sae"].mean())
    summary["oracle_p_known_resid"] = float(readings["oracle_p_known_resid"].mean())
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forget-sets", default=",".join(FORGET_SET_SIZES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--groups", default="oracle", help="registered metric groups to add (oracle, depth)")
    parser.add_argument("--metrics", default="", help="single registered metrics to add (e.g. key_restoration)")
    parser.add_argument("--resume", action="store_true", help="keep the rows of oracle_table_runs.csv")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    progress = not args.quiet
    ew = load_world()
    oracles = {name: load_oracle(name, ew) for name in args.forget_sets.split(",")}  # all present before work
    groups = [g for g in args.groups.split(",") if g]
    if unknown := [g for g in groups if not metrics_in(g)]:
        raise SystemExit(f"No registered metrics in group(s) {unknown}; see irunlearn.metrics.metric_table().")
    names = [m.name for g in groups for m in metrics_in(g)] + [n for n in args.metrics.split(",") if n]
    for name in names:
        get_metric(name)  # an unknown name fails here, naming the registered ones
    recognizer, _ = recognize_world(ew, progress=progress)
    csv = RESULTS / "oracle_table_runs.csv"
    done = pd.read_csv(csv) if args.resume and csv.exists() else pd.DataFrame(columns=["forget_set", "model"])
    runs, acceptance = done.to_dict("records"), []
    finished = set(zip(done["forget_set"], done["model"], strict=True))
    for name, oracle in oracles.items():
        acceptance.append({"forget_set": name, **oracle_acceptance(ew, oracle), **oracle.info["timings"]})
        task = world_task(ew, oracle.forget, recognizer)
        evaluator = world_evaluator(ew, task, seed=SEED)
        evaluator.oracle = oracle.model
        for label in ["original", "oracle", *args.methods.split(",")]:
            if (name, label) in finished:
                continue
            start = time.perf_counter()
            if label == "original":
                model, seconds = ew.model, 0.0
            elif label == "oracle":
                model, seconds = oracle.model, oracle.info["timings"]["total_s"]
            else:
                model = forget(ew.model, ew.sae, task, method=label, seed=SEED, progress=progress).model
                seconds = time.perf_counter() - start
            row = {"forget_set": name, "model": label, **score(evaluator, model, oracle, names), "seconds": seconds}
            runs.append(row | {"scoring_seconds": time.perf_counter() - start - (seconds if label != "oracle" else 0)})
            print(f"{name} {label}: " + ", ".join(f"{k}={runs[-1].get(k, float('nan')):.3g}" for k in SHOWN))
            RESULTS.mkdir(exist_ok=True)
            pd.DataFrame(runs).to_csv(csv, index=False)
    runs = pd.DataFrame(runs)
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
