"""Deep forgetting on the evaluation targets: is each method's edit a moved key or removed facts? (issue #21)

For 5 known people drawn by `resolve_targets(ew, n_random=5, seed=s)` (forgotten together) and for the first
of them alone, s in `--seeds`, and for each method: the existing metrics, key restoration per layer up to the
SAE's, forced choice among the attribute's values against strangers, relearning attacks (a) half the facts,
(b) one fact, (c) other people's facts only, the attacker's best over `depth.ATTACK_LRS` at 25 and 100 steps,
against strangers taught the same, the held-out name-sharers' retain apart from everyone else, and seconds.
Each row is one `irunlearn.run` with the depth metrics as extra registered metrics; the original model is a
row of its own (`baselines=["original"]`), its relearning not run (it answers every held fact at step 0).
These seed-drawn targets have no oracle; the standard forget sets against theirs are `oracle_table.py`'s.

    python analysis/deep_forgetting.py [--seeds 0 1 2] [--methods sae_guided sae_guided_deep ...] [--tag T]

Writes analysis/results/deep_forgetting.md, deep_forgetting_runs.csv (one row per case × method),
deep_forgetting_curves.csv (every attack × lr × step) and deep_forgetting_locate.csv, appending case by case
so an interrupted run keeps what it finished (`--resume` skips finished cases). `--tag T` writes
deep_forgetting_T.md, deep_forgetting_T_runs.csv, ... instead (a tuning check beside the evaluation's files).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch
from tables import markdown as table

import irunlearn
from irunlearn import EntityBench, depth, load_world
from irunlearn.world.recognition import recognize_world
from irunlearn.world.tasks import resolve_targets

RESULTS = Path(__file__).parent / "results"
METHODS = ("sae_guided", "sae_guided_deep", "grad_ascent", "rmu")
ATTACKS = ("half", "one_fact", "others")
STEPS = (10, 25, 50, 100)
PER_ROW_METRICS = ("indistinguishability", "forced_choice", "membership_auc", "sharer_retain", "key_restoration")
EXISTING = (
    "forget_acc",
    "paraphrase_forget_acc",
    "idk_rate",
    "retain_acc",
    "ppl_ratio",
    "probe_p_known_sae",
    "probe_p_known_resid",
    "indistinguishability",
    "indistinguishability_resid",
)


def run_case(ew, bench, recognizer, case: str, targets, methods, relearn: str) -> Iterator[tuple[dict, pd.DataFrame]]:
    """The original model and every method on one case through `irunlearn.run`, row by row: the row and
    its relearning curves (the strangers' with the first method). The original's relearning is not run
    (it answers every held fact at step 0)."""
    names = [t.name for t in targets]
    common = {"targets": names, "recognizer": recognizer, "genuineness": False, "progress": False}
    for method in ("original", *methods):
        tic = time.perf_counter()
        edited = method != "original"
        results = irunlearn.run(
            bench,
            ew.model,
            ew.sae,
            [method] if edited else [],
            metrics=[*PER_ROW_METRICS, *([relearn] if edited else [])],
            baselines=[] if edited else ["original"],
            **common,
        )
        row = {"case": case, **results.summary.iloc[0].to_dict()}
        restored = results.items["key_restoration"].groupby("layer")["restored"].mean()
        row |= {f"key_restoration_L{layer}": value for layer, value in restored.items()}
        curves = pd.DataFrame()
        if edited:
            curves = results.items[relearn].drop(columns="run").replace({"model": {"edited": method}})
            if method != methods[0]:
                curves = curves[curves["model"] != "stranger"]
        print(f"{case} {method}: {time.perf_counter() - tic:.0f} s", flush=True)
        yield row, curves.assign(case=case)


def markdown(runs: pd.DataFrame, heat: pd.DataFrame, command: str) -> str:
    """The report: per case and method, the depth columns and the existing ones."""
    out = [
        f"# Deep forgetting (issue #21): `{command}`",
        "",
        "Targets: `resolve_targets(ew, n_random=5, seed=s)` forgotten together (`five_s{s}`) and the first "
        "of them alone (`single_s{s}`). Seeds 0–2 are the evaluation draws; tuning used seeds 100–103 and 110–118 "
        "only (single targets and 5- and 10-target draws). "
        "Relearning: attacker's best "
        f"over the lrs in `deep_forgetting_curves.csv`, one run of {max(STEPS)} steps per lr (Adam, full batch), "
        "recall of the held-out facts; `_stranger`: strangers taught the same on the original model. "
        "These targets have no oracle (the forget sets against theirs: `oracle_table.md`).",
        "",
        "## Where the original model reads a target's facts (`depth.locate`, five_s0's targets)",
        "",
        "Drop of the gold answer's log-probability when the residual at a position is replaced by strangers' mean:",
        "",
        table(heat.pivot(index="layer", columns="position", values="logprob_drop").reset_index()),
        "",
    ]
    groups = {
        "Key restoration (fraction of answers the original residual at the name tokens brings back)": [
            c for c in runs if c.startswith("key_restoration_L")
        ],
        "Forced choice and membership": [
            "forced_choice",
            "forced_choice_stranger",
            "answer_loss_auroc",
            "membership_auc",
            "membership_auc_original",
        ],
        "Relearning (attacker's best over lr)": [c for c in runs if c.startswith("relearn_")],
        "Neighbours: held-out people sharing a name word with a target, and everyone else": [
            "n_sharers",
            "retain_sharers",
            "retain_sharers_min",
            "retain_others",
        ],
        "The existing metrics and cost": [*[c for c in EXISTING if c in runs], "steps", "seconds"],
    }
    for title, columns in groups.items():
        out += [f"## {title}", "", table(runs[["case", "method", *columns]]), ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=depth.ATTACKS)
    parser.add_argument("--lrs", type=float, nargs="+", default=list(depth.ATTACK_LRS), help="attacker's lr sweep")
    parser.add_argument("--cases", nargs="+", help="only these cases (e.g. single_s0 five_s1)")
    parser.add_argument("--singles-first", action="store_true", help="run the single-target cases first")
    parser.add_argument("--resume", action="store_true", help="skip cases already in the runs CSV")
    parser.add_argument("--tag", help="appended to the results' file names (the locate heat map is shared)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ew = load_world()
    recognizer = recognize_world(ew, progress=False)[0]
    name = f"deep_forgetting_{args.tag}" if args.tag else "deep_forgetting"
    runs_path, curves_path = RESULTS / f"{name}_runs.csv", RESULTS / f"{name}_curves.csv"
    done = set(pd.read_csv(runs_path)["case"]) if args.resume and runs_path.exists() else set()  # finished or begun
    if not args.resume:
        for path in (runs_path, curves_path):
            path.unlink(missing_ok=True)
    cases = []
    for seed in args.seeds:
        five = resolve_targets(ew, n_random=5, seed=seed)
        cases += [(f"five_s{seed}", five), (f"single_s{seed}", five[:1])]
    if args.cases:
        cases = [case for case in cases if case[0] in args.cases]
    if args.singles_first:
        cases.sort(key=lambda case: not case[0].startswith("single"))
    heat_path = RESULTS / "deep_forgetting_locate.csv"
    if not heat_path.exists():
        first = resolve_targets(ew, n_random=5, seed=args.seeds[0])
        heat = depth.locate(ew.model, first, ew.world.question_templates("train"), ew.world.unknown_eval[-50:])
        heat.to_csv(heat_path, index=False)
    relearn = "relearn_deep_forgetting"  # this script's protocol, a registered metric like any other
    depth.register_relearn_metric(relearn, attacks=args.attacks, steps=STEPS, lrs=args.lrs)
    bench = EntityBench.from_world(ew)
    for case, targets in cases:
        if case in done:
            continue
        for row, curves in run_case(ew, bench, recognizer, case, targets, args.methods, relearn):
            runs = (
                pd.concat([pd.read_csv(runs_path), pd.DataFrame([row])]) if runs_path.exists() else pd.DataFrame([row])
            )
            runs.to_csv(runs_path, index=False)
            if not curves.empty:
                curves.to_csv(curves_path, mode="a", header=not curves_path.exists(), index=False)
            command = " ".join(["python analysis/deep_forgetting.py", *sys.argv[1:]])
            (RESULTS / f"{name}.md").write_text(markdown(runs, pd.read_csv(heat_path), command))
            if not curves.empty:
                depth.relearn_figure(
                    pd.read_csv(curves_path).query("case == @case").drop(columns="case"), f"Relearning attacks, {case}"
                ).write_html(RESULTS / f"{name}_relearn_{case}.html", include_plotlyjs="cdn")


if __name__ == "__main__":
    main()
