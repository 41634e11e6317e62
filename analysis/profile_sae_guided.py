"""Where `sae_guided`'s time goes: cProfile of one forgetting run, 1 target and 10 together.

    python analysis/profile_sae_guided.py [--targets 1,10] [--seed 0] [--method sae_guided_deep]

For each run: wall time and steps, then the functions with the largest cumulative time (irunlearn's own
and torch's backward / optimiser step), with their share of the run and seconds per step. Writes
analysis/results/profile_sae_guided.md (`profile_sae_guided_deep.md` with `--method sae_guided_deep`, whose
stage-2 phases are listed too).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
from pathlib import Path

import pandas as pd
import torch
from tables import markdown

from irunlearn import load_world
from irunlearn.methods import forget
from irunlearn.world.recognition import recognize_world
from irunlearn.world.tasks import resolve_targets, world_task

RESULTS = Path(__file__).parent / "results"
# (label, file fragment, function name): the phases of one optimisation step and of setup
PHASES = [
    ("whole run", "irunlearn/methods/base.py", "_optimise"),
    ("setup (fixed quantities)", "irunlearn/methods/sae_guided.py", "setup"),
    ("step: all loss terms", "irunlearn/methods/sae_guided.py", "step"),
    ("  entity rows to the hook", "irunlearn/activations.py", "forward_to_hook"),
    ("  SAE encode", "sae_lens/saes/topk_sae.py", "encode"),
    ("  context distances", "irunlearn/methods/sae_guided.py", "_question_distances"),
    ("  retain KL (full forward)", "irunlearn/methods/base.py", "kl_to_reference"),
    ("  probe readings", "irunlearn/methods/base.py", "latent_readings"),
    ("backward", "torch/_tensor.py", "backward"),
    ("optimiser step", "torch/optim/adam.py", "step"),
    ("weight snapshot (rollback)", "irunlearn/methods/params.py", "snapshot"),
    ("deep: whole setup (sae_guided's setup above included)", "irunlearn/methods/sae_guided_deep.py", "setup"),
    ("  made-up neighbours (L_nbr)", "irunlearn/methods/sae_guided.py", "made_up_neighbours"),
    ("  stage 2's line sets (questions, virtual sharers, values)", "irunlearn/methods/sae_guided_deep.py", "build"),
    ("deep: stage-2 steps", "irunlearn/methods/sae_guided_deep.py", "_deep_step"),
    ("HookedTransformer.forward (all calls)", "transformer_lens/HookedTransformer.py", "forward"),
]


def profile_run(ew, recognizer, n_targets: int, seed: int, method: str) -> tuple[dict, pd.DataFrame]:
    task = world_task(ew, resolve_targets(ew, n_random=n_targets, seed=seed), recognizer)
    profiler = cProfile.Profile()
    profiler.enable()
    result = forget(ew.model, ew.sae, task, method=method, seed=seed, progress=False)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, func): (calls, ncalls, tottime, cumtime, callers)}
    total = next(v[3] for k, v in stats.items() if k[2] == "_optimise")
    rows = []
    for label, fragment, name in PHASES:
        hits = [v for k, v in stats.items() if k[0].endswith(fragment) and k[2] == name]
        seconds = sum(v[3] for v in hits)
        calls = sum(v[1] for v in hits)
        rows.append(
            {
                "phase": label,
                "calls": calls,
                "seconds": seconds,
                "share": seconds / total,
                "seconds_per_step": seconds / max(result.steps, 1),
            }
        )
    summary = {
        "targets": n_targets,
        "steps": result.steps,
        "stop_reason": result.stop_reason,
        "seconds": result.seconds,
        "seconds_per_step": result.seconds / max(result.steps, 1),
    }
    return summary, pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="1,10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="sae_guided", choices=["sae_guided", "sae_guided_deep"])
    args = parser.parse_args()
    ew = load_world()
    recognizer, _ = recognize_world(ew, progress=False)
    summaries, sections = [], []
    for n in (int(v) for v in args.targets.split(",")):
        summary, phases = profile_run(ew, recognizer, n, args.seed, args.method)
        if args.method == "sae_guided":  # the deep method's phases do not run
            phases = phases[~phases["phase"].str.startswith(("deep", "  made-up", "  stage 2"))]
        summaries.append(summary)
        sections += [f"## {n} target(s)", "", markdown(phases)]
    text = "\n".join(
        [
            f"# Profile of {args.method} (embedded world, cProfile)",
            "",
            f"{torch.get_num_threads()} torch thread(s), CPU. Produced by `python analysis/profile_sae_guided.py"
            + ("" if args.method == "sae_guided" else f" --method {args.method}")
            + "`. "
            "Cumulative times overlap (a phase includes the ones indented under it); cProfile slows Python-heavy "
            "code more than torch kernels.",
            "",
            markdown(pd.DataFrame(summaries)),
            *sections,
        ]
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"profile_{args.method}.md").write_text(text)


if __name__ == "__main__":
    main()
