"""Which of sae_guided_deep's terms costs what: the method as shipped and with one term off, same targets.

    python analysis/deep_ablation.py [--seeds 100 101] [--targets 5] [--settings shipped "lambda_name 0"] [--tag T]
                                     [--relearn]

For `--targets` known people drawn by `resolve_targets(ew, n_random=N, seed=s)` and forgotten together (the default
seeds are tuning draws, never the evaluation seeds 0-2), one `irunlearn.run` per setting of `SETTINGS`: the shipped
defaults, L_nbr off (`lambda_neighbours=0`), L_choice off (`lambda_choice=0`), L_name off (`lambda_name=0`),
L_nbr,deep off (`lambda_neighbours_deep=0`), the virtual sharers' last-word lines off (`sharer_parts=("prefix",)`)
and both of these off, the method before they came; and three ways of sparing the held-out name-sharers, a heavier
L_sharers (`lambda_sharers` 300, 1000), stage 2 on fewer blocks (`deep_layers`) and stage 2 kept on until its
condition has held 100 steps in a row (`deep_steps` 100, not 3); and `sae_guided_tar` with its
defaults ("relearning attacker": stage 3 against a simulated relearning attacker) and with a lighter attacker term
(`lambda_relearn` 1 with `relearn_tolerance` 0.25, or 0.15 and `max_steps` 400) — `--settings`: some of them.
Columns: retain (the held-out name-sharers' mean and worst apart), perplexity ratio, forgetting, membership AUC,
forced choice, key restoration (worst layer), steps, why the run stopped and seconds; with `--relearn`, relearning
attacks (a) half the facts and (b) one fact at 25 and 100 steps (attacker's best lr) for the edit and for a
stranger taught the same facts. Writes analysis/results/deep_ablation.md and deep_ablation_runs.csv
(`deep_ablation_<N>targets.*` for `--targets` other than 5, `_<tag>` appended with `--tag`) after every run, so
an interrupted run keeps what it finished (its table says how many rows of how many); `--resume` skips the
(seed, setting) rows already in the runs CSV.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from tables import markdown
from world_runs import WorldRuns

from irunlearn.world.tasks import resolve_targets

RESULTS = Path(__file__).parent / "results"
SETTINGS = {
    "shipped": {},
    "lambda_neighbours 0": {"lambda_neighbours": 0.0},
    "lambda_choice 0": {"lambda_choice": 0.0},
    "lambda_name 0": {"lambda_name": 0.0},
    "lambda_neighbours_deep 0": {"lambda_neighbours_deep": 0.0},
    "prefix sharers only": {"sharer_parts": ("prefix",)},
    "both off": {"lambda_neighbours_deep": 0.0, "sharer_parts": ("prefix",)},
    "lambda_sharers 300": {"lambda_sharers": 300.0},
    "lambda_sharers 1000": {"lambda_sharers": 1000.0},
    "deep_layers (2, 3)": {"deep_layers": (2, 3)},
    "deep_layers (3,)": {"deep_layers": (3,)},
    "deep_steps 100": {"deep_steps": 100},
    "found sharers": {"find_sharers": True},
    "relearning attacker, found sharers": {"method": "sae_guided_tar", "find_sharers": True},
    "relearning attacker": {"method": "sae_guided_tar"},
    "relearning attacker, lambda_relearn 1": {
        "method": "sae_guided_tar",
        "lambda_relearn": 1.0,
        "relearn_tolerance": 0.25,
    },
    "relearning attacker, lambda_relearn 1, tolerance 0.15": {
        "method": "sae_guided_tar",
        "lambda_relearn": 1.0,
        "relearn_tolerance": 0.15,
        "max_steps": 400,
    },
}
RELEARN_COLUMNS = tuple(
    f"relearn_{attack}_{k}{who}" for attack in ("half", "one_fact") for k in (25, 100) for who in ("", "_stranger")
)
COLUMNS = (
    "retain_acc",
    "retain_sharers",
    "retain_sharers_min",
    "ppl_ratio",
    "forget_acc",
    "idk_rate",
    "probe_p_known_sae",
    "probe_p_known_resid",
    "membership_auc",
    "forced_choice",
    "forced_choice_stranger",
    "key_restoration",
    "steps",
    "stop_reason",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--tag", help="appended to the results' file names, so another run's files are kept")
    parser.add_argument(
        "--relearn", action="store_true", help="add relearning attacks (a) and (b) (`relearn_ab`), with a stranger's"
    )
    parser.add_argument("--resume", action="store_true", help="skip the (seed, setting) rows already in the runs CSV")
    args = parser.parse_args()
    name = "deep_ablation" if args.targets == 5 else f"deep_ablation_{args.targets}targets"
    name = f"{name}_{args.tag}" if args.tag else name
    runs_path = RESULTS / f"{name}_runs.csv"
    rows = pd.read_csv(runs_path).to_dict("records") if args.resume and runs_path.exists() else []
    done = {(row["seed"], row["setting"]) for row in rows}
    todo = [(seed, label) for seed in args.seeds for label in args.settings if (seed, label) not in done]
    runs = WorldRuns.load()
    metrics = ["membership_auc", "forced_choice", "sharer_retain", "key_restoration"] + ["relearn_ab"] * args.relearn
    for seed, label in todo:
        targets = [t.name for t in resolve_targets(runs.world, n_random=args.targets, seed=seed)]
        overrides = dict(SETTINGS[label])
        results = runs.score(overrides.pop("method", "sae_guided_deep"), targets, metrics, **overrides)
        summary = results.summary.iloc[0]
        rows.append(
            {
                "seed": seed,
                "setting": label,
                **{c: summary[c] for c in COLUMNS + RELEARN_COLUMNS * args.relearn},
                "seconds": summary["seconds"],
            }
        )
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
        write(name, pd.DataFrame(rows), args.targets, len(done) + len(todo))


def write(name: str, table: pd.DataFrame, n_targets: int, n_rows: int) -> None:
    """The runs CSV and the markdown table, the latter saying how many of the `n_rows` runs it holds."""
    RESULTS.mkdir(exist_ok=True)
    command = " ".join(["python analysis/deep_ablation.py", *sys.argv[1:]])
    partial = "" if len(table) >= n_rows else f"Partial: {len(table)} of {n_rows} runs (interrupted or running).\n\n"
    table.to_csv(RESULTS / f"{name}_runs.csv", index=False)
    (RESULTS / f"{name}.md").write_text(
        f"# sae_guided_deep, one term off at a time: `{command}`\n\n"
        f"{n_targets} known people forgotten together per seed (tuning draws), through `irunlearn.run`.\n\n"
        + partial
        + markdown(table)
    )


if __name__ == "__main__":
    main()
