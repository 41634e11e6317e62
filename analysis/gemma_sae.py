"""Train the shipped Gemma 3 270M SAE with SAELens's runner on people-dense local text, or estimate its cost.

    .venv/bin/python analysis/gemma_sae.py --estimate              # tokens/CPU-s to the hook, one thread
    .venv/bin/python analysis/gemma_sae.py --layer 6 --tokens 1000000

The text is `sae_documents`: fact sentences and few-shot questions about the famous people (each repeated
`--people-repeats` times, so that famous names are frequent) and the shared Wikidata players and cities,
plus generic prose. The SAE is a TopK SAE on `blocks.<layer>.hook_resid_post`, trained on activations
scaled to a fixed average norm and saved in float16 to `irunlearn/real/artifacts/gemma3_270m_sae` with
`training.json` (FVU on all tokens and at the names' last tokens in held-out person prompts, L0, dead
fraction, tokens, wall and CPU time). Run it in the background with `nice`; it prints the runner's
progress.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import torch

from irunlearn.activations import forward_to_hook
from irunlearn.models import load_model
from irunlearn.real import fixture
from irunlearn.real.people import load_people, person_templates
from irunlearn.real.sae import GEMMA3_SAE, pack_documents, sae_documents, train_real_sae
from irunlearn.real.wikidata import load_entities


def documents(model, n_tokens: int, people_repeats: int, seed: int) -> list[str]:
    return sae_documents(
        n_tokens,
        model.tokenizer,
        kinds=("player", "city"),
        question_share=0.4,
        seed=seed,
        extra_entities=load_people(),
        extra_repeats=people_repeats,
    )


@torch.no_grad()
def estimate(model, layer: int, seed: int) -> dict:
    """Tokens per CPU-second to `layer` (16 packed rows of 128 tokens), and residual norms there."""
    rows = pack_documents(model.tokenizer, documents(model, 4000, 1, seed), 128, bos=True)["tokens"][:16]
    tokens = torch.tensor(rows)
    hook = f"blocks.{layer}.hook_resid_post"
    forward_to_hook(model, tokens[:2], hook)  # warm-up
    start = time.process_time()
    resid = forward_to_hook(model, tokens, hook)
    cpu = time.process_time() - start
    norms = resid[:, 1:].norm(dim=-1)
    return {
        "hook": hook,
        "tokens_per_cpu_second": tokens.numel() / cpu,
        "bos_norm": float(resid[:, 0].norm(dim=-1).mean()),
        "median_norm": float(norms.median()),
        "max_norm": float(norms.max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--people-repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--estimate", action="store_true", help="only measure throughput to --layer")
    parser.add_argument("--force", action="store_true", help="replace an existing SAE folder")
    args = parser.parse_args(argv)
    if fixture.gemma3_path() is None:
        print("Gemma fixture absent: run `make real-fixture` first.", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model = load_model("gemma3-270m")
    if args.estimate:
        print(json.dumps(estimate(model, args.layer, args.seed), indent=2))
        return 0
    people = load_people()
    players = random.Random(args.seed).sample(load_entities("player"), len(people))
    _, figures = train_real_sae(
        model,
        f"blocks.{args.layer}.hook_resid_post",
        GEMMA3_SAE,
        training_tokens=args.tokens,
        d_sae=args.d_sae,
        k=args.k,
        lr=args.lr,
        normalize_activations="expected_average_only_in",
        seed=args.seed,
        documents=documents(model, int(1.1 * args.tokens), args.people_repeats, args.seed),
        figure_entities=people + players,
        figure_templates=person_templates("heldout"),
        save_dtype=torch.float16,
        overwrite=args.force,
    )
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
