"""How much of a person's answers rides on each part of their name's block-0 state (why last-word virtual sharers).

    python analysis/name_part_swap.py [--people 80] [--shift 7]

For `--people` retain people of a tuning task (seed 100) whose names are two one-token words, each of their
fact questions in one attribute is answered by the original world model with the residual after block 0
(`blocks.0.hook_resid_post`) at their first name, their last name, or both replaced by another person's
there (the person `--shift` places on in the list, in their own line of the same template): the fraction of
answers that stay the person's own and the fraction that become the other person's. Writes
analysis/results/name_part_swap.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from tables import markdown

from irunlearn import load_world
from irunlearn.activations import patched_logits
from irunlearn.methods.sae_guided_deep import NamedFacts
from irunlearn.world.recognition import recognize_world
from irunlearn.world.tasks import resolve_targets, world_task

RESULTS = Path(__file__).parent / "results"
HOOK = "blocks.0.hook_resid_post"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=80)
    parser.add_argument("--shift", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ew = load_world()
    model = ew.model
    task = world_task(ew, resolve_targets(ew, n_random=1, seed=100), recognize_world(ew, progress=False)[0])
    people = [e for e in task.retain if model.to_tokens(" " + e.name, prepend_bos=False).shape[1] == 2]
    facts = task.facts(people[: args.people])
    facts = facts[facts["attribute"] == facts["attribute"].iloc[0]].reset_index(drop=True)
    donor = torch.roll(torch.arange(len(facts)), args.shift).tolist()  # same template, another person
    own = NamedFacts.build(model, facts)
    theirs = NamedFacts.build(model, facts.assign(answer=facts["answer"].iloc[donor].to_numpy()))
    with torch.no_grad():
        _, cache = model.run_with_cache(own.batch.tokens, names_filter=[HOOK])
        states = cache[HOOK][own.name_rows, own.name_cols]
        keys = zip(own.name_rows.tolist(), own.name_offsets.tolist(), strict=True)
        position = {key: i for i, key in enumerate(keys)}  # (line, offset from the name's end) -> its state
        rows = []
        for part, offsets in {"first name": (1,), "last name": (0,), "both": (0, 1)}.items():
            swap = torch.isin(own.name_offsets, torch.tensor(offsets))
            values = states[
                [
                    position[(donor[r], o)]
                    for r, o in zip(own.name_rows[swap].tolist(), own.name_offsets[swap].tolist(), strict=True)
                ]
            ]
            logits = patched_logits(model, own.batch.tokens, HOOK, own.name_rows[swap], own.name_cols[swap], values)
            rows.append(
                {
                    "swapped": part,
                    "own_answer": own.batch.greedy_hits(logits).float().mean().item(),
                    "other_persons_answer": theirs.batch.greedy_hits(logits).float().mean().item(),
                }
            )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "name_part_swap.md").write_text(
        "# Swapping a part of the name's block-0 state: `python analysis/name_part_swap.py`\n\n"
        f"{len(facts)} questions ({facts['attribute'].iloc[0]}) of {facts['entity'].nunique()} retain people with "
        "two one-token name words; the original world model, answers greedy.\n\n" + markdown(table)
    )


if __name__ == "__main__":
    main()
