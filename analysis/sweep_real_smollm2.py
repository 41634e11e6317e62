"""Learning-rate sweep of `grad_ascent` on SmolLM2 for a fair real-model baseline; writes
analysis/results/sweep_real_smollm2.md.

    .venv/bin/python analysis/sweep_real_smollm2.py

The validation target is a known city eligible as a target (`choose_targets`) but not one of the three
that `analysis/real_smollm2.py` forgets. For each learning rate, `grad_ascent` runs to its own stop rule
(no training answer left) or 30 steps; the chosen rate is the one reaching `forget_acc ≤ 0.05` with the best
`retain_acc`, as for the embedded world's baselines (`analysis/sweep_baselines.py`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from tables import markdown

from irunlearn.models import load_sae
from irunlearn.real import fixture
from irunlearn.real.pipeline import RealPipelineConfig, choose_targets, label_cities, recognise, run_real_pipeline
from irunlearn.real.sae import SMOLLM2_SAE

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = [
    "lr",
    "stop_reason",
    "steps",
    "forget_acc_after",
    "idk_rate_after",
    "probe_p_known_sae_after",
    "probe_p_known_resid_after",
    "retain_acc_before",
    "retain_acc_after",
    "ppl_ratio",
    "seconds",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", default="1e-5,3e-5,1e-4,3e-4,1e-3")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if fixture.smollm2_path() is None:
        print("SmolLM2 fixture absent: run `python -m irunlearn.real.fixture` first.", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model, sae = fixture.load_smollm2(), load_sae(path=SMOLLM2_SAE)
    entities, answers = label_cities(model, seed=args.seed, progress=False)
    config = RealPipelineConfig(seed=args.seed, methods=("grad_ascent",))
    recognizer = recognise(model, sae, entities, top_k=config.top_k, seed=args.seed, progress=False)
    tested = {e.name for e in choose_targets(model, sae, recognizer, entities, answers, config.n_targets, args.seed)}
    pool = choose_targets(model, sae, recognizer, entities, answers, config.n_targets + 1, args.seed)
    validation = next(e for e in pool if e.name not in tested)
    rows = []
    for lr in (float(v) for v in args.lrs.split(",")):
        config.method_overrides["grad_ascent"] = {"lr": lr, "max_steps": args.max_steps}
        result = run_real_pipeline(
            model, sae, entities, answers, config, progress=False, recognizer=recognizer, targets=[validation]
        )
        rows.append(result.runs.assign(lr=lr).iloc[0])
        print(rows[-1][COLUMNS].to_dict(), flush=True)
    sweep = pd.DataFrame(rows)[COLUMNS]
    reached = sweep[sweep["forget_acc_after"] <= 0.05]
    best = reached.sort_values("retain_acc_after", ascending=False).head(1)
    text = (
        f"# grad_ascent learning-rate sweep on SmolLM2 (validation city {validation.name!r})\n\n"
        f"Produced by `python analysis/sweep_real_smollm2.py`; MLPs of the {config.layer_window} layers up to "
        "the SAE's, stop when no training answer is left or at max_steps.\n\n"
        + markdown(sweep)
        + "\n## Chosen (forget_acc ≤ 0.05, best retain_acc)\n\n"
        + (markdown(best) if len(best) else "None of the rates reached forget_acc ≤ 0.05.\n")
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sweep_real_smollm2.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
