"""What genuine forgetting costs next to suppression: wall time, steps and memory, same targets, one run.

    python analysis/bench_forget.py [--quick]

For every weight-editing method and each target (5 random known people × seeds 0, 1, 2; `--quick`: 1 × 1),
forgotten one at a time: time and steps to the method's own stop point; time and steps until the target's
training-template answers are gone (`forget_acc ≤ 0.05`); whether the stop point is *genuine* forgetting
(`forget_acc ≤ 0.05`, `idk_rate ≥ 0.8`, both probes < 0.5, `retain_acc ≥ 0.97`); the perplexity ratio on
held-out generic text; peak RSS during the run. Then, per seed, 10 targets forgotten together vs the first of
them alone with `sae_guided`, with its defaults and with the other settings of `BATCH_SETTINGS`, also
reporting indistinguishability from strangers (which the genuine check above leaves out). Prints markdown
tables and writes them to analysis/results/bench_forget.md.
"""

from __future__ import annotations

import argparse
import platform
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import torch
from tables import markdown

import irunlearn
from irunlearn import EntityBench, load_world
from irunlearn.methods import METHODS
from irunlearn.world.recognition import recognize_world
from irunlearn.world.tasks import resolve_targets

RESULTS = Path(__file__).parent / "results"
WEIGHT_EDITING = [name for name, cls in METHODS.items() if not cls.inference_only]
# sae_guided's defaults; L_act holding the name token only (no retain people's question tokens, the default
# until hold_questions); attention trainable with the retain KL weighed double
BATCH_SETTINGS = {
    "default": {},
    "hold_questions 0": {"hold_questions": 0},
    "train_attn, lambda_lm 10": {"train_attn": True, "lambda_lm": 10.0},
}
RUN_COLUMNS = ("forget_acc", "idk_rate", "retain_acc", "probe_p_known_sae", "probe_p_known_resid", "ppl_ratio")
INDISTINGUISHABILITY = ("indistinguishability", "indistinguishability_resid")


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> PeakRSS:
        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def first_reached(history: pd.DataFrame, threshold: float = 0.05) -> tuple[float, float]:
    """(step, seconds) of the first step at which every target's forget_acc_train ≤ threshold."""
    per_step = history.groupby("step").agg(acc=("forget_acc_train", "max"), seconds=("seconds", "first"))
    reached = per_step[per_step["acc"] <= threshold]
    return (float(reached.index[0]), float(reached["seconds"].iloc[0])) if len(reached) else (float("nan"),) * 2


def genuine(summary: dict) -> bool:
    return (
        summary["forget_acc"] <= 0.05
        and summary["idk_rate"] >= 0.8
        and summary["probe_p_known_sae"] < 0.5
        and summary["probe_p_known_resid"] < 0.5
        and summary["retain_acc"] >= 0.97
    )


