"""Entity-token extraction throughput: irunlearn's `extract_activations` vs a plain full `run_with_cache`.

    python analysis/bench_extract.py [--n-entities 200] [--smollm2]

Prints a markdown table and writes it to analysis/results/bench_extract.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from tables import markdown

from irunlearn import load_world
from irunlearn.activations import extract_activations, stop_layer
from irunlearn.lm import pad_id
from irunlearn.prompts import entity_token_positions

RESULTS = Path(__file__).parent / "results"


def full_cache_baseline(model, hook_name, prompts, names, prepend_bos, batch_size: int = 256) -> float:
    """Seconds for the plain way: full prompts, same batch size, a full `run_with_cache` (every hook, every
    layer), then index the entity token."""
    located = entity_token_positions(model.tokenizer, prompts, names, prepend_bos)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(located), batch_size):
            chunk = located[i : i + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            tokens = torch.tensor([ids + [pad_id(model.tokenizer)] * (width - len(ids)) for ids, _ in chunk])
            _, cache = model.run_with_cache(tokens)
            cache[hook_name][torch.arange(len(chunk)), torch.tensor([p for _, p in chunk])]
    return time.perf_counter() - start


def bench(label, model, hook_name, entities, templates, prepend_bos, batch_size: int = 256) -> dict:
    """Both ways on the same prompts and batch size (a full cache of a 30-layer model needs a small one)."""
    prompts = [t.render(e.name) for e in entities for t in templates]
    names = [e.name for e in entities for t in templates]
    extract_activations(model, hook_name, entities[:2], templates, prepend_bos=prepend_bos, progress=False)  # warm-up
    start = time.perf_counter()
    extract_activations(
        model, hook_name, entities, templates, prepend_bos=prepend_bos, batch_size=batch_size, progress=False
    )
    ours = time.perf_counter() - start
    naive = full_cache_baseline(model, hook_name, prompts, names, prepend_bos, batch_size)
    layers = model.cfg.n_layers
    return {
        "model": label,
        "hook": hook_name,
        "prompts": len(prompts),
        "batch_size": batch_size,
        "irunlearn_prompts_per_s": len(prompts) / ours,
        "run_with_cache_prompts_per_s": len(prompts) / naive,
        "speedup": naive / ours,
        "target_speedup": layers / stop_layer(hook_name),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-entities", type=int, default=200)
    parser.add_argument("--smollm2", action="store_true", help="also on SmolLM2 when its fixture is present")
    args = parser.parse_args()
    torch.manual_seed(0)
    ew = load_world()
    entities = (ew.world.known + ew.world.unknown_eval)[: args.n_entities]
    rows = [bench("embedded world", ew.model, ew.hook_name, entities, ew.world.question_templates("train"), True)]
    if args.smollm2:
        from irunlearn.activations import sae_hook_name
        from irunlearn.models import load_sae
        from irunlearn.real.fixture import load_smollm2, smollm2_path
        from irunlearn.real.sae import SMOLLM2_SAE
        from irunlearn.real.wikidata import load_entities, question_templates

        if smollm2_path() is None:
            print("SmolLM2 fixture absent: run `make real-fixture` first; skipping it.")
        else:
            model = load_smollm2()
            cities = load_entities("city", n=args.n_entities // 4, seed=0)
            hook = sae_hook_name(load_sae(path=SMOLLM2_SAE))  # the shipped SAE's hook
            templates = question_templates("city", "train")
            rows.append(bench("SmolLM2-135M", model, hook, cities, templates, False, batch_size=16))
    table = markdown(pd.DataFrame(rows))
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_extract.md").write_text(
        f"# Extraction throughput\n\n{torch.get_num_threads()} torch threads, CPU.\n\n{table}"
    )


if __name__ == "__main__":
    main()
