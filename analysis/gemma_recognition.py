"""Famous vs obscure people on Gemma 3 270M: labels, per-layer residual-probe AUROC, SAE probe at the SAE's hook.

    .venv/bin/python analysis/gemma_recognition.py      # ~10 min on a 2-core CPU once labels are cached

Labels the famous people and a seeded sample of basketball players by the model's own answers
(`irunlearn.real.people.people_bench`), then fits a residual probe at the name's last token at every
layer (held-out people × held-out phrasings, `layer_probe_aurocs`): famous vs obscure real people, and,
as the secondary control, famous vs made-up names. With the shipped Gemma SAE (or `--sae DIR`), it also
fits `fit_recognizer` at the SAE's hook and reports both probes there. Writes
analysis/results/gemma_recognition.md and the per-layer table as CSV next to it. Needs the Gemma fixture
(`make real-fixture`) and the shared records.
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

from irunlearn.entities import Entity, EntitySet
from irunlearn.models import load_model, load_sae
from irunlearn.real import fixture
from irunlearn.real.labelling import label_entities
from irunlearn.real.layer_probes import layer_probe_aurocs
from irunlearn.real.people import PeopleBench, load_people, made_up_names, people_bench, person_templates
from irunlearn.real.sae import GEMMA3_SAE
from irunlearn.recognition import fit_recognizer

RESULTS = Path(__file__).resolve().parent / "results"
N_MADE_UP = 40


def per_layer(model, entities: EntitySet, seed: int, progress: bool) -> pd.DataFrame:
    """`layer_probe_aurocs` on the person prompts: fit on training phrasings, scored on held-out ones."""
    return layer_probe_aurocs(
        model, entities, person_templates("train"), person_templates("heldout"), seed=seed, progress=progress
    )


def layer_table(obscure: pd.DataFrame, control: pd.DataFrame) -> pd.DataFrame:
    """Famous vs obscure players per layer, with the made-up-name control's AUROC beside it."""
    table = obscure[["layer", "hook", "auroc", "accuracy"]].rename(
        columns={"auroc": "AUROC famous vs obscure", "accuracy": "accuracy famous vs obscure"}
    )
    table["AUROC famous vs made-up"] = control.set_index("hook").loc[table["hook"], "auroc"].to_numpy()
    table.attrs["rows"] = (int(obscure["n_fit_rows"].iloc[0]), int(obscure["n_test_rows"].iloc[0]))
    return table


def sae_probe(model, sae_dir: Path, bench: PeopleBench, seed: int, progress: bool) -> dict:
    """Both probes of `fit_recognizer` at the SAE's hook (same split and templates as the layer table)."""
    sae = load_sae(path=sae_dir)
    recognizer = fit_recognizer(
        model,
        sae,
        bench.entities,
        person_templates("train"),
        person_templates("heldout"),
        seed=seed,
        progress=progress,
    )
    return {"hook": recognizer.hook_name, **recognizer.metrics}


def report(bench: PeopleBench, layers: pd.DataFrame, sae: dict | None, seed: int, wall: float) -> str:
    counts = bench.counts()
    best = layers.loc[layers["AUROC famous vs obscure"].idxmax()]
    first = layers[layers["AUROC famous vs obscure"] >= 0.95]["layer"]
    n_fit, n_test = layers.attrs["rows"]
    examples = bench.answers[bench.answers["kind"] == "person"].head(12)
    columns = [c for c in examples.columns if c.endswith("_answer") or c in ("name", "label")]
    text = f"""# Gemma 3 270M: famous vs obscure people

Written by `analysis/gemma_recognition.py` (seed {seed}); {wall / 60:.0f} minutes in all on this machine's CPU.

## Labels (the model's own greedy answers, 2-shot questions)

{markdown(counts)}
Famous people: `../shared/data/people/` ({len(bench.answers[bench.answers["kind"] == "person"])} people),
asked nationality and occupation; known = both right (lenient: demonym or country, any listed occupation,
common alternatives). Obscure real people: {len(bench.answers[bench.answers["kind"] == "player"])}
basketball players of the shared Wikidata records (seed {seed}), asked birth year, birthplace and team;
unknown = none right. A model answering every famous person the way it answers a made-up name would label
{bench.chance_known:.1f} of them known (mean over {len(bench.made_up)} made-up names).

First answers of the famous people:

{markdown(examples[columns])}
## Residual probe per layer (name's last token)

Held-out people × held-out phrasings: probes fit on 60% of the people with the training phrasings
({n_fit} rows), calibrated on 20%, scored on the other 20% with the held-out phrasings ({n_test} rows).
Layer −1 is the embedding. Famous vs made-up names is the secondary control (same known people).

{markdown(layers.drop(columns=["hook"]))}
Best layer: {int(best["layer"])} (AUROC {best["AUROC famous vs obscure"]:.3f}); AUROC ≥ 0.95 first at layer
{int(first.iloc[0]) if len(first) else "none"}.
"""
    if sae is not None:
        text += f"""
## At the shipped SAE's hook (`{sae["hook"]}`)

| probe | AUROC | accuracy |
|---|---|---|
| residual | {sae["probe_auroc_resid"]:.3f} | {sae["probe_acc_resid"]:.3f} |
| SAE latents | {sae["probe_auroc_sae"]:.3f} | {sae["probe_acc_sae"]:.3f} |
"""
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-players", type=int, default=120)
    parser.add_argument("--sae", type=Path, default=GEMMA3_SAE, help="SAE folder (skipped when absent)")
    parser.add_argument("--out", type=Path, default=RESULTS / "gemma_recognition.md")
    parser.add_argument(
        "--control",
        choices=("run", "only", "read"),
        default="run",
        help="the made-up-name control: compute it (run), compute only it and stop (only), or read the table "
        "an `only` run wrote (read), so that the two tables can be computed in two processes",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if fixture.gemma3_path() is None:
        print("Gemma fixture absent: run `make real-fixture` first.", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    progress = not args.quiet
    model = load_model("gemma3-270m")
    control_csv = args.out.with_name(args.out.stem + "_control.csv")
    if args.control == "only":
        people, _ = label_entities(model, load_people(), progress=progress)
        made_up = made_up_names(N_MADE_UP, args.seed, exclude=[p.name for p in load_people()])
        entities = EntitySet(people.known, [Entity(name) for name in made_up])
        per_layer(model, entities, args.seed, progress).to_csv(control_csv, index=False)
        return 0
    bench = people_bench(model, n_players=args.n_players, n_made_up=N_MADE_UP, seed=args.seed, progress=progress)
    obscure = per_layer(model, bench.entities, args.seed, progress)
    if args.control == "read":
        control = pd.read_csv(control_csv)
    else:
        control = per_layer(
            model, EntitySet(bench.entities.known, [Entity(n) for n in bench.made_up]), args.seed, progress
        )
        control.to_csv(control_csv, index=False)
    layers = layer_table(obscure, control)
    sae = sae_probe(model, args.sae, bench, args.seed, progress) if (args.sae / "cfg.json").is_file() else None
    text = report(bench, layers, sae, args.seed, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    layers.to_csv(args.out.with_name(args.out.stem + "_layers.csv"), index=False)
    if sae is not None:
        args.out.with_name(args.out.stem + "_sae.json").write_text(json.dumps(sae, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
