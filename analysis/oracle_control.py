"""A control retrain for the oracles' perplexity gap: the world retrained without 5 other people.

    python analysis/oracle_control.py [--size 5] [--seed 21] [--out /tmp/irunlearn-control]

forget05 / forget10's oracles read +5.3 % / +6.0 % generic perplexity against the shipped world (bound: 2 %).
Is that the forget set's lines, or retraining noise (dropping any lines shifts every later batch of the
training stream)? This copies the shipped world to `--out`, adds a forget set `control{size}` of `--size`
known people drawn with `--seed` outside the evaluator's retain people and every standard forget set,
builds its oracle exactly as `irunlearn world build --forget-set` does, and writes the oracle's acceptance
figures next to the shipped oracles' to analysis/results/oracle_control.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import pandas as pd
from tables import markdown

from irunlearn import load_world
from irunlearn.world.artifacts import DEFAULT_ARTIFACTS, ORACLE_DIR, write_manifest
from irunlearn.world.oracle import build_oracle, load_oracle, oracle_acceptance

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--out", type=Path, default=Path("/tmp/irunlearn-control"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    ew = load_world()
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
    rows = [{"oracle": name, "people": ", ".join(control), **oracle_acceptance(world, load_oracle(name, world))}]
    for shipped in ew.world.forget_sets:
        rows.append({"oracle": shipped, "people": "", **oracle_acceptance(ew, load_oracle(shipped, ew))})
    table = pd.DataFrame(rows)
    text = (
        f"# Oracle control retrain\n\n`python analysis/oracle_control.py --size {args.size} --seed {args.seed}`: "
        f"the world retrained without {args.size} other people ({name}), built in {wall:.0f} s of wall time, "
        "next to the shipped oracles.\n\n" + markdown(table)
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "oracle_control.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
