"""The real-model pipeline on SmolLM2-135M-Instruct with Wikidata cities; writes analysis/results/real_smollm2.md.

    .venv/bin/python analysis/real_smollm2.py            # ~15 min on a 2-core CPU once labels are cached

Labels cities of a million inhabitants or more plus a random sample of all cities (for more unknown
ones), counts known / unknown for every entity kind on a sample, fits recognition with the shipped SAE,
forgets three known cities one at a time with `sae_guided` and `grad_ascent`, and writes the figures as
Markdown (plus the per-run table as CSV next to it). Needs the SmolLM2 fixture and the Wikidata records.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from tables import markdown

from irunlearn.models import load_sae
from irunlearn.real import fixture, label_entities, load_entities
from irunlearn.real.pipeline import (
    TARGET_METRICS,
    RealPipelineConfig,
    cities_above,
    label_cities,
    label_counts,
    run_real_pipeline,
)
from irunlearn.real.sae import SMOLLM2_SAE

RESULTS = Path(__file__).resolve().parent / "results"


def spread(values: pd.Series) -> str:
    """`mean (min–max)` with two decimals."""
    return f"{values.mean():.2f} ({values.min():.2f}–{values.max():.2f})"


def before_after(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, target): `metric before → after` cells, retain_acc, ppl_ratio, timing."""
    out = runs[["method", "target"]].copy()
    short = {
        "forget_acc": "forget_acc",
        "paraphrase_forget_acc": "paraphrase",
        "idk_rate": "idk_rate",
        "probe_p_known_sae": "p_known SAE",
        "probe_p_known_resid": "p_known resid",
        "dist_ratio": "dist_ratio",
    }
    for metric in TARGET_METRICS:
        out[short[metric]] = [
            f"{b:.2f} → {a:.2f}" for b, a in zip(runs[f"{metric}_before"], runs[f"{metric}_after"], strict=True)
        ]
    out["retain_acc"] = [
        f"{b:.2f} → {a:.2f}" for b, a in zip(runs["retain_acc_before"], runs["retain_acc_after"], strict=True)
    ]
    out["ppl_ratio"] = runs["ppl_ratio"].map(lambda v: f"{v:.3f}")
    out["steps"] = runs["steps"]
    out["stop"] = runs["stop_reason"]
    out["wall s"] = runs["seconds"].map(lambda v: f"{v:.0f}")
    out["CPU s"] = runs["cpu_seconds"].map(lambda v: f"{v:.0f}")
    return out


