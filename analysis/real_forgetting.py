"""Forgetting famous people on a real model (Gemma 3 270M by default) through `irunlearn.run`.

    PYTHONPATH=.:analysis .venv/bin/python analysis/real_forgetting.py [--model gemma3-270m] [--people 10]
        [--methods sae_guided grad_ascent npo rmu] [--cases alone together] [--tuning] [--set lr=1e-4]

The bench is `EntityBench.from_records("person", model)`: the famous people the model knows (facts as it
states them) against obscure real players as the unknown side. Evaluation people: `--people` (10) known
people drawn with `EVALUATION_SEED` (2026) from those the tuning draw (`locate_gemma.py`'s seed 100, three
people) did not take; no tuning run used them. `--tuning` runs the three tuning people instead (what a
recipe may be tuned on) and writes `*_tuning` files. Retain accuracy is measured on 40 other known people
(seeded), held out of every retain set. Each person is forgotten alone (`alone`) and the 10 together
(`together`), every method under the model's recipe (`irunlearn.methods.recipes`; `--set key=value`
overrides a config field of every method, for tuning runs). Every row carries the evaluator's battery,
indistinguishability from strangers by both probes (`--genuineness`: the whole genuineness battery, whose
relearning fine-tunes the whole model, minutes a row on a CPU), and the `answers` metrics: recall against the
strangers' level (`strangers_level`), whether "Tell me about NAME." or the bare name still states a fact
(`about`), unrelated prompts kept (`control_kept`); the unedited model's row (`original`) comes first.

Writes analysis/results/real_forgetting[_tuning].{csv,md} and the open answers `*_about.csv` after every row
(a long run leaves what it finished); `--resume` skips the (case, method) rows already written.
"""

from __future__ import annotations

import argparse
import ast
import random
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from locate_gemma import N_TUNING, TUNING_SEED
from tables import markdown

import irunlearn
from irunlearn import EntityBench
from irunlearn.models import load_model, load_sae
from irunlearn.real.sae import GEMMA3_SAE, SMOLLM2_SAE

RESULTS = Path(__file__).resolve().parent / "results"
EVALUATION_SEED = 2026
METHODS = ("sae_guided", "grad_ascent", "npo", "rmu")
N_PEOPLE, N_RETAIN_EVAL = 10, 40
SAES = {"gemma3-270m": GEMMA3_SAE, "smollm2": SMOLLM2_SAE}
ANSWER_METRICS = ["strangers_level", "about", "control_kept"]
COLUMNS = {  # table column: summary column
    "case": "case",
    "method": "method",
    "recall": "forget_acc",
    "held-out": "paraphrase_forget_acc",
    "strangers": "strangers_recall",
    "excess": "recall_over_strangers",
    "excess held-out": "paraphrase_over_strangers",
    "p SAE": "probe_p_known_sae",
    "p resid": "probe_p_known_resid",
    "indist SAE": "indistinguishability",
    "indist resid": "indistinguishability_resid",
    "about states": "about_states_facts",
    "about strangers": "about_states_facts_strangers",
    "retain": "retain_acc",
    "ppl": "ppl_ratio",
    "control": "control_kept",
    "relearn": "relearn_acc",
    "steps": "steps",
    "s": "seconds",
    "stop": "stop_reason",
}


