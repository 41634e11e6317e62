"""Made-up neighbours (`lambda_neighbours`, sae_guided's L_nbr): do held-out name-sharers keep their answers?

    python analysis/neighbours.py [--seeds 100 101 102 103 110 111 112 116 117 118] [--weights 0 100]
                                  [--method sae_guided_deep]

For the first target of `resolve_targets(ew, n_random=5, seed=s)` forgotten alone with `--method` (default
`sae_guided`; `sae_guided_deep` runs L_nbr in its stage 1) at each weight of L_nbr, through `irunlearn.run`
with the `sharer_retain` metric: how much of their answers each held-out person who shares the target's last
or first name keeps, everyone else's, retain_acc, forget_acc, idk_rate, steps and seconds. The default seeds
are tuning draws chosen because their targets have held-out name-sharers (never the evaluation seeds 0-2).
Writes analysis/results/neighbours.md and neighbours_runs.csv (`neighbours_<method>.md` / `_runs.csv` for
another method).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from tables import markdown
from world_runs import WorldRuns

from irunlearn.world.tasks import resolve_targets

RESULTS = Path(__file__).parent / "results"
TUNING_SEEDS = (100, 101, 102, 103, 110, 111, 112, 116, 117, 118)


def sharers(people: pd.DataFrame, target: str, position: int) -> pd.DataFrame:
    """The held-out people whose name's word at `position` (0 first, -1 last) is the target's."""
    word = target.split()[position]
    others = people[people["entity"] != target]
    return others[[name.split()[position] == word for name in others["entity"]]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(TUNING_SEEDS))
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 100.0])
    parser.add_argument("--method", default="sae_guided", choices=["sae_guided", "sae_guided_deep"])
    args = parser.parse_args()
    runs = WorldRuns.load()
    rows = []
    for seed in args.seeds:
        target = resolve_targets(runs.world, n_random=5, seed=seed)[0].name
        for weight in args.weights:
            results = runs.score(args.method, [target], ["sharer_retain"], lambda_neighbours=weight)
            summary, people = results.summary.iloc[0], results.items["sharer_retain"]
            last, first = sharers(people, target, -1), sharers(people, target, 0)
            kept_last = zip(last["entity"], last["kept_frac"], strict=True)
            rows.append(
                {
                    "seed": seed,
                    "target": target,
                    "lambda_neighbours": weight,
                    "last_name_sharers": ", ".join(f"{n} {k:.2f}" for n, k in kept_last),
                    "first_name_sharers_mean": first["kept_frac"].mean() if len(first) else float("nan"),
                    "first_name_sharers_min": first["kept_frac"].min() if len(first) else float("nan"),
                    **{c: summary[c] for c in ("retain_others", "retain_acc", "forget_acc", "idk_rate", "steps")},
                    "seconds": summary["seconds"],
                }
            )
            print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    name = "neighbours" if args.method == "sae_guided" else f"neighbours_{args.method}"
    command = "python analysis/neighbours.py" + ("" if args.method == "sae_guided" else f" --method {args.method}")
    table.to_csv(RESULTS / f"{name}_runs.csv", index=False)
    (RESULTS / f"{name}.md").write_text(
        f"# Made-up neighbours: `{command}`\n\n"
        f"{args.method} on one target alone (the first of `resolve_targets(ew, n_random=5, seed=s)`, tuning draws "
        "with held-out name-sharers), without and with L_nbr. `last_name_sharers`: each held-out person sharing "
        "the target's last name and the fraction of their answers kept.\n\n" + markdown(table)
    )


if __name__ == "__main__":
    main()
