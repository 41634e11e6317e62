"""The full comparison table: every method, 5 random targets forgotten together, seeds 0, 1, 2.

    python analysis/compare_methods.py [--targets 5] [--seeds 0,1,2]

Writes analysis/results/compare_methods.md (mean ± std per method) and compare_runs.csv (every run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from irunlearn.world.comparison import compare_world

RESULTS = Path(__file__).parent / "results"
COLUMNS = [
    "forget_acc",
    "paraphrase_forget_acc",
    "idk_rate",
    "retain_acc",
    "probe_p_known_sae",
    "probe_p_known_resid",
    "dist_ratio",
    "indistinguishability",
    "indistinguishability_resid",
    "ppl_ratio",
    "generation_health",
    "repetition_rate",
    "relearn_acc",
    "relearn_acc_unknown_ref",
    "steps",
    "seconds",
]


def mean_std_table(table: pd.DataFrame) -> str:
    """Methods as rows, `mean ± std` cells."""
    lines = ["| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row in table.itertuples(index=False):
        row = row._asdict()
        cells = [f"{row[c]:.3g} ± {row[c + '_std']:.2g}" for c in COLUMNS]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs, table = compare_world(n_targets=args.targets, seeds=seeds, progress=not args.quiet)
    RESULTS.mkdir(exist_ok=True)
    runs.to_csv(RESULTS / "compare_runs.csv", index=False)
    text = (
        f"# Method comparison (embedded world)\n\n{args.targets} random known people forgotten together per seed, "
        f"seeds {args.seeds}; mean ± std over seeds. Produced by `python analysis/compare_methods.py`.\n\n"
        + mean_std_table(table)
    )
    (RESULTS / "compare_methods.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
