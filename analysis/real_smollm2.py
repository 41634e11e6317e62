"""SmolLM2-135M-Instruct on the one pipeline: a records bench, forgetting, the full metric set; writes a report.

    .venv/bin/python analysis/real_smollm2.py                      # cities, sae_guided and grad_ascent
    .venv/bin/python analysis/real_smollm2.py --kind person --targets "Elon Musk"

Builds `EntityBench.from_records(kind, model)` (known / unknown labelled by SmolLM2's own answers, cached),
then `irunlearn.run` forgets each target on its own with every method, editing the MLPs of the
`--layer-window` layers up to the shipped SAE's hook, and evaluates every edit with the same battery as
the embedded world (the lenient judge for answers). Writes the run folder (`RunResults.save`) and a
Markdown summary next to it. Needs the SmolLM2 fixture and the shared records.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tables import markdown

import irunlearn
from irunlearn.activations import sae_hook_name, stop_layer
from irunlearn.bench import EntityBench
from irunlearn.comparison import BATTERY_COLUMNS, COST_COLUMNS
from irunlearn.models import load_sae
from irunlearn.real import fixture
from irunlearn.real.sae import SMOLLM2_SAE

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["method", "targets", *BATTERY_COLUMNS, *COST_COLUMNS, "stop_reason"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="city", help="city, player, song, movie or person")
    parser.add_argument("--n", type=int, default=None, help="records drawn (person: obscure players)")
    parser.add_argument("--methods", default="sae_guided,grad_ascent")
    parser.add_argument("--targets", default="", help="comma-separated names (default: --n-targets drawn)")
    parser.add_argument("--n-targets", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=None, help="default: SmolLM2's recipe (recipes.py)")
    parser.add_argument("--layer-window", type=int, default=None, help="default: SmolLM2's recipe (recipes.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "real_smollm2")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if fixture.smollm2_path() is None:
        print("SmolLM2 fixture absent: run `python -m irunlearn.real.fixture` first.", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    start, progress = time.perf_counter(), not args.quiet
    model, sae = fixture.load_smollm2(), load_sae(path=SMOLLM2_SAE)
    bench = EntityBench.from_records(args.kind, model, n=args.n, seed=args.seed, progress=progress)
    end = stop_layer(sae_hook_name(sae)) or model.cfg.n_layers  # the hook's block, included
    overrides = {} if args.max_steps is None else {"max_steps": args.max_steps}
    if args.layer_window is not None:
        overrides["layers"] = tuple(range(max(0, end - args.layer_window), end))
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    results = irunlearn.run(
        bench,
        model,
        sae,
        args.methods.split(","),
        targets=targets,
        n_targets=args.n_targets,
        seeds=(args.seed,),
        together=False,
        progress=progress,
        **overrides,
    )
    results.save(args.out, force=True)
    metrics = results.provenance["recognizer_metrics"]
    text = f"""# SmolLM2-135M-Instruct, {args.kind}: recognition and forgetting on the one pipeline

Written by `analysis/real_smollm2.py --kind {args.kind} --seed {args.seed}` in
{(time.perf_counter() - start) / 60:.0f} minutes; run folder `{args.out.name}/`. Bench: {len(bench.entities.known)}
known, {len(bench.entities.unknown)} unknown (SmolLM2's own answers). Recognition, held-out entities × held-out
phrasings: AUROC SAE {metrics["probe_auroc_sae"]:.3f}, residual {metrics["probe_auroc_resid"]:.3f}.

{markdown(results.summary[[c for c in COLUMNS if c in results.summary]])}
"""
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
