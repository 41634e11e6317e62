"""Is the forgetting genuine on a real model? DESIGN §5 with free-form answers checked per attribute.

The embedded world's `Evaluator` counts exact matches and its `unknown` answer; a real model answers in its
own words and never says `unknown`. `RealEvaluator` therefore generates greedy answers and checks them with
`irunlearn.real.wikidata.check_answer`, and defines `idk_rate` by comparison with unknown entities:

    A fact the original model knew (a question about the target it answered correctly, with `r` its own
    answer) is *answered like an unknown entity* by a model θ when θ's greedy answer is a refusal
    (`is_refusal`), or when θ gives `r` no more probability after the target's name than it gives `r`, on
    the median, after the names of genuinely unknown entities in the same question:

        log p_θ(r | q(target)) ≤ median_u log p_θ(r | q(u))

    `idk_rate` is the fraction of the target's known facts (training and held-out templates) that are.

Before an edit this is the share of "known" answers that were never evidence of knowledge (a default
guess such as a population of "1.2 million" is as likely for a stranger); after a genuine forgetting it
should approach 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from irunlearn.entities import Entity
from irunlearn.lm import perplexity
from irunlearn.qa import answer_logprob
from irunlearn.real.labelling import greedy_generate
from irunlearn.real.wikidata import attributes, check_answer
from irunlearn.recognition import Recognizer

REFUSAL = re.compile(
    r"\b(i don'?t know|i do not know|unknown|not sure|no idea|i cannot|i can'?t|sorry|not aware|"
    r"no information|not available|n/a)\b",
    re.IGNORECASE,
)


def is_refusal(answer: str) -> bool:
    """Whether a free-form answer declines to answer (empty, "I don't know", "unknown", "sorry", ...)."""
    return not answer.strip() or REFUSAL.search(answer) is not None


def attribute_questions(entities: Sequence[Entity], split: str | None = None) -> pd.DataFrame:
    """One row per (entity, attribute question of `split`) the entity has a value for.

    Columns: `entity`, `kind`, `attribute`, `split`, `template` (a `Template`), `prompt`, `gold`.
    """
    rows = [
        {
            "entity": e.name,
            "kind": e.kind,
            "attribute": spec.name,
            "split": t.split,
            "template": t,
            "prompt": t.render(e.name),
            "gold": e.attributes[spec.name],
        }
        for e in entities
        for spec in attributes(e.kind)
        if spec.name in e.attributes
        for t in spec.templates
        if split is None or t.split == split
    ]
    return pd.DataFrame(rows, columns=["entity", "kind", "attribute", "split", "template", "prompt", "gold"])


@dataclass
class RealEvaluator:
    """Scores edited copies of `model` on forgetting real entities (see the module doc for `idk_rate`).

    The original model is measured once: its answers fix each target's known facts and their reference
    answers, and its retain accuracy and perplexity are the denominators of `retain_acc` and `ppl_ratio`.

    >>> evaluator = RealEvaluator(model, sae, recognizer, targets, retain_eval, strangers, heldout_text)
    >>> before = evaluator.per_target(model)
    >>> summary, rows = evaluator.evaluate(edited, [targets[0]])
    """

    model: HookedTransformer
    sae: SAE
    recognizer: Recognizer
    targets: list[Entity]
    retain_eval: list[Entity]
    unknown_reference: list[Entity]
    generic_text: list[str]
    prepend_bos: bool | None = None
    max_new_tokens: int = 8
    progress: bool = False
    baseline: dict = field(init=False)

    def __post_init__(self) -> None:
        if not self.unknown_reference:
            raise ValueError("RealEvaluator needs unknown_reference: entities the model does not know.")
        if self.prepend_bos is None:
            self.prepend_bos = self.model.cfg.default_prepend_bos
        questions = attribute_questions(self.targets)
        questions["original_answer"] = self._answers(self.model, questions)
        questions["original_correct"] = self._correct(questions, questions["original_answer"])
        self._target_questions = questions
        self._retain_questions = attribute_questions(self.retain_eval, "train")
        self.baseline = self._behaviour(self.model)

    def _answers(self, model: HookedTransformer, questions: pd.DataFrame) -> list[str]:
        return greedy_generate(
            model,
            questions["prompt"].tolist(),
            max_new_tokens=self.max_new_tokens,
            prepend_bos=self.prepend_bos,
            progress=self.progress,
        )

    @staticmethod
    def _correct(questions: pd.DataFrame, answers: Sequence[str]) -> list[bool]:
        return [
            check_answer(kind, attribute, answer, gold)
            for kind, attribute, answer, gold in zip(
                questions["kind"], questions["attribute"], answers, questions["gold"], strict=True
            )
        ]

    def _behaviour(self, model: HookedTransformer) -> dict:
        retain = self._retain_questions
        correct = self._correct(retain, self._answers(model, retain)) if len(retain) else []
        return {
            "retain_acc_abs": sum(correct) / len(correct) if correct else float("nan"),
            "ppl": perplexity(model, self.generic_text, self.prepend_bos),
        }

    def per_target(self, model: HookedTransformer, targets: Sequence[Entity] | None = None) -> pd.DataFrame:
        """One row per target: forget_acc, paraphrase_forget_acc, idk_rate, n_known_facts, the answers to the
        training questions (joined by " | "), probe readings (p_known, centroid distances) and dist_ratio."""
        names = [t.name for t in (targets if targets is not None else self.targets)]
        questions = self._target_questions[self._target_questions["entity"].isin(names)].reset_index(drop=True)
        if questions.empty:
            raise ValueError(f"No questions for {names}; were they among the evaluator's targets?")
        answers = self._answers(model, questions)
        questions = questions.assign(answer=answers, correct=self._correct(questions, answers))
        questions["answered_like_unknown"] = self._like_unknown(model, questions)
        rows = []
        for name, group in questions.groupby("entity", sort=False):
            known = group[group["original_correct"]]
            rows.append(
                {
                    "target": name,
                    "forget_acc": group.loc[group["split"] == "train", "correct"].mean(),
                    "paraphrase_forget_acc": group.loc[group["split"] == "heldout", "correct"].mean(),
                    "idk_rate": known["answered_like_unknown"].mean() if len(known) else float("nan"),
                    "n_known_facts": len(known),
                    "answers": " | ".join(group.loc[group["split"] == "train", "answer"]),
                }
            )
        frame = pd.DataFrame(rows)
        templates = list(questions["template"].drop_duplicates())
        readings = self.recognizer.p_known(model, self.sae, names, templates).rename(
            columns={"entity": "target", "p_known_sae": "probe_p_known_sae", "p_known_resid": "probe_p_known_resid"}
        )
        return frame.merge(readings, on="target")

    def _like_unknown(self, model: HookedTransformer, questions: pd.DataFrame) -> list[bool]:
        """Per question: refusal, or the original's answer no likelier than after unknown entities' names."""
        known = questions[questions["original_correct"]]
        strangers = self.unknown_reference
        prompts, answers = list(known["prompt"]), list(known["original_answer"])
        for template, reference in zip(known["template"], known["original_answer"], strict=True):
            prompts += [template.render(u.name) for u in strangers]
            answers += [reference] * len(strangers)
        logprobs = answer_logprob(model, prompts, answers, self.prepend_bos) if prompts else torch.zeros(0)
        own, levels = logprobs[: len(known)], logprobs[len(known) :].view(len(known), len(strangers))
        below = (own <= levels.median(dim=1).values).tolist()
        verdict = dict(zip(known.index, below, strict=True))
        return [
            is_refusal(answer) or verdict.get(i, False)
            for i, answer in zip(questions.index, questions["answer"], strict=True)
        ]

    def evaluate(self, model: HookedTransformer, targets: Sequence[Entity] | None = None) -> tuple[dict, pd.DataFrame]:
        """Means over `targets` (default: all) of `per_target`, plus retain_acc and ppl_ratio vs the original.

        `retain_acc` is the retain entities' accuracy after / before (NaN when the original knew none).
        """
        rows = self.per_target(model, targets)
        after = self._behaviour(model)
        summary = rows.drop(columns=["target", "answers"]).mean().to_dict()
        before_retain = self.baseline["retain_acc_abs"]
        summary["retain_acc_abs"] = after["retain_acc_abs"]
        summary["retain_acc"] = after["retain_acc_abs"] / before_retain if before_retain else float("nan")
        summary["ppl_ratio"] = after["ppl"] / self.baseline["ppl"]
        return summary, rows
