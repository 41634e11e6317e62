"""The SAE-guided acceptance runs, exactly as a user would type them:

    irunlearn forget --random-targets 1 --seed S --json      for S = 0, 1, 2
    irunlearn forget --random-targets 5 --seed 0 --json      (5 targets forgotten together)

    python analysis/forget_acceptance.py [--method sae_guided]

Writes analysis/results/forget_acceptance_<method>.md with one row per run and per target.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from tables import markdown

RESULTS = Path(__file__).parent / "results"
RUNS = [(1, 0), (1, 1), (1, 2), (5, 0)]
SUMMARY = [
    "forget_acc",
    "idk_rate",
    "paraphrase_forget_acc",
    "retain_acc",
    "ppl_ratio",
    "probe_p_known_sae",
    "probe_p_known_resid",
    "dist_ratio",
    "steps",
    "seconds",
    "stop_reason",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="sae_guided")
    args = parser.parse_args()
    irunlearn = Path(sys.executable).with_name("irunlearn")
    runs, targets = [], []
    for n, seed in RUNS:
        command = [
            str(irunlearn),
            "forget",
            "--random-targets",
            str(n),
            "--seed",
            str(seed),
            "--method",
            args.method,
            "--json",
            "--quiet",
        ]
        out = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        runs.append({"targets": n, "seed": seed, **{k: out[k] for k in SUMMARY}})
        targets += [{"run": f"{n} target(s), seed {seed}", **row} for row in out["per_target"]]
        print(runs[-1], flush=True)
    per_target = pd.DataFrame(targets)[
        [
            "run",
            "target",
            "forget_acc",
            "idk_rate",
            "paraphrase_forget_acc",
            "probe_p_known_sae",
            "probe_p_known_resid",
            "dist_ratio",
        ]
    ]
    text = (
        f"# `{args.method}` acceptance runs (embedded world)\n\nProduced by "
        f"`python analysis/forget_acceptance.py --method {args.method}`.\n\n"
        + markdown(pd.DataFrame(runs))
        + "\n## Per target\n\n"
        + markdown(per_target)
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"forget_acceptance_{args.method}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
