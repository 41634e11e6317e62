"""Is the forgetting genuine? The metrics of DESIGN §5, computed for an edited model against the original.

`Evaluator` measures the original model once (retain accuracy, perplexity) and then scores any number
of edited models on the same footing, so methods compare on identical data.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pandas as pd
import torch
from sae_lens import SAE
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from irunlearn.activations import encode_latents, extract_activations
from irunlearn.entities import UNKNOWN_ANSWER, Entity
from irunlearn.judges import ExactJudge, Judge
from irunlearn.lm import encode_lines, lm_loss, perplexity
from irunlearn.metrics import Metric, MetricResult, get_metric, metrics_in, register_metric
from irunlearn.probes import auroc
from irunlearn.prompts import Template, fact_questions, names_in_place, per_entity_accuracy
from irunlearn.qa import answer_logprob, greedy_matches, greedy_token_ids
from irunlearn.recognition import Recognizer

T = TypeVar("T")


@dataclass
class Evaluator:
    """Scores edited models on one forgetting task (targets, retain entities, templates, generic text).

    `idk_answer` is the answer an unknown entity gets (`unknown` in the embedded world). A real model has
    no such answer: with `idk_answer=None`, a question is *answered like a stranger* when the gold answer
    is no likelier after the target's name than, on the median, after the strangers' names
    (`unknown_reference`) in the same question, and `idk_rate` is the fraction of such questions.
    `answer_eos`: an exact answer must end with the end-of-sequence token (the world's format; False for
    few-shot prompts, where an answer ends however the model likes); it also shapes the relearning lessons.
    `judge` decides whether an answer is right wherever accuracy is measured (forget, paraphrase, retain,
    relearning, neighbours; `irunlearn.judges`); default: exact match with `answer_eos`.
    """

    model: HookedTransformer
    sae: SAE
    recognizer: Recognizer
    targets: list[Entity]
    retain_eval: list[Entity]
    train_templates: list[Template]
    heldout_templates: list[Template]
    generic_text: list[str]
    unknown_reference: list[Entity] = field(default_factory=list)
    generation_templates: list[Template] = field(default_factory=lambda: list(GENERATION_TEMPLATES))
    idk_answer: str | None = UNKNOWN_ANSWER
    prepend_bos: bool = True
    answer_eos: bool = True
    relearn_steps: int = 20
    relearn_lr: float = 1e-3
    seed: int = 0
    oracle: HookedTransformer | None = None  # the model retrained without the targets, where one exists
    # every value each attribute can take (perturbed answers, strangers' invented facts); empty: the values
    # seen among the targets and retain people
    attribute_values: dict[str, list[str]] = field(default_factory=dict)
    judge: Judge | None = None

    def __post_init__(self) -> None:
        if self.judge is None:
            self.judge = ExactJudge(answer_eos=self.answer_eos)
        self._retain_questions = fact_questions(self.retain_eval, self.train_templates)
        self.baseline = self._behaviour(self.model)
        self._generations_before = self._generations(self.model)
        self._references: dict[str, object] = {}

    def accuracy(self, model: HookedTransformer, questions: pd.DataFrame) -> pd.Series:
        """Per-entity fraction of `questions` (`fact_questions`) that `model` answers right, by the judge."""
        return per_entity_accuracy(questions, self.judge.correct(model, questions, self.prepend_bos))

    def _behaviour(self, model: HookedTransformer) -> dict:
        return {
            "retain": float(self.accuracy(model, self._retain_questions).mean()),
            "ppl": perplexity(model, self.generic_text, self.prepend_bos),
        }

    def per_target(self, model: HookedTransformer) -> pd.DataFrame:
        """One row per target: forget_acc, paraphrase_forget_acc, idk_rate, probe readings, dist_ratio."""
        train_q = fact_questions(self.targets, self.train_templates)
        heldout_q = fact_questions(self.targets, self.heldout_templates)
        all_q = pd.concat([train_q, heldout_q], ignore_index=True)
        readings = self.recognizer.p_known(
            model, self.sae, [t.name for t in self.targets], self.train_templates + self.heldout_templates
        )
        frame = pd.DataFrame(
            {
                "forget_acc": self.accuracy(model, train_q),
                "paraphrase_forget_acc": self.accuracy(model, heldout_q),
                "idk_rate": self._idk_rate(model, all_q),
            }
        )
        frame = frame.rename_axis("target").reset_index()
        readings = readings.rename(
            columns={
                "entity": "target",
                "p_known_sae": "probe_p_known_sae",
                "p_known_resid": "probe_p_known_resid",
            }
        )
        return frame.merge(readings, on="target")

    def _idk_rate(self, model: HookedTransformer, questions: pd.DataFrame) -> pd.Series:
        """Per target: the fraction of its questions answered `idk_answer`, or answered like a stranger."""
        if self.idk_answer is not None:
            prompts, idk = questions["prompt"].tolist(), [self.idk_answer] * len(questions)
            said_idk = greedy_matches(model, prompts, idk, self.prepend_bos, answer_eos=self.answer_eos)
            return per_entity_accuracy(questions, said_idk)
        if not self.unknown_reference:
            raise ValueError("idk_answer=None (answered like a stranger) needs Evaluator.unknown_reference.")
        strangers = [u.name for u in self.unknown_reference[:N_IDK_STRANGERS]]
        asked = names_in_place(questions, strangers)
        prompts, answers = [*questions["prompt"], *asked["prompt"]], [*questions["answer"], *asked["answer"]]
        logprobs = answer_logprob(model, prompts, answers, self.prepend_bos).cpu()
        target_lp = logprobs[: len(questions)]
        stranger_lp = logprobs[len(questions) :].reshape(len(questions), len(strangers)).median(-1).values
        like_stranger = (target_lp <= stranger_lp).float().tolist()
        return pd.Series(like_stranger, index=questions["entity"]).groupby(level=0, sort=False).mean()

    def evaluate(
        self, model: HookedTransformer, genuineness: bool = False, progress: bool = False
    ) -> tuple[dict, pd.DataFrame]:
        """Means over targets of the per-target metrics, plus retain_acc and ppl_ratio against the original.

        With `genuineness`, also indistinguishability from unknown entities, generation health and
        relearning (see `genuineness`). `progress` shows one bar over the phases, naming the one running.
        """
        chosen = self.checked([m.name for m in metrics_in("genuineness")] if genuineness else [])
        bar = tqdm(total=2 + len(chosen), desc="evaluating", disable=not progress, leave=False)
        bar.set_postfix_str("answers and probes")
        rows = self.per_target(model)
        bar.update()
        bar.set_postfix_str("retain and perplexity")
        after = self._behaviour(model)
        bar.update()
        summary = rows.drop(columns="target").mean().to_dict()
        # relative to the original model; undefined (NaN) if the original knew none of the retain facts
        summary["retain_acc"] = after["retain"] / self.baseline["retain"] if self.baseline["retain"] else float("nan")
        summary["ppl_ratio"] = after["ppl"] / self.baseline["ppl"]
        for metric in chosen:
            bar.set_postfix_str(metric.name)
            summary |= metric.fn(self, model).values
            bar.update()
        bar.close()
        return summary, rows

    def genuineness(self, model: HookedTransformer) -> dict:
        """Is the forgetting genuine, beyond the answers? Every registered metric of group "genuineness".

        The built-in ones: indistinguishability from strangers (both probes), generation health of free
        generations about the targets, and relearning against strangers taught the same facts (each
        registered metric's docstring, below, defines it). `metric_table()` lists them with their directions.
        """
        return self.metrics(model, [m.name for m in metrics_in("genuineness")])

    def checked(self, names: Sequence[str]) -> list[Metric]:
        """The named registered metrics, each one's needs checked against this evaluator before any work."""
        chosen = [get_metric(name) for name in names]
        for metric in chosen:
            missing = [need for need in metric.needs if not getattr(self, need, None)]
            if missing:
                raise ValueError(
                    f"Metric {metric.name!r} needs Evaluator.{', Evaluator.'.join(missing)}: give it when building "
                    "the evaluator, or leave the metric out."
                )
        return chosen

    def metrics(self, model: HookedTransformer, names: Sequence[str]) -> dict[str, float]:
        """The aggregate values of the named registered metrics on `model` (all their needs checked first)."""
        values: dict[str, float] = {}
        for result in self.metric_results(model, names).values():
            values |= result.values
        return values

    def metric_results(self, model: HookedTransformer, names: Sequence[str]) -> dict[str, MetricResult]:
        """Each named registered metric's `MetricResult` on `model`, aggregates and per-item values (all
        their needs checked first)."""
        return {metric.name: metric.fn(self, model) for metric in self.checked(names)}

    def indistinguishability(self, model: HookedTransformer) -> dict[str, float]:
        """`indistinguishability` (SAE probe) and `indistinguishability_resid` (residual probe) alone."""
        return self.metrics(model, ["indistinguishability"])

    def reference(self, key: str, compute: Callable[[], T]) -> T:
        """A metric's reference value (e.g. strangers' answers on the original model), computed by `compute`
        the first time `key` is asked for and reused for every model this evaluator scores."""
        if key not in self._references:
            self._references[key] = compute()
        return self._references[key]

    def relearn_reference(self) -> float:
        """What relearning reaches from nothing: the same fine-tuning on the original model for genuinely
        unknown names given the targets' facts (computed once per evaluator)."""
        strangers = [Entity(u.name, t.attributes) for u, t in zip(self.unknown_reference, self.targets, strict=False)]
        return self.reference("relearn", lambda: self._relearn(self.model, strangers))

    def _generations(self, model: HookedTransformer) -> list[list[int]]:
        prompts = [t.render(e.name) for e in self.targets for t in self.generation_templates]
        eos = model.tokenizer.eos_token_id  # generations run past newlines, to the end of the sequence
        return greedy_token_ids(
            model,
            prompts,
            max_new_tokens=12,
            prepend_bos=self.prepend_bos,
            stop_ids=[] if eos is None else [eos],
            progress=False,
        )

    def _relearn(self, model: HookedTransformer, entities: Sequence[Entity]) -> float:
        """Accuracy on held-back attributes after fine-tuning on the other half of each entity's facts."""
        rng = random.Random(self.seed)
        taught, held = [], []
        for entity in entities:
            attributes = sorted(entity.attributes)
            rng.shuffle(attributes)
            half = len(attributes) // 2
            taught.append(Entity(entity.name, {a: entity.attributes[a] for a in attributes[:half]}))
            held.append(Entity(entity.name, {a: entity.attributes[a] for a in attributes[half:]}))
        lessons = fact_questions(taught, self.train_templates)
        held_questions = fact_questions(held, self.train_templates)
        if lessons.empty or held_questions.empty:
            raise ValueError(
                "Relearning needs targets with at least two attributes covered by the training templates (half "
                f"taught, half held back); {[e.name for e in entities]} leave one half empty."
            )
        student = copy.deepcopy(model)
        student.requires_grad_(True)
        optimizer = torch.optim.Adam(student.parameters(), lr=self.relearn_lr)
        tokens, mask = encode_lines(
            student.tokenizer,
            [f"{p} {a}" for p, a in zip(lessons["prompt"], lessons["answer"], strict=True)],
            student.cfg.n_ctx,
            self.prepend_bos,
            self.answer_eos,
            device=student.cfg.device,
        )
        torch.manual_seed(self.seed)
        for _ in range(self.relearn_steps):
            optimizer.zero_grad(set_to_none=True)
            lm_loss(student, tokens, mask).backward()
            optimizer.step()
        student.eval()
        return float(self.accuracy(student, held_questions).mean())


N_IDK_STRANGERS = 16  # strangers whose median answer log-probability defines "answered like a stranger"
GENERATION_TEMPLATES = (Template("{name}", kind="statement"), Template("Fact: {name}", kind="statement"))


@register_metric(
    "indistinguishability",
    needs=("unknown_reference",),
    higher_is_better=True,
    columns=("indistinguishability", "indistinguishability_resid"),
)
def indistinguishability_metric(evaluator: Evaluator, model: HookedTransformer) -> MetricResult:
    """Can the probes tell a target from a stranger? 1 − 2·|AUROC(target vs unknown entities, by probe p) −
    0.5| over every (entity × template), for the SAE probe and the residual probe; 1 means they cannot.

    Per item: each (entity, template) row's probe readings and whether it is a target.
    """
    templates = evaluator.train_templates + evaluator.heldout_templates
    names = [t.name for t in evaluator.targets] + [u.name for u in evaluator.unknown_reference]
    acts = extract_activations(
        model,
        evaluator.recognizer.hook_name,
        [Entity(n) for n in names],
        templates,
        labels=[1] * len(evaluator.targets) + [0] * len(evaluator.unknown_reference),
        prepend_bos=evaluator.prepend_bos,
        progress=False,
    )
    p_sae = evaluator.recognizer.sae_probe.predict_proba(encode_latents(evaluator.sae, acts.resid))
    p_resid = evaluator.recognizer.resid_probe.predict_proba(acts.resid)
    per_item = acts.index[["entity", "template"]].assign(
        is_target=acts.index["label"] == 1, p_known_sae=p_sae.cpu().numpy(), p_known_resid=p_resid.cpu().numpy()
    )
    values = {
        "indistinguishability": _indistinguishability(p_sae, acts.labels),
        "indistinguishability_resid": _indistinguishability(p_resid, acts.labels),
    }
    return MetricResult(values, per_item)


@register_metric(
    "generation_health",
    higher_is_better=True,
    columns=("distinct2", "repetition_rate", "generation_health"),
)
def generation_health_metric(evaluator: Evaluator, model: HookedTransformer) -> MetricResult:
    """Are free generations about the targets still language? distinct-2 and repetition rate of greedy
    continuations of `generation_templates`, and `generation_health` = distinct-2 after / before (a collapse
    drives it down; a stranger's fixed phrase lowers it too, without repetition)."""
    generations = evaluator._generations(model)
    distinct2 = distinct_n(generations)
    return MetricResult(
        {
            "distinct2": distinct2,
            "repetition_rate": repetition_rate(generations),
            "generation_health": distinct2 / distinct_n(evaluator._generations_before),
        }
    )


@register_metric(
    "relearn",
    needs=("unknown_reference",),
    higher_is_better=None,
    columns=("relearn_acc", "relearn_acc_unknown_ref"),
)
def relearn_metric(evaluator: Evaluator, model: HookedTransformer) -> MetricResult:
    """Does the knowledge come back? Fine-tune `relearn_steps` steps on half of each target's attributes and
    measure accuracy on the other half (`relearn_acc`); `relearn_acc_unknown_ref` is the same procedure on
    the original model for genuinely unknown names given the targets' facts. Genuine forgetting relearns at
    the stranger's level."""
    return MetricResult(
        {
            "relearn_acc": evaluator._relearn(model, evaluator.targets),
            "relearn_acc_unknown_ref": evaluator.relearn_reference(),
        }
    )


def _indistinguishability(scores: torch.Tensor, is_target: torch.Tensor) -> float:
    return 1 - 2 * abs(auroc(scores, is_target) - 0.5)


def distinct_n(texts: Sequence[list[int]], n: int = 2) -> float:
    """Unique n-grams / all n-grams over token sequences (1.0 when there are none)."""
    grams = [tuple(seq[i : i + n]) for seq in texts for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repetition_rate(texts: Sequence[list[int]]) -> float:
    """Mean over sequences of the fraction of tokens that repeat an earlier token of the same sequence."""
    rates = [1 - len(set(seq)) / len(seq) for seq in texts if seq]
    return sum(rates) / len(rates) if rates else 0.0


# The field's metrics against an oracle (group "oracle") and the depth metrics (key restoration, forced
# choice, relearning attacks, name-sharers' retain; group "depth") build on this module and register
# themselves on import.
import irunlearn.depth  # noqa: E402, F401
from irunlearn import answer_metrics, oracle_metrics  # noqa: E402, F401
