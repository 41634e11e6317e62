"""What every unlearning method shares: the task, the config, the optimisation loop and its result.

A method is a small class whose only job is its loss (as in open-unlearning): `setup` precomputes what
stays fixed (with the original weights), `step` returns the loss of the current weights and whether the
method's own stop condition holds. The loop, rollback, stop rule, collapse guard, history and timing live here, once.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from sae_lens import SAE
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from irunlearn.activations import EntityBatch, check_pairing, stop_layer
from irunlearn.entities import Entity
from irunlearn.lm import encode_lines, lm_loss, logits_at, token_nll
from irunlearn.methods.params import TrainableWeights, key_bases
from irunlearn.prompts import Template, bos_id, fact_questions, per_entity_accuracy
from irunlearn.recognition import Recognizer

if TYPE_CHECKING:
    from irunlearn.judges import Judge  # judges read the record kinds, which import the methods


@dataclass
class ForgetTask:
    """What to forget and what to keep.

    `templates` are the attribute questions used both as entity contexts (the prompt up to the name) and,
    with each entity's attributes as answers, as the facts that suppression baselines push down and retain
    terms hold up. `retain_text` is entity-free text whose next-token distribution must not move.
    `answer_eos`: a fact line's answer ends with the end-of-sequence token, which suppression pushes down
    and the stop check requires with it (the embedded world's format). Few-shot prompts of a real model
    set it False: only the answer's own tokens count, because pushing down whatever ends an answer (a
    newline the model can swap for a full stop) would "forget" an answer the model still gives.
    `unknown` are entities the model has never heard of: what a stranger's question looks like inside the
    model (sae_guided's reference for the question tokens after the name).
    `answer_judge` is the bench's answer judge (`irunlearn.judges.Judge`, e.g. the lenient one of a real
    model: aliases, demonyms, any listed occupation). With it, suppression baselines stop only when the
    target's answers are judged wrong, not merely when the gold string's exact tokens are gone (a model
    that says "United Kingdom" for "England" has not forgotten). None: the exact-token check is the judge
    (the embedded world, where answers are exact; `EntityBench.task` sets it for other judges).
    """

    targets: list[Entity]
    retain: list[Entity]
    templates: list[Template]
    retain_text: list[str]
    recognizer: Recognizer
    prepend_bos: bool = True
    answer_eos: bool = True
    unknown: list[Entity] = field(default_factory=list)
    answer_judge: Judge | None = None

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("No targets: give at least one entity to forget.")
        overlap = {e.name for e in self.targets} & {e.name for e in self.retain}
        if overlap:
            raise ValueError(f"Entities both targeted and retained: {sorted(overlap)}")
        if not any(t.attribute for t in self.templates):
            raise ValueError("ForgetTask.templates need attribute questions (Template.attribute set).")
        if self.facts(self.retain).empty:
            raise ValueError(
                f"ForgetTask.retain ({len(self.retain)} entities) has no fact the templates ask about: give at "
                "least one entity with such an attribute, whose answers must be kept (the retain terms and the "
                "collapse guard read them)."
            )
        if not self.retain_text:
            raise ValueError("ForgetTask.retain_text is empty: give entity-free text whose loss must not move.")

    def facts(self, entities: list[Entity]) -> pd.DataFrame:
        """(entity, attribute, prompt, answer) for every template whose attribute the entity has."""
        return fact_questions(entities, self.templates, questions_only=False)

    def answer_batch(self, model: HookedTransformer, entities: list[Entity]) -> AnswerBatch:
        """The fact lines of `entities`, batched with their answer tokens (and EOS with `answer_eos`) marked."""
        return AnswerBatch.build(model, self.facts(entities), self.prepend_bos, self.answer_eos)

    def retain_lines(self, entities: list[Entity], n: int, rng: random.Random) -> list[str]:
        """Up to `n` fact lines (`prompt answer`) of `entities`, then up to `n` lines of `retain_text`."""
        facts = self.facts(entities)
        lines = [f"{p} {a}" for p, a in zip(facts["prompt"], facts["answer"], strict=True)]
        return rng.sample(lines, min(n, len(lines))) + rng.sample(self.retain_text, min(n, len(self.retain_text)))

    def entity_batch(
        self, model: HookedTransformer, entities: list[Entity], templates_per_entity: int | None = None, seed: int = 0
    ) -> tuple[EntityBatch, list[str]]:
        """(entity × template) contexts, batched, with the entity name of each row.

        Every template by default; with `templates_per_entity`, that many drawn per entity (seeded; every
        template when there are fewer).
        """
        rng = random.Random(seed)

        def drawn() -> list[Template]:
            if templates_per_entity is None:
                return self.templates
            return rng.sample(self.templates, min(templates_per_entity, len(self.templates)))

        rows = [(t.prefix(e.name), e.name) for e in entities for t in drawn()]
        prompts, names = zip(*rows, strict=True)
        return EntityBatch.build(model, prompts, names, self.prepend_bos), list(names)


@dataclass
class ForgetConfig:
    """Settings every method shares. Trainable weights default to the MLPs at or before the SAE's layer.

    The collapse guard (see `CollapseGuard`) measures, every `guard_every` steps and at every step that
    would stop the run, teacher-forced greedy accuracy on `guard_lines` held retain fact lines and the
    perplexity of as many `retain_text` lines; the run rolls back and stops as "collapsed" once accuracy
    falls below `guard_min_retain` times the original model's or the perplexity ratio exceeds
    `guard_max_ppl_ratio`. `guard_every=0` turns it off.
    """

    lr: float = 1e-3
    max_steps: int = 200
    extra_steps: int = 5
    layers: tuple[int, ...] | None = None
    train_attn: bool = False
    lora_rank: int | None = None
    edit: Literal["full", "name_keys"] = "full"  # every weight of the MLPs, or only along the targets' keys
    key_rank: int = 4  # name_keys: directions per edited weight
    key_lines: int = 64  # name_keys: retain fact lines and as many retain_text lines whose inputs give C
    max_retain_kl: float = 2.0
    track_answers: bool = False  # record per-step forget_acc_train (greedy, training templates); not timed
    seed: int = 0
    in_place: bool = False
    progress: bool = True
    guard_every: int = 1
    guard_lines: int = 32
    guard_min_retain: float = 0.5
    guard_max_ppl_ratio: float = 2.0

    def __post_init__(self) -> None:
        checks = {
            "lr": (self.lr, math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
            "max_steps": (self.max_steps, _is_int(self.max_steps) and self.max_steps >= 1, "an integer >= 1"),
            "extra_steps": (self.extra_steps, _is_int(self.extra_steps) and self.extra_steps >= 0, "an integer >= 0"),
            "seed": (self.seed, _is_int(self.seed) and self.seed >= 0, "an integer >= 0"),
            "lora_rank": (
                self.lora_rank,
                self.lora_rank is None or _is_int(self.lora_rank) and self.lora_rank >= 1,
                "None or an integer >= 1",
            ),
            "edit": (self.edit, self.edit in ("full", "name_keys"), "'full' or 'name_keys'"),
            "key_rank": (self.key_rank, _is_int(self.key_rank) and self.key_rank >= 1, "an integer >= 1"),
            "key_lines": (self.key_lines, _is_int(self.key_lines) and self.key_lines >= 1, "an integer >= 1"),
            "max_retain_kl": (self.max_retain_kl, self.max_retain_kl > 0, "a number > 0"),
            "guard_every": (
                self.guard_every,
                _is_int(self.guard_every) and self.guard_every >= 0,
                "an integer >= 0 (0: no guard)",
            ),
            "guard_lines": (self.guard_lines, _is_int(self.guard_lines) and self.guard_lines >= 1, "an integer >= 1"),
            "guard_min_retain": (self.guard_min_retain, 0.0 <= self.guard_min_retain <= 1.0, "a fraction in [0, 1]"),
            "guard_max_ppl_ratio": (self.guard_max_ppl_ratio, self.guard_max_ppl_ratio > 1.0, "a ratio > 1"),
        }
        bad = [f"{name}={value!r} (must be {rule})" for name, (value, ok, rule) in checks.items() if not ok]
        if bad:
            raise ValueError(f"{type(self).__name__}: invalid {'; '.join(bad)}.")
        if self.edit == "name_keys" and (self.train_attn or self.lora_rank is not None):
            raise ValueError(
                f"{type(self).__name__}: edit='name_keys' changes MLP weights only, along the targets' keys; "
                f"give train_attn=False (now {self.train_attn}) and no lora_rank (now {self.lora_rank})."
            )


@dataclass
class StepOutput:
    """One step of a method: the loss to minimise, its terms, per-target readings, and `done`."""

    loss: Float[torch.Tensor, ""]
    terms: dict[str, float]
    per_target: pd.DataFrame  # one row per target: target, plus any readings (p_known_sae, ...)
    done: bool


DONE_REASONS = ("flipped", "suppressed")
# "Forgotten" also means the target's training questions go unanswered: at most this fraction of them judged
# right on the returned weights (the suppression baselines' own default stop level).
MAX_ANSWERED = 0.05


@dataclass
class UnlearnResult:
    """The edited model (a copy unless `in_place`), the per-step history, and why the run stopped.

    `final_probes`: both probes' reading of every target on the returned weights (mean over the task's
    templates; columns target, p_known_sae, p_known_resid). A target either probe reads at ≥ 0.5 is still
    known (`still_known`), and then the run is not converged whatever the method's own check said: such a
    run's `stop_reason` is "still_known" (the method's check passed, a probe did not) or the reason it was
    cut short ("max_steps", "collapsed", ...), and a `StillKnownWarning` names the numbers.
    `final_answers`: per target, the fraction of its training questions still answered right on the
    returned weights (by the task's `answer_judge`, else the exact answer); above `MAX_ANSWERED` the target
    is `still_answered`, the run is not converged either (`stop_reason` "still_answered" where the method's
    own check passed) and warns the same way.
    """

    method: str
    model: HookedTransformer
    history: pd.DataFrame
    config: ForgetConfig
    targets: list[str]
    stop_reason: str
    steps: int  # optimiser updates applied
    seconds: float
    persistent: bool = True  # False for inference-time methods (hooks attached, no weight edit)
    info: dict = field(default_factory=dict)
    final_probes: pd.DataFrame = field(default_factory=pd.DataFrame)
    final_answers: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def still_answered(self) -> pd.DataFrame:
        """(target, answered) for every target whose training questions are still answered above `MAX_ANSWERED`."""
        if self.final_answers.empty:
            return pd.DataFrame(columns=["target", "answered"])
        return self.final_answers[self.final_answers["answered"] > MAX_ANSWERED].reset_index(drop=True)

    @property
    def still_known(self) -> pd.DataFrame:
        """(target, probe, p_known) for every target a probe ("sae" or "resid") still reads as known."""
        return still_known(self.final_probes)

    @property
    def converged(self) -> bool:
        """The method's goal was reached, the collapse guard passed the returned weights, both probes read
        every target as unknown (p_known < 0.5) and no target's questions are still answered."""
        return self.stop_reason in DONE_REASONS and self.still_known.empty and self.still_answered.empty

    def config_json(self) -> str:
        return json.dumps({"method": self.method, **asdict(self.config)}, default=str)


class Method:
    """Base class of an unlearning method: `setup` once, then `step` per optimiser step."""

    name: ClassVar[str]
    config_class: ClassVar[type[ForgetConfig]] = ForgetConfig
    done_reason: ClassVar[str] = "suppressed"
    inference_only: ClassVar[bool] = False  # True: no training; `attach` hooks onto a copy instead

    def __init__(self, task: ForgetTask, sae: SAE, config: ForgetConfig):
        self.task, self.sae, self.config = task, sae, config

    def setup(self, model: HookedTransformer) -> None:
        """Precompute fixed quantities with the original weights (called before the first step)."""

    def step(self, model: HookedTransformer) -> StepOutput:
        raise NotImplementedError

    def attach(self, model: HookedTransformer) -> None:
        """For inference-time methods: add hooks to `model` instead of training."""
        raise NotImplementedError


def run(method: Method, model: HookedTransformer) -> UnlearnResult:
    """Apply `method` to a copy of `model` (or `model` itself with `in_place`) and time it.

    Weight-editing methods optimise until their stop rule (see `_optimise`); inference-time methods
    attach their hooks instead.
    """
    config = method.config
    hook_name = check_pairing(model, method.sae)
    _seed_everything(config.seed)
    edited = model if config.in_place else copy.deepcopy(model)
    start = time.perf_counter()
    final_probes = final_answers = pd.DataFrame()
    if method.inference_only:
        method.attach(edited)
        history, stop_reason, steps, untimed = pd.DataFrame(), "hooks_attached", 0, 0.0
    else:
        history, stop_reason, steps, untimed = _optimise(method, edited, hook_name)
        final_probes, final_answers, stop_reason = _forgotten_check(method, edited, stop_reason, steps)
    return UnlearnResult(
        method=method.name,
        model=edited,
        history=history,
        config=config,
        targets=[e.name for e in method.task.targets],
        stop_reason=stop_reason,
        steps=steps,
        seconds=time.perf_counter() - start - untimed,
        persistent=not method.inference_only,
        final_probes=final_probes,
        final_answers=final_answers,
    )


def still_known(probes: pd.DataFrame) -> pd.DataFrame:
    """(target, probe, p_known) for each target of `probes` (target, p_known_sae, p_known_resid) that a
    probe reads at ≥ 0.5."""
    if probes.empty:
        return pd.DataFrame(columns=["target", "probe", "p_known"])
    long = probes.melt(
        id_vars="target", value_vars=["p_known_sae", "p_known_resid"], var_name="probe", value_name="p_known"
    )
    long["probe"] = long["probe"].str.removeprefix("p_known_")
    return long[long["p_known"] >= 0.5].reset_index(drop=True)


def _forgotten_check(
    method: Method, model: HookedTransformer, stop_reason: str, steps: int
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Both probes and the answers on the returned weights; "done" only if neither probe reads a target as
    known and no target's training questions are answered above `MAX_ANSWERED`.

    A method's own stop check can pass while a probe still reads the target as known (a suppression
    baseline's answers gone, the residual untouched) or while the answers remain (a probe flipped, the facts
    still stated: `sae_guided` on a model whose SAE carries little of what the answers read). Then the run
    did not forget by this project's definition: its stop reason becomes "still_known" or "still_answered"
    and, as for any run that ends so, a `StillKnownWarning` names the numbers.
    """
    task = method.task
    probes = task.recognizer.p_known(model, method.sae, [e.name for e in task.targets], task.templates)
    probes = probes[["entity", "p_known_sae", "p_known_resid"]].rename(columns={"entity": "target"})
    from irunlearn.judges import ExactJudge  # judges read the record kinds, which import the methods

    facts = fact_questions(task.targets, task.templates)
    judge = task.answer_judge if task.answer_judge is not None else ExactJudge(answer_eos=task.answer_eos)
    answered = per_entity_accuracy(facts, judge.correct(model, facts, task.prepend_bos))
    answers = pd.DataFrame({"target": answered.index, "answered": answered.to_numpy()})
    known, answered = still_known(probes), answers[answers["answered"] > MAX_ANSWERED]
    if known.empty and answered.empty:
        return probes, answers, stop_reason
    if stop_reason in DONE_REASONS:
        stop_reason = "still_known" if len(known) else "still_answered"
    listed = [f"{r.target!r}: {r.probe} probe p_known={r.p_known:.2f}" for r in known.itertuples()]
    listed += [f"{r.target!r}: {r.answered:.0%} of its questions still answered" for r in answered.itertuples()]
    warnings.warn(
        f"{method.name}: after {steps} update(s) (stop_reason={stop_reason!r}) a target is not forgotten "
        f"({'; '.join(listed)}; thresholds: p_known 0.5, answered {MAX_ANSWERED:g}): not converged.",
        StillKnownWarning,
        stacklevel=4,  # the caller of forget()
    )
    return probes, answers, stop_reason


def edited_layers(config: ForgetConfig, hook_name: str, n_layers: int) -> tuple[int, ...]:
    """The blocks a run edits: `config.layers`, else every block up to the SAE's hook block, included."""
    return config.layers if config.layers is not None else tuple(range(stop_layer(hook_name) or n_layers))


def _optimise(method: Method, model: HookedTransformer, hook_name: str) -> tuple[pd.DataFrame, str, int, float]:
    """The optimisation loop: step, guard, roll back, stop `extra_steps` after done.

    A step whose loss is not finite, whose retain KL exceeds `max_retain_kl`, or whose weights the collapse
    guard fails (checked every `guard_every` steps, at every step that would stop the run, and on the
    final weights) ends the run with the last weights that passed, the updates that produced them, and a
    `RollbackWarning` naming the numbers. Returns the history, the stop reason, the updates applied to the
    returned weights and the seconds spent on `track_answers` (left out of every time it reports: the
    history's `seconds` count from the start, setup and guard included).
    """
    config = method.config
    start, monitor_seconds = time.perf_counter(), 0.0
    layers = edited_layers(config, hook_name, model.cfg.n_layers)
    bases = target_key_bases(model, method.task, layers, config) if config.edit == "name_keys" else None
    weights = TrainableWeights(model, layers, config.train_attn, config.lora_rank, bases)
    optimizer = torch.optim.Adam(weights.parameters(), lr=config.lr)
    method.sae.requires_grad_(False)
    method.setup(model)
    task = method.task
    guard = CollapseGuard.build(model, task, config) if config.guard_every else None
    records, stop_reason, done_since, problem = [], "max_steps", None, None
    tic = time.perf_counter()
    monitor = task.answer_batch(model, task.targets) if config.track_answers else None
    monitor_seconds += time.perf_counter() - tic
    good, good_updates = weights.snapshot(), 0
    bar = tqdm(range(config.max_steps), desc=method.name, disable=not config.progress, leave=False)
    for step in bar:
        out = method.step(model)
        health, checked = None, guard is None
        if guard is not None:  # the original weights (step 0) need no measuring
            checked = step == 0 or out.done or step % config.guard_every == 0
            health = guard.original if step == 0 else guard.measure(model) if checked else None
        problem = _problem(out, config, guard, health, step)
        if problem is not None:
            break
        if monitor is not None and "forget_acc_train" not in out.per_target:
            tic = time.perf_counter()
            out.per_target["forget_acc_train"] = out.per_target["target"].map(monitor.forget_acc(model))
            monitor_seconds += time.perf_counter() - tic
        elapsed = time.perf_counter() - start - monitor_seconds
        guard_columns = {} if health is None else {"guard_retain_acc": health[0], "guard_ppl_ratio": health[1]}
        records.append(
            out.per_target.assign(step=step, seconds=elapsed, loss=out.loss.item(), **out.terms, **guard_columns)
        )
        bar.set_postfix(loss=f"{out.loss.item():.3f}")
        if out.done:
            done_since = step if done_since is None else done_since
            if step - done_since >= config.extra_steps:
                stop_reason, updates = method.done_reason, step
                break
        else:
            done_since = None
        if checked:  # these weights passed every check
            good, good_updates = weights.snapshot(), step
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
    else:  # max_steps: the last update's weights have not been checked yet
        updates = config.max_steps
        if guard is not None and guard.collapsed(health := guard.measure(model)):
            problem = "collapsed", f"{guard.describe(health)} on the final weights (after step {config.max_steps - 1})"
    if problem is not None:
        stop_reason, message = problem
        weights.restore(good)
        updates = good_updates
        warnings.warn(
            f"{method.name}: {message}; rolled back to the weights after {updates} update(s) "
            f"(stop_reason={stop_reason!r}, not converged). Try a lower lr (now {config.lr:g}).",
            RollbackWarning,
            stacklevel=3,
        )
    weights.finish()
    model.eval()
    history = pd.concat(records, ignore_index=True) if records else pd.DataFrame()
    return history, stop_reason, updates, monitor_seconds


def target_key_bases(
    model: HookedTransformer, task: ForgetTask, layers: tuple[int, ...], config: ForgetConfig
) -> dict[tuple[int, str], torch.Tensor]:
    """`params.key_bases` for `edit="name_keys"`: the keys at the targets' names' last tokens in every
    template, against `key_lines` of the retain people's fact lines and as many `retain_text` lines."""
    rng = random.Random(config.seed)
    names, _ = task.entity_batch(model, task.targets)
    retain = rng.sample(task.retain, min(config.key_lines, len(task.retain)))
    lines = task.retain_lines(retain, config.key_lines, rng)
    tokens, mask = encode_lines(model.tokenizer, lines, model.cfg.n_ctx, task.prepend_bos, device=model.cfg.device)
    return key_bases(model, names.tokens, names.positions, tokens, mask, layers, config.key_rank)


def _problem(
    out: StepOutput,
    config: ForgetConfig,
    guard: CollapseGuard | None,
    health: tuple[float, float] | None,
    step: int,
) -> tuple[str, str] | None:
    """(stop reason, what was wrong) if this step's weights must be rolled back, else None."""
    step_loss = out.loss.item()
    if not math.isfinite(step_loss):
        return "nan", f"the loss is not finite ({step_loss}) at step {step}"
    retain_kl = out.terms.get("retain_kl", 0.0)
    if retain_kl > config.max_retain_kl:
        return "retain_blowup", (
            f"the retain KL {retain_kl:.3g} exceeds max_retain_kl={config.max_retain_kl:g} at step {step}"
        )
    if guard is not None and health is not None and guard.collapsed(health):
        return "collapsed", f"{guard.describe(health)} at step {step}"
    return None


class RollbackWarning(UserWarning):
    """An unlearning run was stopped and rolled back to earlier weights (NaN loss, retain blow-up, collapse)."""


class StillKnownWarning(UserWarning):
    """An unlearning run ended with a target not forgotten: a probe (SAE or residual) still reads it as known
    (p ≥ 0.5), or its questions are still answered (above `MAX_ANSWERED`)."""


@dataclass
class CollapseGuard:
    """A cheap no-grad health check of the weights being edited, against the original model's own figures.

    A forgetting loss can stay finite while the model is destroyed (gradient ascent at `lr=1e6` wipes every
    answer in one step), and not every method has a retain term to watch, so the loop checks the model
    itself: teacher-forced greedy accuracy on held retain fact lines (as `AnswerBatch.greedy_hits`) and the
    perplexity of generic `retain_text` lines. Both line sets are drawn once with a private seeded RNG (the
    global RNGs are untouched, so a healthy run's numbers do not change) and measured on the original
    weights. Collapse: accuracy below `min_retain` times the original's, or a perplexity ratio above
    `max_ppl_ratio`, or either not finite.
    """

    answers: AnswerBatch
    text_tokens: Int[torch.Tensor, "lines pos"]
    text_mask: Bool[torch.Tensor, "lines pos"]
    min_retain: float
    max_ppl_ratio: float
    original_nll: float = math.nan
    original: tuple[float, float] = (math.nan, 1.0)  # (retain accuracy, perplexity ratio) of the original

    @classmethod
    def build(cls, model: HookedTransformer, task: ForgetTask, config: ForgetConfig) -> CollapseGuard:
        """`config.guard_lines` retain fact lines and as many generic lines (seeded), measured on `model` as is."""
        rng = random.Random(config.seed)
        facts = task.facts(task.retain)
        rows = sorted(rng.sample(range(len(facts)), min(config.guard_lines, len(facts))))
        answers = AnswerBatch.build(model, facts.iloc[rows], task.prepend_bos, task.answer_eos)
        text = rng.sample(task.retain_text, min(config.guard_lines, len(task.retain_text)))
        tokens, mask = encode_lines(model.tokenizer, text, model.cfg.n_ctx, task.prepend_bos, device=model.cfg.device)
        guard = cls(answers, tokens, mask, config.guard_min_retain, config.guard_max_ppl_ratio)
        accuracy, guard.original_nll = guard._readings(model)
        guard.original = (accuracy, 1.0)
        return guard

    @torch.no_grad()
    def _readings(self, model: HookedTransformer) -> tuple[float, float]:
        accuracy = self.answers.model_hits(model).float().mean().item()
        return accuracy, lm_loss(model, self.text_tokens, self.text_mask).item()

    def measure(self, model: HookedTransformer) -> tuple[float, float]:
        """(held retain accuracy, generic-text perplexity ratio to the original) of `model` now."""
        accuracy, nll = self._readings(model)
        return accuracy, math.exp(min(nll - self.original_nll, 700.0))

    def collapsed(self, health: tuple[float, float]) -> bool:
        accuracy, ppl_ratio = health
        return not (accuracy >= self.min_retain * self.original[0] and ppl_ratio <= self.max_ppl_ratio)

    def describe(self, health: tuple[float, float]) -> str:
        accuracy, ppl_ratio = health
        return (
            f"the model collapsed: held retain accuracy {accuracy:.3f} (original "
            f"{self.original[0]:.3f}, floor guard_min_retain={self.min_retain:g} × original), generic-text "
            f"perplexity ratio {ppl_ratio:.3g} (ceiling guard_max_ppl_ratio={self.max_ppl_ratio:g})"
        )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Shared loss pieces ---------------------------------------------------------------------------------


@dataclass
class AnswerBatch:
    """Prompt+answer lines batched, with a mask selecting the answer tokens (and the EOS after them when
    the lines end with one)."""

    tokens: Int[torch.Tensor, "batch pos"]
    mask: Bool[torch.Tensor, "batch pos"]  # real tokens
    answer_mask: Bool[torch.Tensor, "batch pos_minus_1"]  # targets that belong to the answer
    entity: list[str]

    @classmethod
    def build(
        cls, model: HookedTransformer, facts: pd.DataFrame, prepend_bos: bool, append_eos: bool = True
    ) -> AnswerBatch:
        tokenizer = model.tokenizer
        lines = [f"{p} {a}" for p, a in zip(facts["prompt"], facts["answer"], strict=True)]
        tokens, mask = encode_lines(tokenizer, lines, model.cfg.n_ctx, prepend_bos, append_eos, device=model.cfg.device)
        # The answer starts where the line's tokens stop agreeing with the prompt's own tokens.
        answer_start = []
        for row, prompt in zip(tokens.tolist(), facts["prompt"], strict=True):
            prompt_ids = ([bos_id(tokenizer)] if prepend_bos else []) + tokenizer(prompt, add_special_tokens=False)[
                "input_ids"
            ]
            common = next((i for i, (a, b) in enumerate(zip(row, prompt_ids, strict=False)) if a != b), len(prompt_ids))
            answer_start.append(common)
        positions = torch.arange(tokens.shape[1] - 1, device=tokens.device)
        # target position i predicts token i+1: answer targets are those with i+1 >= answer_start
        starts = torch.tensor(answer_start, device=tokens.device)
        answer_mask = (positions[None, :] + 1 >= starts[:, None]) & mask[:, 1:]
        return cls(tokens, mask, answer_mask, facts["entity"].tolist())

    def select(self, index: Int[torch.Tensor, " k"]) -> AnswerBatch:
        """The lines at `index`, in that order."""
        entity = [self.entity[r] for r in index.tolist()]
        return AnswerBatch(self.tokens[index], self.mask[index], self.answer_mask[index], entity)

    def first_answer_position(self) -> Int[torch.Tensor, " batch"]:
        """Per line, the position whose logits predict the answer's first token (the answer starts one later)."""
        return self.answer_mask.float().argmax(-1)

    def answer_nll(self, logits: Float[torch.Tensor, "batch pos vocab"]) -> Float[torch.Tensor, " batch"]:
        """Summed NLL of each row's answer tokens."""
        return (token_nll(logits, self.tokens, self.mask) * self.answer_mask).sum(-1)

    def greedy_hits(self, logits: Float[torch.Tensor, "batch pos vocab"]) -> Bool[torch.Tensor, " batch"]:
        """Whether greedy decoding would produce each row's answer exactly (teacher-forced check)."""
        correct = logits[:, :-1].argmax(-1) == self.tokens[:, 1:]
        return (correct | ~self.answer_mask).all(-1)

    @torch.no_grad()
    def model_hits(self, model: HookedTransformer) -> Bool[torch.Tensor, " batch"]:
        """`greedy_hits` of `model`, unembedding only the positions that predict answer tokens."""
        columns = self.answer_mask.any(0).nonzero()[:, 0]
        low, high = int(columns.min()), int(columns.max()) + 1
        correct = logits_at(model, self.tokens, low, high).argmax(-1) == self.tokens[:, low + 1 : high + 1]
        return (correct | ~self.answer_mask[:, low:high]).all(-1)

    def forget_acc(self, model: HookedTransformer, logits: torch.Tensor | None = None) -> pd.Series:
        """Per entity: fraction of its facts still answered exactly (from `logits` if already computed)."""
        hits = self.model_hits(model) if logits is None else self.greedy_hits(logits)
        hits = pd.Series(hits.float().cpu().numpy(), index=self.entity)
        return hits.groupby(level=0, sort=False).mean()


def kl_to_reference(
    logits: Float[torch.Tensor, "batch pos vocab"],
    ref_logprobs: Float[torch.Tensor, "batch pos vocab"],
    mask: Bool[torch.Tensor, "batch pos"],
) -> Float[torch.Tensor, ""]:
    """Mean over real positions of KL(p_ref ‖ p_θ)."""
    logprobs = logits.log_softmax(-1)
    kl = (ref_logprobs.exp() * (ref_logprobs - logprobs)).sum(-1)
    return (kl * mask).sum() / mask.sum()


def standardized_drift(
    states: Float[torch.Tensor, "batch pos d_model"],
    reference: Float[torch.Tensor, "batch pos d_model"],
    mask: Bool[torch.Tensor, "batch pos"],
    variance: Float[torch.Tensor, " d_model"],
) -> Float[torch.Tensor, ""]:
    """Mean over real positions and dimensions of (h − h_ref)² / var: how far residuals moved, each dimension
    against its own spread over the reference tokens (a few of a model's residual dimensions can be orders
    of magnitude larger than the rest and would otherwise decide alone)."""
    drift = ((states - reference).square() / variance).mean(-1)
    return (drift * mask).sum() / mask.sum()


def latent_readings(
    recognizer: Recognizer,
    latents: Float[torch.Tensor, "n d_sae"],
    resid: Float[torch.Tensor, "n d_model"],
    names: list[str],
) -> pd.DataFrame:
    """Per-target probe p (SAE and residual) and centroid distances, means over contexts."""
    with torch.no_grad():
        return recognizer.describe(resid.detach(), latents.detach(), names).rename(columns={"entity": "target"})
