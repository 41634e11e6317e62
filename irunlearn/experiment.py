"""One run function for every model: `irunlearn.run(bench, model, sae, methods=[...])` → `RunResults`.

It fits (or takes) the recognizer, draws or resolves the targets per seed, builds the task and evaluator
from the bench, runs each method (all targets together, or each alone), evaluates every edit with the
full battery, and returns the tables with the configs and provenance that produced them. `RunResults`
saves to and loads from a folder of plain files (CSV + JSON), so a report can be rendered later without
recomputing anything: with the recognizer and, after `read_entities`, the entity readings the figures
draw (`irunlearn.readings`).

>>> results = irunlearn.run(EntityBench.from_world(ew), ew.model, ew.sae, ["sae_guided", "grad_ascent"])
>>> results.summary                       # one row per (seed, task, method)
>>> results.save("runs/demo"); RunResults.load("runs/demo")
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from sae_lens import SAE
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from irunlearn import __version__
from irunlearn.bench import EntityBench
from irunlearn.entities import EntitySet
from irunlearn.evaluation import Evaluator
from irunlearn.io import atomic_dir, weights_hash
from irunlearn.methods import forget, get_method
from irunlearn.methods.base import UnlearnResult
from irunlearn.metrics import get_metric
from irunlearn.prompts import Template
from irunlearn.readings import EntityReadings, read_entities
from irunlearn.recognition import Recognizer

if TYPE_CHECKING:
    from irunlearn.world.oracle import Oracle

TABLES = ("summary", "per_target", "history")
ORIGINAL, ORACLE = "original", "oracle"  # the baseline rows' labels (`run(baselines=...)`), in tables and figures
BASELINES = (ORIGINAL, ORACLE)
EXTRA_TABLES = ("oracle_probes", "relearning")  # optional: written when present (oracle baseline, report curves)
RECOGNIZER_DIR, READINGS_DIR, ITEMS_DIR = "recognizer", "readings", "items"  # optional parts of a saved run


@dataclass
class RunResults:
    """The tables of a run and what produced them.

    `summary`: one row per (seed, task, method) with the evaluator's metrics, the stop reason, steps and
    seconds. `per_target`: the per-target metrics of each row (`run` links them). `history`: each
    method's optimisation history (`run`, step, target, loss terms, readings). `configs`: each run's
    method config by `run` id. `provenance`: bench, seeds, hook, package version and commit, model and SAE
    identity and hashes. `recognizer`: the fitted recognition the run used (its top latents, centroids and
    probes draw the report's recognition figures). `readings`: the entity readings of one task's runs,
    set by `read_entities` (the latent map and probe figures). `oracle_probes`: the oracle's own probes
    reading targets and strangers (`run(baselines=["oracle"])`); `relearning`: the report's relearning
    curves (`irunlearn.report.relearning_curves`). `items`: the per-item values of each extra metric
    (`run(metrics=...)`), by metric name, with the `run` they belong to. `edits` (in memory only, not
    saved) holds the `UnlearnResult`s with their edited models.
    """

    summary: pd.DataFrame
    per_target: pd.DataFrame
    history: pd.DataFrame
    configs: dict[str, dict]
    provenance: dict
    recognizer: Recognizer | None = None
    readings: EntityReadings | None = None
    oracle_probes: pd.DataFrame | None = None
    relearning: pd.DataFrame | None = None
    items: dict[str, pd.DataFrame] = field(default_factory=dict)
    edits: dict[str, UnlearnResult] = field(default_factory=dict, repr=False)

    def save(self, out: str | Path, force: bool = False) -> Path:
        """Write `summary.csv`, `per_target.csv`, `history.csv`, `run.json` and, when present, the
        `recognizer/`, `readings/` and `items/` folders into `out`, atomically (all of it appears, or none)."""
        out = Path(out)
        with atomic_dir(out, overwrite=force) as tmp:
            for name in TABLES:
                getattr(self, name).to_csv(tmp / f"{name}.csv", index=False)
            meta = {"configs": self.configs, "provenance": self.provenance}
            (tmp / "run.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
            for name in EXTRA_TABLES:
                if getattr(self, name) is not None:
                    getattr(self, name).to_csv(tmp / f"{name}.csv", index=False)
            if self.recognizer is not None:
                self.recognizer.save(tmp / RECOGNIZER_DIR)
            if self.readings is not None:
                self.readings.save(tmp / READINGS_DIR)
            if self.items:
                (tmp / ITEMS_DIR).mkdir()
                for name, frame in self.items.items():
                    frame.to_csv(tmp / ITEMS_DIR / f"{name}.csv", index=False)
        return out

    @classmethod
    def load(cls, path: str | Path) -> RunResults:
        """A saved run, as `save` wrote it (the edited models are not part of it: see `irunlearn.edits`)."""
        path = Path(path)
        missing = [f for f in (*(f"{t}.csv" for t in TABLES), "run.json") if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not a saved run folder: {missing} missing (write one with save()).")
        tables = {name: _read_csv(path / f"{name}.csv") for name in TABLES}
        tables |= {name: _read_csv(path / f"{name}.csv") for name in EXTRA_TABLES if (path / f"{name}.csv").is_file()}
        meta = json.loads((path / "run.json").read_text(encoding="utf-8"))
        recognizer = Recognizer.load(path / RECOGNIZER_DIR) if (path / RECOGNIZER_DIR).is_dir() else None
        readings = EntityReadings.load(path / READINGS_DIR) if (path / READINGS_DIR).is_dir() else None
        items = {f.stem: _read_csv(f) for f in sorted((path / ITEMS_DIR).glob("*.csv"))}
        return cls(
            **tables,
            configs=meta["configs"],
            provenance=meta["provenance"],
            recognizer=recognizer,
            readings=readings,
            items=items,
        )

    def read_entities(
        self,
        model: HookedTransformer,
        sae: SAE,
        entities: EntitySet,
        n_cloud: int = 200,
        seed: int = 0,
        progress: bool = False,
    ) -> RunResults:
        """Read the entities for the report's figures (`irunlearn.readings.read_entities`) with the original
        `model` and the edited models of the first task's runs (its seed, its targets); stores them in
        `readings` and returns self. Needs the in-memory `edits` of a run just made."""
        if not self.edits or self.recognizer is None:
            raise ValueError("read_entities needs the edited models and recognizer of a run just made (run(...)).")
        first = next(iter(self.edits.values()))
        same_task = [
            r for r in self.edits.values() if r.targets == first.targets and r.config.seed == first.config.seed
        ]
        self.readings = read_entities(
            model, sae, self.recognizer, same_task, entities, n_cloud=n_cloud, seed=seed, progress=progress
        )
        return self


def run(
    bench: EntityBench,
    model: HookedTransformer,
    sae: SAE,
    methods: Sequence[str] = ("sae_guided",),
    targets: Sequence[str] = (),
    n_targets: int = 1,
    seeds: Sequence[int] = (0,),
    together: bool = True,
    genuineness: bool = True,
    recognizer: Recognizer | None = None,
    n_retain_eval: int | None = None,
    metrics: Sequence[str] = (),
    oracle: Oracle | None = None,
    baselines: Sequence[str] = (),
    on_row: Callable[[dict], None] | None = None,
    progress: bool = True,
    **overrides,
) -> RunResults:
    """Forget the targets with each method, on one bench, and evaluate every edit the same way.

    Targets: the named ones, or `n_targets` known entities drawn per seed. `together`: all targets in one
    task (else one task per target). `overrides` go to every method's config (e.g. `max_steps=50`).
    The recognizer is fit once on the bench (seed `seeds[0]`) unless given.

    `metrics`: registered metrics (`metric_table()`) scored on every row beyond the battery, their
    aggregates in `summary`, their per-item values in `items`. `oracle`: the world retrained without the
    targets (`load_oracle`); every task must be its forget set. It is the evaluator's reference for the
    "oracle" metrics, and each row gains `oracle_p_known_sae` / `_resid`, the oracle's own probes reading
    it on the same names. `baselines`: reference rows per task next to the edits, `"original"` (the
    unedited model) and `"oracle"` (`oracle_row`; the oracle's probe readings of targets and strangers go
    to `oracle_probes`). `on_row` is called with each summary row as it is made (e.g. to save as you go).

    >>> run(bench, ew.model, ew.sae, ["sae_guided"], targets=names, oracle=load_oracle("forget05", ew),
    ...     baselines=["original", "oracle"], metrics=["forget_quality", "key_restoration"])
    """
    for method in methods:
        get_method(method)
    checked = [get_metric(name) for name in metrics]
    if not seeds:
        raise ValueError("Give at least one seed.")
    if not methods and not baselines:
        raise ValueError("Nothing to run: give at least one method (or a baseline such as 'original').")
    if unknown := [b for b in baselines if b not in BASELINES]:
        raise ValueError(f"Unknown baseline(s) {unknown}; choose from {BASELINES}.")
    if oracle is None and (ORACLE in baselines or any("oracle" in m.needs for m in checked)):
        needing = [m.name for m in checked if "oracle" in m.needs] + ([ORACLE] * (ORACLE in baselines))
        raise ValueError(f"{needing} need an oracle: give oracle=load_oracle(NAME, ew), or leave them out.")
    plan = []
    for seed in seeds:
        chosen = bench.targets(targets, 0 if targets else n_targets, seed)
        plan += [(seed, group) for group in ([chosen] if together else [[t] for t in chosen])]
    if oracle is not None:
        forget_set = sorted(e.name for e in oracle.forget)
        if wrong := [sorted(t.name for t in group) for _, group in plan if sorted(t.name for t in group) != forget_set]:
            raise ValueError(
                f"The oracle {oracle.name!r} was retrained without {forget_set}, but the run's tasks forget {wrong}: "
                "an oracle is a reference only for its own forget set (give those targets, together)."
            )
    if recognizer is None:
        recognizer = bench.recognizer(model, sae, seed=seeds[0], progress=progress)
    rows, per_target, histories, configs, edits = [], [], [], {}, {}
    items: dict[str, list[pd.DataFrame]] = {}
    oracle_probes = None

    def record(row: dict, evaluator: Evaluator, scored: HookedTransformer, run_id: str, extra: dict) -> None:
        for name, result in evaluator.metric_results(scored, metrics).items():
            row |= result.values
            if result.per_item is not None:
                items.setdefault(name, []).append(result.per_item.assign(run=run_id))
        rows.append(row | extra)
        if on_row is not None:
            on_row(rows[-1])

    for seed, group in tqdm(plan, desc="tasks", disable=not progress or len(plan) == 1):
        task = bench.task(model, group, recognizer)
        evaluator = bench.evaluator(model, sae, task, n_retain_eval, seed)
        extra = {}
        if oracle is not None:
            evaluator.oracle = oracle.model
            names = [t.name for t in group]
            theirs = oracle.recognizer.p_known(
                oracle.model, oracle.sae, names, evaluator.train_templates + evaluator.heldout_templates
            )
            extra = {
                "oracle_p_known_sae": float(theirs["p_known_sae"].mean()),
                "oracle_p_known_resid": float(theirs["p_known_resid"].mean()),
            }
        evaluator.checked(metrics)  # every metric's needs, before any work
        key = f"{seed}:{'+'.join(t.name for t in group)}"
        for baseline in baselines:
            if baseline == ORIGINAL:
                summary, by_target = evaluator.evaluate(model, genuineness=genuineness, progress=progress)
                row = {"stop_reason": "unedited", "steps": 0, "seconds": 0.0, **summary}
                scorer, scored = evaluator, model
            else:
                scorer = replace(evaluator, sae=oracle.sae, recognizer=oracle.recognizer)
                row, by_target = oracle_row(scorer, oracle, genuineness, progress)
                scored = oracle.model
                oracle_probes = oracle_readings(oracle, names, [u.name for u in evaluator.unknown_reference])
            run_id = f"{key}:{baseline}"
            row = {"run": run_id, "seed": seed, "method": baseline, "targets": ", ".join(t.name for t in group)} | row
            per_target.append(by_target.assign(run=run_id, seed=seed, method=baseline))
            record(row, scorer, scored, run_id, extra)
        for method in methods:
            result = forget(model, sae, task, method=method, seed=seed, progress=progress, **overrides)
            summary, by_target = evaluator.evaluate(result.model, genuineness=genuineness, progress=progress)
            run_id = f"{key}:{method}"
            row = {
                "run": run_id,
                "seed": seed,
                "method": method,
                "targets": ", ".join(result.targets),
                "stop_reason": result.stop_reason,
                "converged": result.converged,
                "persistent": result.persistent,
                "steps": result.steps,
                "seconds": result.seconds,
                **summary,
            }
            per_target.append(by_target.assign(run=run_id, seed=seed, method=method))
            if not result.history.empty:
                histories.append(result.history.assign(run=run_id))
            configs[run_id] = json.loads(result.config_json())
            edits[run_id] = result
            record(row, evaluator, result.model, run_id, extra)
    provenance = {
        "bench": bench.name,
        "seeds": list(seeds),
        "together": together,
        "hook_name": recognizer.hook_name,
        "package_version": __version__,
        "commit": git_commit(),
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "model": f"{model.cfg.model_name} ({model.cfg.n_layers} layers, d_model {model.cfg.d_model})",
        "model_hash": weights_hash(model),
        "sae": _sae_identity(sae),
        "sae_hash": weights_hash(sae),
        "recognizer_metrics": recognizer.metrics,
    }
    if oracle is not None:
        provenance["oracle"] = {"name": oracle.name, "model_hash": weights_hash(oracle.model), "path": str(oracle.path)}
    return RunResults(
        summary=pd.DataFrame(rows),
        per_target=pd.concat(per_target, ignore_index=True),
        history=pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(),
        configs=configs,
        provenance=provenance,
        recognizer=recognizer,
        oracle_probes=oracle_probes,
        items={name: pd.concat(frames, ignore_index=True) for name, frames in items.items()},
        edits=edits,
    )


def oracle_row(
    evaluator: Evaluator, oracle: Oracle, genuineness: bool = True, progress: bool = False
) -> tuple[dict[str, object], pd.DataFrame]:
    """The oracle as one more row of the metrics table: what exact unlearning (retraining without the
    targets) scores on the evaluator's own questions, people and text; and its per-target rows.

    Behaviour (forget, idk, retain, perplexity, relearning) is measured by `evaluator` on the oracle's
    model, against the same original model. The probe columns (p_known, distances, indistinguishability)
    are read by the oracle's *own* SAE and recognizer (pass an evaluator holding them, as `run` does):
    the original model's probes do not apply to another model's residual stream, and the oracle's are
    fitted without the targets, so they show what "never learned" reads as. `seconds` is the oracle's
    training time (model, SAE and recognizer), the cost exact unlearning pays; `steps` is left empty.
    """
    names = {t.name for t in evaluator.targets}
    if names != {e.name for e in oracle.forget}:
        raise ValueError(
            f"The oracle {oracle.name!r} was retrained without {sorted(e.name for e in oracle.forget)}, but the "
            f"evaluator's targets are {sorted(names)}: an oracle is a reference only for its own forget set."
        )
    summary, by_target = evaluator.evaluate(oracle.model, genuineness=genuineness, progress=progress)
    row = {
        "stop_reason": "retrained without the targets",
        "steps": float("nan"),
        "seconds": float(oracle.info.get("timings", {}).get("total_s", float("nan"))),
        **summary,
    }
    return row, by_target


def oracle_readings(
    oracle: Oracle, targets: Sequence[str], strangers: Sequence[str], templates: Sequence[Template] | None = None
) -> pd.DataFrame:
    """The oracle's own probes on the targets and on strangers: rows for the report's genuineness glance.

    One row per entity (`model` = "oracle", `role` "target" or "stranger", `entity`, `p_known_sae`,
    `p_known_resid`), means over `templates` (default: the oracle recognizer's). Where the oracle's
    targets sit against its strangers is what a genuine forget should reproduce.
    """
    names = list(targets) + list(strangers)
    roles = ["target"] * len(targets) + ["stranger"] * len(strangers)
    frame = oracle.recognizer.p_known(oracle.model, oracle.sae, names, templates)
    return frame[["entity", "p_known_sae", "p_known_resid"]].assign(model=ORACLE, role=roles)


def _sae_identity(sae: SAE) -> dict:
    """What names an SAE: architecture, widths, hook and, for a registry SAE, its release and id."""
    meta = sae.cfg.metadata
    identity = {
        "architecture": sae.cfg.architecture(),
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "hook_name": meta.hook_name,
        "release": getattr(meta, "release", None),
        "sae_id": getattr(meta, "sae_id", None),
    }
    return {key: value for key, value in identity.items() if value is not None}


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # an empty table (e.g. no history for inference-time methods)
        return pd.DataFrame()


def git_commit(path: str | Path | None = None) -> str:
    """The git commit of the checkout holding `path` (default: this package), "+dirty" when tracked files
    changed, or a note when it is not a git checkout."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout, or no git)"
    return commit + ("+dirty" if dirty else "")
