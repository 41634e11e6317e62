"""Which SAE sparsity gives separable known/unknown latents? The world's SAE retrained at several TopK k.

    python analysis/sweep_sae_k.py [--k 8,16,24,32] [--seeds 0] [--extra 16:1]

For each (k, seed): a TopK SAE (1,024 latents) is trained on the shipped world model's
`blocks.2.hook_resid_post` exactly as `irunlearn world build --sae-only` would, kept in memory (the shipped
artifacts are not touched), and recognition is fitted on it as `irunlearn recognize` does. Reports the best
known / unknown separation scores (with the firing rates behind the unknown one), held-out probe AUROCs and
SAE fidelity. Writes analysis/results/sweep_sae_k.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd
import torch
from tables import markdown

from irunlearn import load_world
from irunlearn.world.recognition import recognize_world
from irunlearn.world.stats import sae_quality
from irunlearn.world.train_sae import SAETrainConfig, train_sae

RESULTS = Path(__file__).parent / "results"


def measure(ew, k: int, seed: int) -> dict:
    start = time.perf_counter()
    sae = train_sae(ew.model, ew.world, SAETrainConfig(k=k, seed=seed), progress=False)
    train_seconds = time.perf_counter() - start
    variant = dataclasses.replace(ew, sae=sae)
    recognizer, _ = recognize_world(variant, progress=False)
    best_unknown = recognizer.top_latents("unknown").iloc[0]
    quality = sae_quality(ew.model, sae, ew.world)
    return {
        "k": k,
        "seed": seed,
        "top_known_score": recognizer.metrics["top_known_score"],
        "top_unknown_score": recognizer.metrics["top_unknown_score"],
        "unknown_latent": int(best_unknown["latent"]),
        "its_freq_unknown": best_unknown["freq_unknown"],
        "its_freq_known": best_unknown["freq_known"],
        "probe_auroc_sae": recognizer.metrics["probe_auroc_sae"],
        "probe_auroc_resid": recognizer.metrics["probe_auroc_resid"],
        "sae_fvu": quality["sae_fvu"],
        "sae_dead_frac": quality["sae_dead_frac"],
        "train_seconds": train_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="8,16,24,32", help="TopK values, comma-separated")
    parser.add_argument("--seeds", default="0", help="SAE seeds for every k, comma-separated")
    parser.add_argument("--extra", default="16:1", help="further k:seed pairs, comma-separated ('' for none)")
    args = parser.parse_args()
    runs = [(int(k), int(s)) for k in args.k.split(",") for s in args.seeds.split(",")]
    runs += [tuple(map(int, pair.split(":"))) for pair in args.extra.split(",") if pair]
    ew = load_world()
    rows = []
    for k, seed in runs:
        rows.append(measure(ew, k, seed))
        scores = f"unknown {rows[-1]['top_unknown_score']:.3f}, known {rows[-1]['top_known_score']:.3f}"
        print(f"k={k} seed={seed}: {scores}", flush=True)
    shipped = ew.build_info["config"]["sae"]
    text = "\n".join(
        [
            "# SAE sparsity vs known/unknown latent separation (embedded world)",
            "",
            f"{torch.get_num_threads()} torch thread(s), CPU. Model: the shipped world model; each SAE: TopK, "
            f"{shipped['d_sae']} latents at `{shipped['hook_name']}`, {shipped['training_tokens']:,} tokens. "
            f"Shipped SAE: k = {shipped['k']}, seed {shipped['seed']}. "
            "Produced by `python analysis/sweep_sae_k.py`.",
            "",
            markdown(pd.DataFrame(rows)),
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sweep_sae_k.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
