"""The whole pipeline on a real model: labelled entities → recognition → forgetting → evaluation.

    entity_set, answers = label_entities(model, load_entities("city", ...))      # irunlearn.real.labelling
    result = run_real_pipeline(model, sae, entity_set, answers)                 # this module

`run_real_pipeline` fits recognition (probes reported on held-out entities × held-out templates), picks
targets the model demonstrably knows, forgets each target on its own with every configured method and
scores the edited copies with `RealEvaluator`, before and after. Choices that matter for reading numbers:

- **Targets** come from the known entities the probes were *not* fit on (recognition's own 60/40 entity
  split), both probes must read them as known (p ≥ 0.5, else `forget` refuses them), and at least one of
  their correct answers must differ from the answer the model gives most often to unknown entities, so
  that the target is known for more than a lucky default guess.
- **Facts to forget are the model's own correct answers.** Suppression baselines push down a fact
  string; the model's phrasing ("China", "2.1 million") is what it produces, the Wikidata gold
  ("People's Republic of China", "2148000") often is not. Evaluation checks answers against the gold.
- **Retain sets are disjoint**: the entities a method holds fixed while editing are not the ones
  `retain_acc` is measured on, and the generic text it keeps is the `"train"` part of the prose, while
  `ppl_ratio` reads the `"heldout"` part. Likewise the unknown entities `sae_guided` aims its target's
  questions at are not the strangers `idk_rate` compares with.
- **Answers are their own tokens**: a few-shot answer ends with whatever the model chooses (newline, full
  stop), so suppression pushes down and stop checks require only the answer's tokens (`answer_eos=False`).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sae_lens import SAE
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from irunlearn.activations import sae_hook_name, stop_layer
from irunlearn.entities import Entity, EntitySet
from irunlearn.methods import ForgetTask, forget
from irunlearn.real.corpus import generic_paragraphs
from irunlearn.real.evaluation import RealEvaluator
from irunlearn.real.labelling import label_entities
from irunlearn.real.wikidata import attributes, load_entities, question_templates, split_values
from irunlearn.recognition import Recognizer, fit_recognizer

# Per-target metrics reported before and after each edit.
TARGET_METRICS = (
    "forget_acc",
    "paraphrase_forget_acc",
    "idk_rate",
    "probe_p_known_sae",
    "probe_p_known_resid",
    "dist_ratio",
)


def _default_overrides() -> dict[str, dict]:
    # Sized for a 135M model on a laptop CPU (DESIGN §7): small retain batches and bounded steps (the layer
    # window is `RealPipelineConfig.layer_window`). grad_ascent's rate is the sweep's choice
    # (analysis/sweep_real_smollm2.py): the one reaching forget_acc ≤ 0.05 with the best retain accuracy.
    return {
        "sae_guided": {
            "max_steps": 40,
            "n_retain_entities": 8,
            "retain_templates_per_entity": 1,
            "n_retain_text": 4,
        },
        "grad_ascent": {"lr": 3e-5, "max_steps": 30},
    }


@dataclass
class RealPipelineConfig:
    """What `run_real_pipeline` does.

    `method_overrides` go to `forget` per method (`max_steps`, `lr`, ...). `layer_window`: every method
    edits the MLPs of that many layers ending at the SAE's hook layer (None: all layers up to it, the
    methods' default); a `layers` entry in `method_overrides` wins.
    """

    n_targets: int = 3
    methods: tuple[str, ...] = ("sae_guided", "grad_ascent")
    n_retain: int = 16
    n_retain_eval: int = 20
    n_unknown_reference: int = 8
    n_generic_eval: int = 40
    n_generic_latents: int = 48
    top_k: int = 20
    seed: int = 0
    layer_window: int | None = 6
    method_overrides: dict[str, dict] = field(default_factory=_default_overrides)


@dataclass
class RealPipelineResult:
    """Everything `run_real_pipeline` measured.

    `counts`: known / unknown / discarded per kind. `runs`: one row per (method, target) with
    `<metric>_before` / `<metric>_after` for `TARGET_METRICS`, the target's answers to the training
    questions before / after, `retain_acc_before` / `retain_acc_after` (accuracy on the retain-evaluation
    entities) and their ratio `retain_acc`, `ppl_ratio`, `seconds` (wall time of the optimisation),
    `cpu_seconds` (this process's CPU time over the whole `forget` call), `steps`, `stop_reason`,
    `converged`. `histories`: each run's per-step history by (method, target). `unknown_reference`: what
    the probes read for the unknown entities `idk_rate` compares with (the level a forgotten target should
    reach).
    """

    counts: pd.DataFrame
    recognizer: Recognizer
    targets: list[Entity]
    before: pd.DataFrame
    runs: pd.DataFrame
    histories: dict[tuple[str, str], pd.DataFrame]
    baseline: dict
    unknown_reference: pd.DataFrame  # probe readings of the unknown reference entities, original model


def label_counts(answers: pd.DataFrame) -> pd.DataFrame:
    """Known / unknown / discarded entities per kind, from `label_entities`' answer table."""
    counts = pd.crosstab(answers["kind"], answers["label"])
    for label in ("known", "unknown", "discarded"):
        if label not in counts:
            counts[label] = 0
    counts = counts[["known", "unknown", "discarded"]]
    counts["total"] = counts.sum(axis=1)
    return counts.reset_index().rename_axis(columns=None)


def cities_above(population: float, data_dir: str | Path | None = None) -> list[Entity]:
    """Cities with at least `population` inhabitants (the largest figure where Wikidata lists several), in
    record order: a sample of the world's big cities, which a small model knows best."""

    def largest(city: Entity) -> float:
        values = split_values(city.attributes.get("population", ""))
        return max((float(v) for v in values if v.replace(".", "", 1).isdigit()), default=0.0)

    return [c for c in load_entities("city", data_dir=data_dir) if largest(c) >= population]


def label_cities(
    model: HookedTransformer,
    min_population: float = 1e6,
    n_random: int = 100,
    seed: int = 0,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[EntitySet, pd.DataFrame]:
    """Cities of at least `min_population` plus `n_random` random cities, labelled by `model`'s answers.

    The big cities give most of the known ones, the random sample (mostly small towns) most of the unknown
    ones. Each part is labelled and cached on its own (`label_entities`); a city in both counts once.
    """
    big = cities_above(min_population, data_dir)
    names = {c.name for c in big}
    extra = [c for c in load_entities("city", n=n_random, seed=seed, data_dir=data_dir) if c.name not in names]
    parts = [label_entities(model, part, progress=progress) for part in (big, extra) if part]
    entity_set = EntitySet([e for s, _ in parts for e in s.known], [e for s, _ in parts for e in s.unknown])
    return entity_set, pd.concat([answers for _, answers in parts], ignore_index=True)


def entity_kind(entities: EntitySet) -> str:
    """The one kind of entity in `entities` (recognition templates are per kind)."""
    kinds = {e.kind for e in entities}
    if len(kinds) != 1:
        raise ValueError(f"The pipeline runs on one entity kind at a time; got {sorted(kinds)}.")
    return kinds.pop()


def recognise(
    model: HookedTransformer,
    sae: SAE,
    entities: EntitySet,
    *,
    top_k: int = 20,
    seed: int = 0,
    n_generic_latents: int = 48,
    progress: bool = True,
) -> Recognizer:
    """`fit_recognizer` with the kind's attribute questions: fit on "train" templates, report on "heldout".

    Latents firing on more than 2% of the tokens of `n_generic_latents` generic paragraphs are kept out
    of the top-k lists.
    """
    kind = entity_kind(entities)
    generic = random.Random(seed).sample(generic_paragraphs("train"), n_generic_latents)
    return fit_recognizer(
        model,
        sae,
        entities,
        question_templates(kind, "train"),
        question_templates(kind, "heldout"),
        top_k=top_k,
        seed=seed,
        prepend_bos=model.cfg.default_prepend_bos,
        generic_texts=generic,
        progress=progress,
    )


def default_answers(answers: pd.DataFrame) -> dict[str, str]:
    """Per attribute, the answer the model gives most often to entities labelled unknown."""
    unknown = answers[answers["label"] == "unknown"]
    out = {}
    for column in answers.columns:
        if column.endswith("_answer") and len(unknown[column].dropna()):
            out[column.removesuffix("_answer")] = Counter(unknown[column].dropna()).most_common(1)[0][0]
    return out


def model_facts(entity: Entity, answers: pd.DataFrame) -> Entity:
    """`entity` with only the attributes the model answered correctly, valued by the model's own answers."""
    row = answers.set_index("name").loc[entity.name]
    facts = {
        spec.name: row[f"{spec.name}_answer"]
        for spec in attributes(entity.kind)
        if bool(row.get(f"{spec.name}_correct", False))
    }
    return Entity(entity.name, facts, entity.kind)


def choose_targets(
    model: HookedTransformer,
    sae: SAE,
    recognizer: Recognizer,
    entities: EntitySet,
    answers: pd.DataFrame,
    n: int = 3,
    seed: int = 0,
) -> list[Entity]:
    """`n` known entities to forget, drawn with `seed` among the eligible (see the module doc).

    Raises ValueError naming the counts when fewer than `n` are eligible.
    """
    _, held_out = entities.split(0.6, seed)  # the entities `fit_recognizer(seed=seed)` did not fit on
    defaults = default_answers(answers)
    table = answers.set_index("name")
    specific = [
        e
        for e in held_out.known
        if any(
            bool(table.at[e.name, f"{a}_correct"]) and table.at[e.name, f"{a}_answer"] != default
            for a, default in defaults.items()
            if f"{a}_correct" in table
        )
    ]
    if specific:
        readings = recognizer.p_known(model, sae, [e.name for e in specific])
        recognised = set(readings.loc[(readings["p_known_sae"] >= 0.5) & (readings["p_known_resid"] >= 0.5), "entity"])
    else:
        recognised = set()
    eligible = [e for e in specific if e.name in recognised]
    if len(eligible) < n:
        raise ValueError(
            f"Only {len(eligible)} eligible targets (held-out known: {len(held_out.known)}, known beyond default "
            f"answers: {len(specific)}, recognised by both probes: {len(recognised)}); asked for {n}."
        )
    return random.Random(seed).sample(eligible, n)


def real_task(
    model: HookedTransformer,
    target: Entity,
    retain: Sequence[Entity],
    answers: pd.DataFrame,
    recognizer: Recognizer,
    unknown: Sequence[Entity] = (),
) -> ForgetTask:
    """Forget `target`'s facts as the model states them; hold `retain` and generic prose fixed; `unknown`
    entities are the strangers `sae_guided` makes the target's questions look like."""
    return ForgetTask(
        targets=[model_facts(target, answers)],
        retain=[model_facts(e, answers) for e in retain],
        templates=question_templates(target.kind, "train"),
        retain_text=generic_paragraphs("train"),
        recognizer=recognizer,
        prepend_bos=bool(model.cfg.default_prepend_bos),
        answer_eos=False,  # a few-shot answer's own tokens; what ends it is the model's choice
        unknown=list(unknown),
    )


def run_real_pipeline(
    model: HookedTransformer,
    sae: SAE,
    entities: EntitySet,
    answers: pd.DataFrame,
    config: RealPipelineConfig | None = None,
    progress: bool = True,
    recognizer: Recognizer | None = None,
    targets: Sequence[Entity] | None = None,
) -> RealPipelineResult:
    """Recognise, choose targets, forget each with every method, evaluate before and after.

    `entities` and `answers` come from `label_entities`. A `recognizer` already fit on them by `recognise`
    (same seed) is reused instead of fitting a new one; `targets` are forgotten instead of
    `choose_targets`' pick.

    >>> result = run_real_pipeline(model, sae, entity_set, answers)
    >>> result.runs[["method", "target", "forget_acc_before", "forget_acc_after", "seconds"]]
    """
    config = config or RealPipelineConfig()
    recognizer = recognizer or recognise(
        model,
        sae,
        entities,
        top_k=config.top_k,
        seed=config.seed,
        n_generic_latents=config.n_generic_latents,
        progress=progress,
    )
    if targets is None:
        targets = choose_targets(model, sae, recognizer, entities, answers, config.n_targets, config.seed)
    targets = list(targets)
    rng = random.Random(config.seed)
    others = [e for e in entities.known if e.name not in {t.name for t in targets}]
    rng.shuffle(others)
    retain, retain_eval = others[: config.n_retain], others[config.n_retain : config.n_retain + config.n_retain_eval]
    generic_eval = rng.sample(
        generic_paragraphs("heldout"), min(config.n_generic_eval, len(generic_paragraphs("heldout")))
    )
    strangers = rng.sample(entities.unknown, min(config.n_unknown_reference, len(entities.unknown)))
    references = [u for u in entities.unknown if u not in strangers]  # the methods' unknowns: not the evaluator's
    evaluator = RealEvaluator(model, sae, recognizer, targets, retain_eval, strangers, generic_eval)
    before = evaluator.per_target(model)
    stranger_readings = recognizer.p_known(model, sae, [u.name for u in strangers])
    end = stop_layer(sae_hook_name(sae)) or model.cfg.n_layers  # the hook's block, included
    rows, histories = [], {}
    jobs = [(method, target) for method in config.methods for target in targets]
    for method, target in tqdm(jobs, desc="forget", disable=not progress):
        task = real_task(model, target, retain, answers, recognizer, references)
        overrides = {"seed": config.seed, "progress": progress, **config.method_overrides.get(method, {})}
        if config.layer_window is not None:
            overrides.setdefault("layers", tuple(range(max(0, end - config.layer_window), end)))
        cpu_start = time.process_time()
        result = forget(model, sae, task, method=method, **overrides)
        cpu_seconds = time.process_time() - cpu_start
        summary, after = evaluator.evaluate(result.model, [target])
        was = before.set_index("target").loc[target.name]
        now = after.set_index("target").loc[target.name]
        row = {"method": method, "target": target.name}
        for metric in TARGET_METRICS:
            row[f"{metric}_before"], row[f"{metric}_after"] = float(was[metric]), float(now[metric])
        row |= {
            "answers_before": was["answers"],
            "answers_after": now["answers"],
            "retain_acc_before": evaluator.baseline["retain_acc_abs"],
            "retain_acc_after": summary["retain_acc_abs"],
            "retain_acc": summary["retain_acc"],
            "ppl_ratio": summary["ppl_ratio"],
            "seconds": result.seconds,
            "cpu_seconds": cpu_seconds,
            "steps": result.steps,
            "stop_reason": result.stop_reason,
            "converged": result.converged,
        }
        rows.append(row)
        histories[(method, target.name)] = result.history
    return RealPipelineResult(
        counts=label_counts(answers),
        recognizer=recognizer,
        targets=targets,
        before=before,
        runs=pd.DataFrame(rows),
        histories=histories,
        baseline=evaluator.baseline,
        unknown_reference=stranger_readings,
    )
