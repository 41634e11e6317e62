"""Control retrains for the oracles' perplexity gap: the world retrained without 5 other people, and with
nothing removed.

    python analysis/oracle_control.py [--size 5] [--seed 21] [--out /tmp/irunlearn-control]

forget05 / forget10's oracles read +5.3 % / +6.0 % generic perplexity against the shipped world (bound: 2 %).
Is that the forget set's lines, or retraining noise? Two controls: (1) the world's own model retrained from
its build config and seed with nothing removed (`rebuild`), exactly as `irunlearn world build` trains it:
how far the build lands from the shipped model by itself, and whether it gives back the shipped weights;
(2) this copies the shipped world to `--out`, adds a forget set `control{size}` of `--size` known people
drawn with `--seed` outside the evaluator's retain people and every standard forget set, builds its oracle
exactly as `irunlearn world build --forget-set` does. Both are written next to the shipped oracles'
acceptance figures to analysis/results/oracle_control.md, with each retrain's wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
from tables import markdown

from irunlearn import load_world
from irunlearn.lm import perplexity
from irunlearn.world.artifacts import DEFAULT_ARTIFACTS, ORACLE_DIR, EmbeddedWorld, write_manifest
from irunlearn.world.oracle import build_oracle, load_oracle, oracle_acceptance, retrain_model
from irunlearn.world.stats import qa_accuracy

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--out", type=Path, default=Path("/tmp/irunlearn-control"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    ew = load_world()
    rebuild = world_rebuild(ew, progress=not args.quiet)
    taken = {e.name for e in ew.world.retain_eval_people()} | {n for s in ew.world.forget_sets.values() for n in s}
    pool = sorted(e.name for e in ew.world.known if e.name not in taken)
    name = f"control{args.size:02d}"
    control = random.Random(args.seed).sample(pool, args.size)
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(DEFAULT_ARTIFACTS, args.out, ignore=shutil.ignore_patterns(ORACLE_DIR))
    data = json.loads((args.out / "world.json").read_text())
    data["forget_sets"][name] = control
    (args.out / "world.json").write_text(json.dumps(data))
    write_manifest(args.out)
    start = time.perf_counter()
    build_oracle(name, args.out, progress=not args.quiet)
    wall = time.perf_counter() - start
    world = load_world(args.out)
    rows = [
        rebuild,
        {
            "oracle": name,
            "people": ", ".join(control),
            **oracle_acceptance(world, load_oracle(name, world)),
            "retrain_s": wall,
        },
    ]
    for shipped in ew.world.forget_sets:
        rows.append({"oracle": shipped, "people": "", **oracle_acceptance(ew, load_oracle(shipped, ew))})
    table = pd.DataFrame(rows)
    text = (
        f"# Oracle control retrains\n\n`python analysis/oracle_control.py --size {args.size} --seed {args.seed}`: "
        f"the world's model retrained from its own build config and seed with nothing removed (`rebuild`; "
        f"`weights_equal_world`: whether that gives back the shipped weights) and the world retrained without "
        f"{args.size} other people ({name}), next to the shipped oracles. `retrain_s`: wall time of each "
        "retrain (model only for `rebuild`; model, SAE and recognizer for the control oracle).\n\n" + markdown(table)
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "oracle_control.md").write_text(text)
    print(text)


def world_rebuild(ew: EmbeddedWorld, progress: bool) -> dict:
    """The world's model retrained from its own build config and seed, nothing removed (`retrain_model`);
    its acceptance figures against the shipped model (the figures an oracle is held to)."""
    start = time.perf_counter()
    model, _ = retrain_model(ew, progress=progress)
    wall = time.perf_counter() - start
    shipped = ew.model.state_dict()
    return {
        "oracle": "rebuild",
        "people": "(nothing removed)",
        "known_qa_acc": qa_accuracy(model, ew.world, ew.world.known, "train"),
        "world_known_qa_acc": qa_accuracy(ew.model, ew.world, ew.world.known, "train"),
        "generic_ppl": perplexity(model, ew.world.generic_heldout),
        "world_generic_ppl": perplexity(ew.model, ew.world.generic_heldout),
        "weights_equal_world": all(torch.equal(v, shipped[k]) for k, v in model.state_dict().items()),
        "retrain_s": wall,
    }


if __name__ == "__main__":
    main()
