"""Every method against the oracle: forget01 / forget05 / forget10 × (original, oracle, each method) × metrics.

    python analysis/oracle_table.py [--forget-sets forget01,forget05,forget10] [--methods sae_guided,rmu]
                                    [--groups oracle] [--metrics key_restoration,relearn_ab]
                                    [--baselines original,oracle] [--resume] [--quiet]

For each standard forget set: the shipped oracle's acceptance figures; then one `irunlearn.run` on its
people (together, default settings, seed 0) with the oracle as reference and the original and the oracle
as baseline rows: the existing battery (`genuineness=True`), every registered metric of `--groups`
(default "oracle") and the single metrics of `--metrics` (default `key_restoration,forced_choice,
relearn_ab`: attacks (a) half and (b) one fact, 25 and 100 steps, best of 5 lrs), and the oracle's own
recognizer's readings of the same names next to the model's. Writes analysis/results/oracle_table.md and
oracle_table_runs.csv, the CSV row by row, so an interrupted run keeps what it finished (`--resume` skips
the (forget set, model) rows already there).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from tables import markdown

from irunlearn import EntityBench, load_world, run
from irunlearn.experiment import BASELINES
from irunlearn.methods import METHODS
from irunlearn.metrics import get_metric, metrics_in
from irunlearn.world.generator import FORGET_SET_SIZES
from irunlearn.world.oracle import load_oracle, oracle_acceptance
from irunlearn.world.recognition import recognize_world

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forget-sets", default=",".join(FORGET_SET_SIZES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--groups", default="oracle", help="registered metric groups to add (oracle, depth)")
    parser.add_argument(
        "--metrics", default="key_restoration,forced_choice,relearn_ab", help="single registered metrics to add"
    )
    parser.add_argument(
        "--baselines", default=",".join(BASELINES), help="baseline rows (original, oracle; '' for none)"
    )
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
    bench = EntityBench.from_world(ew)
    for name, oracle in oracles.items():
        acceptance.append({"forget_set": name, **oracle_acceptance(ew, oracle), **oracle.info["timings"]})
        labels = [b for b in args.baselines.split(",") if b] + [m for m in args.methods.split(",") if m]
        todo = [label for label in labels if (name, label) not in finished]
        if not todo:
            continue

        def save(row: dict, forget_set: str = name) -> None:
            runs.append({"forget_set": forget_set, "model": row["method"], **row})
            print(f"{forget_set} {row['method']}: " + ", ".join(f"{k}={row.get(k, float('nan')):.3g}" for k in SHOWN))
            RESULTS.mkdir(exist_ok=True)
            pd.DataFrame(runs).to_csv(csv, index=False)

        run(
            bench,
            ew.model,
            ew.sae,
            [label for label in todo if label not in BASELINES],
            targets=[e.name for e in oracle.forget],
            seeds=[SEED],
            recognizer=recognizer,
            metrics=names,
            oracle=oracle,
            baselines=[label for label in todo if label in BASELINES],
            on_row=save,
            progress=progress,
        )
    runs = pd.DataFrame(runs)
    shown = [c for c in SHOWN if c in runs.columns]
    deep = list(dict.fromkeys(c for m in metrics_in("depth") for c in m.columns if c in runs and c not in shown))
    text = (
        "# Against the oracle (embedded world)\n\nProduced by `python analysis/oracle_table.py`: each standard "
        f"forget set forgotten by every method (default settings, seed {SEED}) and scored by one evaluator "
        "with the oracle (the world retrained without the forget set) as reference. `oracle_p_known_sae` is the "
        "oracle's own recognizer reading the oracle on the same names; the oracle row's probe columns are its own "
        "probes' too. Every column is in `oracle_table_runs.csv`."
        "\n\n## Oracle acceptance\n\n"
        + markdown(pd.DataFrame(acceptance))
        + "\n## Table\n\n"
        + markdown(runs[["forget_set", "model", *shown, "seconds"]])
        + "\n## Depth: key restoration, forced choice, relearning (attacker's best lr)\n\n"
        + markdown(runs[["forget_set", "model", *deep]])
    )
    (RESULTS / "oracle_table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