def report(result, sae_figures: dict, kind_counts: pd.DataFrame, config: RealPipelineConfig, wall: float) -> str:
    metrics = result.recognizer.metrics
    runs = result.runs
    timing = runs.groupby("method")[["seconds", "cpu_seconds", "steps"]].mean()
    answers = runs[["method", "target", "answers_before", "answers_after"]]
    strangers = result.unknown_reference
    return f"""# SmolLM2-135M-Instruct, real cities: recognition and forgetting

Written by `analysis/real_smollm2.py` (seed {config.seed}); {wall / 60:.0f} minutes in all on this machine's CPU.
Machine: 2 cores shared with other jobs, so wall times run well above CPU times; CPU seconds are this
process's own.

## SAE

A TopK SAE on `{sae_figures["hook_name"]}` ({sae_figures["d_sae"]} latents, k={sae_figures["k"]}), trained with
SAELens's runner on {sae_figures["training_tokens"]:,} tokens of local text (few-shot questions and fact
sentences rendered from the Wikidata records of all four kinds, plus prose from Python's documentation):
{sae_figures["wall_seconds"]:.0f} s wall, {sae_figures["cpu_seconds"]:.0f} s CPU. On held-out text
({sae_figures["n_eval_tokens"]:,} tokens): FVU {sae_figures["fvu"]:.3f}, L0 {sae_figures["l0"]:.1f}, dead
fraction {sae_figures["dead_fraction"]:.3f}. At the entity token of held-out-template city questions: FVU
{sae_figures["fvu_entity_tokens"]:.3f}.

## What SmolLM2 knows

Known = at least two of an entity's attribute questions answered right, unknown = none (Ferrando et al.),
from greedy answers to few-shot questions. Cities: all {len(cities_above(1e6))} cities of ≥ 1 million plus a random
sample (`city`, below); other kinds: a random sample each.

{markdown(kind_counts)}

## Recognition at the last token of the name

Probes fit on 60% of the labelled cities × training phrasings, calibrated on 20%, reported on the other 20%
× held-out phrasings ({metrics["n_test_rows"]} rows).

| probe | held-out AUROC | held-out accuracy |
|---|---|---|
| SAE latents | {metrics["probe_auroc_sae"]:.3f} | {metrics["probe_acc_sae"]:.3f} |
| residual stream | {metrics["probe_auroc_resid"]:.3f} | {metrics["probe_acc_resid"]:.3f} |

Top separation scores: known latent {metrics["top_known_score"]:.3f}, unknown latent
{metrics["top_unknown_score"]:.3f}.

## Forgetting three known cities

Targets ({", ".join(t.name for t in result.targets)}) are known cities the probes were not fit on, read as
known by both probes, and known for more than SmolLM2's default guesses. Each is forgotten on its own; the
facts a method suppresses are the model's own correct answers. Both methods edit the MLPs of the
{config.layer_window} layers up to the SAE's; method settings: `{json.dumps(config.method_overrides)}`;
everything in float32. Each method stops by its own rule or at `max_steps`. `sae_guided` (the library's
default objective: margin at the name token plus the context term on the question tokens, with the unknown
cities not used for `idk_rate` as its strangers) stops once, in every training question, the SAE probe
reads the target as unknown and both the name token and the question tokens sit nearer the unknown
references; `grad_ascent` (lr from `analysis/sweep_real_smollm2.py`) once teacher-forced greedy decoding
gives none of the target's training answers.
`retain_acc`: accuracy (against Wikidata) on the training questions of {config.n_retain_eval} other known
cities, before → after (cities not used while editing); `ppl_ratio`: perplexity on
{config.n_generic_eval} held-out documentation paragraphs after / before; `idk_rate`: fraction of the
target's known facts answered like an unknown city (a refusal, or the original answer no likelier than after
the names of {config.n_unknown_reference} unknown cities; see `irunlearn.real.evaluation`).

{markdown(before_after(runs))}
For scale, the unknown reference cities ({", ".join(strangers["entity"])}) read, on the original model:
p_known SAE {spread(strangers["p_known_sae"])}, p_known resid {spread(strangers["p_known_resid"])}, dist_ratio
{spread(strangers["dist_ratio"])}: the levels a genuinely forgotten city should reach.

Mean per entity:

{markdown(timing.reset_index(), ".1f")}

Answers to the three training questions (country | population | elevation), before → after:

{markdown(answers)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", type=Path, default=SMOLLM2_SAE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-random-cities", type=int, default=100)
    parser.add_argument("--n-per-kind", type=int, default=100, help="sample size for the other kinds' counts")
    parser.add_argument("--max-steps", type=int, default=None, help="override both methods' max_steps")
    parser.add_argument("--out", type=Path, default=RESULTS / "real_smollm2.md")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if fixture.smollm2_path() is None:
        print("SmolLM2 fixture absent: run `python -m irunlearn.real.fixture` first.", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    progress = not args.quiet
    model = fixture.load_smollm2()
    sae = load_sae(path=args.sae)
    entity_set, answers = label_cities(model, n_random=args.n_random_cities, seed=args.seed, progress=progress)
    counts = [label_counts(answers)]
    for kind in ("player", "song", "movie"):
        _, kind_answers = label_entities(
            model, load_entities(kind, n=args.n_per_kind, seed=args.seed), progress=progress
        )
        counts.append(label_counts(kind_answers))
    config = RealPipelineConfig(seed=args.seed)
    if args.max_steps is not None:
        for overrides in config.method_overrides.values():
            overrides["max_steps"] = args.max_steps
    result = run_real_pipeline(model, sae, entity_set, answers, config, progress=progress)
    sae_figures = json.loads((args.sae / "training.json").read_text())
    text = report(result, sae_figures, pd.concat(counts, ignore_index=True), config, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    result.runs.to_csv(args.out.with_name(args.out.stem + "_runs.csv"), index=False)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
