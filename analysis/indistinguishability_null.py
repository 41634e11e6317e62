"""What `indistinguishability` gives a target that truly is a stranger: the metric's spread for one name.

    python analysis/indistinguishability_null.py [--seed 0]

Each of the evaluator's strangers (unknown names never seen in training), scored on the original model as if
it were the one target of a task and compared with the other strangers (leave one out): 1 − 2·|AUROC − 0.5|
of the probes telling it from them, as `indistinguishability_metric` computes it. A target is a whole person
whose rows (one per template) move together, so a single genuine stranger lands anywhere in the strangers'
range: the table gives the distribution a forgotten single target should be compared with. Writes
analysis/results/indistinguishability_null.md.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pandas as pd
from tables import markdown

from irunlearn import load_world
from irunlearn.evaluation import indistinguishability_metric
from irunlearn.world.recognition import recognize_world
from irunlearn.world.tasks import resolve_targets, world_evaluator, world_task

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ew = load_world()
    recognizer = recognize_world(ew, progress=False)[0]
    task = world_task(ew, resolve_targets(ew, n_random=1, seed=args.seed), recognizer)
    evaluator = world_evaluator(ew, task)
    strangers, rows = evaluator.unknown_reference, []
    for i, stranger in enumerate(strangers):
        others = strangers[:i] + strangers[i + 1 :]
        values = indistinguishability_metric(
            replace(evaluator, targets=[stranger], unknown_reference=others), ew.model
        ).values
        rows.append({"name": stranger.name, **values})
    runs = pd.DataFrame(rows)
    columns = ["indistinguishability", "indistinguishability_resid"]
    quantiles = runs[columns].quantile([0.1, 0.25, 0.5, 0.75, 0.9]).rename_axis("quantile").reset_index()
    share = {c: float((runs[c] >= 0.8).mean()) for c in columns}
    text = "\n".join(
        [
            "# Indistinguishability of genuine strangers: `python analysis/indistinguishability_null.py`",
            "",
            f"Each of the evaluator's {len(runs)} strangers (task seed {args.seed}) scored on the original model as "
            "the one target of a task against the other strangers.",
            "",
            markdown(quantiles),
            "",
            f"Mean: SAE probe {runs[columns[0]].mean():.2f}, residual probe {runs[columns[1]].mean():.2f}. "
            f"Share at or above 0.8: SAE {share[columns[0]]:.2f}, residual {share[columns[1]]:.2f}.",
        ]
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "indistinguishability_null.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