def people(bench: EntityBench, n_people: int, tuning: bool) -> tuple[list[str], list[str]]:
    """(targets, retain-evaluation people): the tuning draw, or `n_people` evaluation people outside it."""
    known = list(bench.entities.known)
    tuning_names = [p.name for p in random.Random(TUNING_SEED).sample(known, N_TUNING)]
    rng = random.Random(EVALUATION_SEED)
    pool = [p.name for p in known if p.name not in tuning_names]
    targets = tuning_names if tuning else rng.sample(pool, N_PEOPLE)[:n_people]
    rest = [name for name in pool if name not in targets and name not in tuning_names]
    return targets, rng.sample(rest, min(N_RETAIN_EVAL, len(rest)))


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` pairs as config overrides (values read as Python literals: 1e-4, 20, (1, 2), True)."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not key or not value:
            raise SystemExit(f"--set wants key=value, got {pair!r}")
        out[key] = ast.literal_eval(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m", choices=sorted(SAES))
    parser.add_argument("--people", type=int, default=N_PEOPLE, help="how many of the evaluation people to run")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--cases", nargs="+", default=["alone", "together"], choices=["alone", "together"])
    parser.add_argument("--tuning", action="store_true", help="the tuning people (seed 100) instead")
    parser.add_argument(
        "--genuineness", action="store_true", help="the whole genuineness battery (relearning: minutes a row)"
    )
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every method, key=value")
    parser.add_argument("--resume", action="store_true", help="skip (case, method) rows already written")
    parser.add_argument("--out", default=None, help="file stem under analysis/results (default: by model, tuning)")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    torch.set_num_threads(1)
    start = time.perf_counter()
    stem = args.out or "real_forgetting" + ("" if args.model == "gemma3-270m" else f"_{args.model}")
    stem += "_tuning" if args.tuning and not args.out else ""
    csv, about_csv = RESULTS / f"{stem}.csv", RESULTS / f"{stem}_about.csv"

    model = load_model(args.model)
    sae = load_sae(path=SAES[args.model])
    bench = EntityBench.from_records("person", model, progress=False)
    targets, retain_eval = people(bench, args.people, args.tuning)
    bench = replace(bench, retain_eval=[bench.entities.get(name) for name in retain_eval])
    recognizer = bench.recognizer(model, sae, progress=False)
    strangers = recognizer.p_known(model, sae, [s.name for s in bench.strangers], bench.heldout_templates)
    header = {
        "model": model.cfg.model_name,
        "targets": targets,
        "strangers_p_sae": (float(strangers["p_known_sae"].min()), float(strangers["p_known_sae"].max())),
        "strangers_p_resid": (float(strangers["p_known_resid"].min()), float(strangers["p_known_resid"].max())),
        "overrides": overrides,
    }
    rows = pd.read_csv(csv).to_dict("records") if args.resume and csv.is_file() else []
    abouts = [pd.read_csv(about_csv)] if args.resume and about_csv.is_file() else []
    done = {(r["case"], r["method"]) for r in rows}
    cases = [(name, [name]) for name in targets] * ("alone" in args.cases)
    cases += [("together", targets)] * ("together" in args.cases)
    for case, group in cases:
        methods = [m for m in args.methods if (case, m) not in done]
        baselines = ["original"] * ((case, "original") not in done)
        if not methods and not baselines:
            continue

        def save(row: dict, case: str = case) -> None:
            rows.append({"case": case, **row})
            write(rows, abouts, header, csv, about_csv, time.perf_counter() - start)
            print(f"{case} {row['method']}: " + ", ".join(f"{k} {row.get(v)}" for k, v in list(COLUMNS.items())[2:]))

        results = irunlearn.run(
            bench,
            model,
            sae,
            methods,
            targets=group,
            recognizer=recognizer,
            genuineness=args.genuineness,
            metrics=ANSWER_METRICS + ["indistinguishability"] * (not args.genuineness),
            baselines=baselines,
            on_row=save,
            progress=False,
            **overrides,
        )
        abouts.append(results.items["about"].assign(case=case))
        write(rows, abouts, header, csv, about_csv, time.perf_counter() - start)
        del results


def write(rows: list[dict], abouts: list[pd.DataFrame], header: dict, csv: Path, about_csv: Path, seconds: float):
    """The rows as CSV, their table as markdown, the open answers as CSV."""
    RESULTS.mkdir(exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(csv, index=False)
    if abouts:
        pd.concat(abouts, ignore_index=True).to_csv(about_csv, index=False)
    table = frame.reindex(columns=list(COLUMNS.values()))
    table.columns = list(COLUMNS)
    sae_lo, sae_hi = header["strangers_p_sae"]
    resid_lo, resid_hi = header["strangers_p_resid"]
    text = [
        f"# Forgetting famous people on {header['model']} (analysis/real_forgetting.py)",
        "",
        f"Targets: {', '.join(header['targets'])}. Evaluation seed {EVALUATION_SEED} (the tuning draw, seed "
        f"{TUNING_SEED}, excluded), unless this is the `_tuning` file. "
        f"Config overrides: {header['overrides'] or 'none'}. Strangers' probe range (held-out prompts): "
        f"SAE {sae_lo:.2f}–{sae_hi:.2f}, residual {resid_lo:.2f}–{resid_hi:.2f}. "
        f"{len(rows)} rows in {seconds:.0f} s.",
        "",
        markdown(table),
        "",
    ]
    csv.with_suffix(".md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