def run_one(ew, bench, recognizer, targets, method: str, indistinguishability: bool = False, **overrides) -> dict:
    """One forgetting run through `irunlearn.run`, timed and evaluated (peak memory: the whole run, the
    evaluation included); with `indistinguishability`, also how well the probes tell the targets from
    strangers."""
    with PeakRSS() as memory:
        results = irunlearn.run(
            bench,
            ew.model,
            ew.sae,
            [method],
            [t.name for t in targets],
            recognizer=recognizer,
            genuineness=False,
            metrics=["indistinguishability"] if indistinguishability else [],
            progress=False,
            track_answers=True,
            **overrides,
        )
    summary = results.summary.iloc[0].to_dict()
    steps_to_forget, seconds_to_forget = first_reached(results.history)
    return {
        "method": method,
        "targets": len(targets),
        "stop_reason": summary["stop_reason"],
        "steps": summary["steps"],
        "seconds": summary["seconds"],
        "steps_to_forget_acc": steps_to_forget,
        "seconds_to_forget_acc": seconds_to_forget,
        "genuine": genuine(summary),
        "peak_rss_mb": memory.peak / 2**20,
        **{k: summary[k] for k in RUN_COLUMNS + INDISTINGUISHABILITY if k in summary},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 target, 1 seed, no batch case")
    args = parser.parse_args()
    n_targets, seeds = (1, [0]) if args.quick else (5, [0, 1, 2])
    ew = load_world()
    recognizer, _ = recognize_world(ew, progress=False)
    bench = EntityBench.from_world(ew)
    rows = []
    for seed in seeds:
        for target in resolve_targets(ew, n_random=n_targets, seed=seed):
            for method in WEIGHT_EDITING:
                rows.append(run_one(ew, bench, recognizer, [target], method) | {"seed": seed, "target": target.name})
                print(
                    f"{target.name:>24} {method:>12}: {rows[-1]['seconds']:.2f} s, {rows[-1]['steps']} steps",
                    flush=True,
                )
    runs = pd.DataFrame(rows)
    table = runs.groupby("method", sort=False).agg(
        median_seconds=("seconds", "median"),
        median_steps=("steps", "median"),
        median_seconds_to_forget_acc=("seconds_to_forget_acc", "median"),
        median_steps_to_forget_acc=("steps_to_forget_acc", "median"),
        genuine_rate=("genuine", "mean"),
        peak_rss_mb=("peak_rss_mb", "max"),
        retain_acc=("retain_acc", "mean"),
        median_ppl_ratio=("ppl_ratio", "median"),
    )
    ours = table.loc["sae_guided", "median_seconds"]
    table["seconds_vs_sae_guided"] = table["median_seconds"] / ours
    ga = table.loc["grad_ascent", "median_seconds_to_forget_acc"]
    lines = [
        "# Forgetting cost (embedded world)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, CPU only. Targets: {n_targets} per seed × seeds {seeds}, "
        "each forgotten alone. Produced by `python analysis/bench_forget.py" + (" --quick`." if args.quick else "`."),
        "",
        markdown(table.reset_index()),
        f"Genuine forgetting with sae_guided: median {ours:.2f} s to its stop point; grad_ascent needs a median "
        f"{ga:.2f} s to reach forget_acc ≤ 0.05 → ratio {ours / ga:.2f} (target ≤ 2).",
        "",
    ]
    if "sae_guided_deep" in table.index:
        deep = table.loc["sae_guided_deep", "median_seconds"]
        lines += [
            f"Deep forgetting: sae_guided_deep median {deep:.2f} s → {deep / ours:.2f}× sae_guided (target ≤ 3).",
            "",
        ]
    if not args.quick:
        batch = []
        for seed in seeds:
            many = resolve_targets(ew, n_random=10, seed=seed)
            for setting, overrides in BATCH_SETTINGS.items():
                one = run_one(ew, bench, recognizer, many[:1], "sae_guided", indistinguishability=True, **overrides)
                ten = run_one(ew, bench, recognizer, many, "sae_guided", indistinguishability=True, **overrides)
                ratio = ten["seconds"] / one["seconds"]
                batch += [row | {"setting": setting, "seed": seed, "ratio": ratio} for row in (one, ten)]
                print(f"seed {seed}, {setting}: 10 targets {ten['seconds']:.2f} s, 1: {one['seconds']:.2f} s")
        batch = pd.DataFrame(batch)
        columns = ["setting", "seed", "targets", "stop_reason", "steps", "seconds", "genuine", "forget_acc"]
        columns += ["idk_rate", "retain_acc", "ppl_ratio", *INDISTINGUISHABILITY, "peak_rss_mb"]
        lines += [
            "## 10 targets together vs 1 (sae_guided)",
            "",
            "Per seed: 10 random known people forgotten together, and the first of them alone, with sae_guided's "
            f"defaults and with each other setting of `BATCH_SETTINGS` ({BATCH_SETTINGS}).",
            "",
            markdown(batch[columns]),
        ]
        for setting, rows in batch[batch["targets"] == 10].groupby("setting", sort=False):
            lines += [
                f"Ratio of 10 together to 1 ({setting}): median {rows['ratio'].median():.2f} (seeds: "
                + ", ".join(f"{r:.2f}" for r in rows["ratio"])
                + f") (target ≤ 3); genuine on {int(rows['genuine'].sum())} of {len(rows)} seeds.",
                "",
            ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("bench_forget_quick.md" if args.quick else "bench_forget.md")).write_text(text)
    runs.to_csv(RESULTS / ("bench_forget_quick_runs.csv" if args.quick else "bench_forget_runs.csv"), index=False)


if __name__ == "__main__":
    main()
