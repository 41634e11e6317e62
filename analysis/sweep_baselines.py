"""Fair baselines: for each suppression method, the learning rate that forgets a validation target
(`forget_acc ≤ 0.05`) with the best `retain_acc`.

    python analysis/sweep_baselines.py

The validation target is drawn with seed 100 (disjoint from the comparison seeds 0, 1, 2 with high
probability). Writes analysis/results/sweep_baselines.md; the chosen values are the defaults in
`irunlearn/methods/<method>.py`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from tables import markdown

import irunlearn
from irunlearn import EntityBench, load_world
from irunlearn.world.recognition import recognize_world
from irunlearn.world.tasks import resolve_targets

RESULTS = Path(__file__).parent / "results"
SHOWN = ("stop_reason", "steps", "forget_acc", "retain_acc", "ppl_ratio", "probe_p_known_sae")
GRID = {
    "grad_ascent": [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)],
    "grad_diff": [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)],
    "npo": [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)],
    "rmu": [{"lr": lr, "steering_coef": c} for lr in (3e-4, 1e-3, 3e-3) for c in (1.0, 4.0)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(GRID), help="comma-separated subset of the grid")
    args = parser.parse_args()
    ew = load_world()
    recognizer, _ = recognize_world(ew, progress=False)
    bench = EntityBench.from_world(ew)
    target = resolve_targets(ew, n_random=1, seed=100)[0]
    rows = []
    for method, grid in ((m, GRID[m]) for m in args.methods.split(",")):
        for settings in grid:
            results = irunlearn.run(
                bench, ew.model, ew.sae, [method], [target.name], recognizer=recognizer, genuineness=False,
                progress=False, **settings,
            )  # fmt: skip
            summary = results.summary.iloc[0]
            rows.append({"method": method, **settings} | {key: summary[key] for key in SHOWN})
            print(rows[-1], flush=True)
    sweep = pd.DataFrame(rows)
    ok = sweep[sweep["forget_acc"] <= 0.05]
    best = ok.loc[ok.groupby("method")["retain_acc"].idxmax()] if len(ok) else ok
    RESULTS.mkdir(exist_ok=True)
    text = (
        f"# Baseline sweep (validation target {target.name!r})\n\n"
        + markdown(sweep)
        + "\n\n## Chosen (forget_acc ≤ 0.05, best retain_acc)\n\n"
        + markdown(best)
        + "\n"
    )
    (RESULTS / "sweep_baselines.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
