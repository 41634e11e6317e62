"""The full comparison table: every method, 5 random targets forgotten together, seeds 0, 1, 2.

    python analysis/compare_methods.py [--targets 5] [--seeds 0,1,2] [--max-steps N] [--results DIR] [--out DIR]

Writes compare_methods.md (mean ± std per method) and compare_runs.csv (every run) into `--results`
(default analysis/results); with
`--out`, the whole run folder too (`irunlearn report --from DIR` renders it). `--max-steps` caps every
method's steps (a quick check; the shipped table uses each method's own budget).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

import irunlearn
from irunlearn.bench import EntityBench
from irunlearn.comparison import BATTERY_COLUMNS, COST_COLUMNS, summarise
from irunlearn.methods import METHODS

RESULTS = Path(__file__).parent / "results"
COLUMNS = [*BATTERY_COLUMNS, *COST_COLUMNS]


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
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    ew = irunlearn.load_world()
    overrides = {} if args.max_steps is None else {"max_steps": args.max_steps}
    results = irunlearn.run(
        EntityBench.from_world(ew),
        ew.model,
        ew.sae,
        list(METHODS),
        n_targets=args.targets,
        seeds=seeds,
        progress=not args.quiet,
        **overrides,
    )
    if args.out:
        results.save(args.out)
    runs, table = results.summary, summarise(results.summary)
    args.results.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.results / "compare_runs.csv", index=False)
    text = (
        f"# Method comparison (embedded world)\n\n{args.targets} random known people forgotten together per seed, "
        f"seeds {args.seeds}; mean ± std over seeds. Produced by `python analysis/compare_methods.py` in "
        f"{(time.perf_counter() - start) / 60:.0f} minutes of wall time.\n\n" + mean_std_table(table)
    )
    (args.results / "compare_methods.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
