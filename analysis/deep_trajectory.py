"""What stage 2 of sae_guided_deep does to the held-out name-sharers step by step, beside the depth it buys.

    python analysis/deep_trajectory.py [--seeds 111 118 103] [--steps 8 10 12 14 16 18 20]

For the first target of `resolve_targets(ew, n_random=5, seed=s)` (tuning draws with held-out last-name
sharers, never the evaluation seeds 0-2), sae_guided_deep is run with `max_steps` = each of `--steps` (the
optimisation is deterministic, so each run is the first N updates of the full one) and scored through
`irunlearn.run`: each held-out person sharing the target's last or first name and the fraction of their
answers kept, key restoration at each layer up to the SAE's, forced choice, idk_rate and which stage the run
stopped in. Writes analysis/results/deep_trajectory.md and deep_trajectory_runs.csv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from neighbours import sharers
from tables import markdown
from world_runs import WorldRuns

from irunlearn.world.tasks import resolve_targets

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[111, 118, 103])
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 10, 12, 14, 16, 18, 20])
    args = parser.parse_args()
    runs = WorldRuns.load()
    metrics = ["sharer_retain", "key_restoration", "forced_choice"]
    rows = []
    for seed in args.seeds:
        target = resolve_targets(runs.world, n_random=5, seed=seed)[0].name
        for n in args.steps:
            results = runs.score("sae_guided_deep", [target], metrics, max_steps=n)
            summary, people = results.summary.iloc[0], results.items["sharer_retain"]
            named = [(who, sharers(people, target, position)) for who, position in (("last", -1), ("first", 0))]
            restored = results.items["key_restoration"].groupby("layer")["restored"].mean()
            rows.append(
                {
                    "seed": seed,
                    "target": target,
                    "max_steps": n,
                    "steps": summary["steps"],
                    "stage_reached": int(results.history["stage"].max()),
                    **{
                        f"{who}_name_sharers": ", ".join(
                            f"{p} {k:.2f}" for p, k in zip(s["entity"], s["kept_frac"], strict=True)
                        )
                        for who, s in named
                    },
                    **{f"key_restoration_L{layer}": value for layer, value in restored.items()},
                    "forced_choice": summary["forced_choice"],
                    "forced_choice_stranger": summary["forced_choice_stranger"],
                    "idk_rate": summary["idk_rate"],
                    "retain_others": summary["retain_others"],
                }
            )
            print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / "deep_trajectory_runs.csv", index=False)
    command = " ".join(["python analysis/deep_trajectory.py", *sys.argv[1:]])
    (RESULTS / "deep_trajectory.md").write_text(
        f"# sae_guided_deep, the first N updates: `{command}`\n\n"
        "One tuning target alone per seed; each row is the run stopped after `max_steps` updates (stage 1 moves "
        "the key, stage 2 the layers downstream). Sharers: held-out people sharing the target's last / first "
        "name and the fraction of their answers kept; key restoration: the fraction of the target's answers "
        "back when the original residual at the name tokens is patched in after block L.\n\n" + markdown(table)
    )


if __name__ == "__main__":
    main()
