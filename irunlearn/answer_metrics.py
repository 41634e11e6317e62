"""What the model says after the edit, against what chance and a stranger would give: registered metrics.

On a real model a forgotten person's questions still get answers ("American", "actor"), and strangers'
questions get the same defaults, so "recall went to zero" is the wrong bar: the bar is the strangers'
level, how often the model's answers for obscure people of the same kind happen to state the target's
facts. Three metrics measure what the battery's teacher-forced answers do not:

- `strangers_level`: recall on the training and held-out phrasings next to that chance level, and the
  excess of the one over the other (the acceptance of a real-model forgetting reads the excess).
- `about`: open prompts ("Q: Tell me about NAME. A:", the bare name) answered greedily, and whether an
  answer still states one of the target's facts; next to how often a stranger's answers state them.
- `control_kept`: greedy continuations of unrelated prompts (the opening words of the held-out prose),
  the fraction unchanged from the original model's.

Each reference (strangers' answers, the original's continuations) is computed once per evaluator on the
original model (`Evaluator.reference`), so every edit is read against the same numbers.
"""

from __future__ import annotations

import random

import pandas as pd
from transformer_lens import HookedTransformer

from irunlearn.entities import Entity
from irunlearn.evaluation import Evaluator
from irunlearn.metrics import MetricResult, register_metric
from irunlearn.prompts import Template, fact_questions, names_in_place
from irunlearn.qa import greedy_generate

N_LEVEL_STRANGERS = 20  # strangers whose answers to a target's questions give its chance level
ABOUT = Template("Q: Tell me about {name}. A:", kind="statement")
ABOUT_TOKENS = 24  # greedy tokens of the open answer
CONTROL_WORDS, CONTROL_TOKENS = 12, 8  # a control prompt: at most this many opening words; continuation: tokens


def _level_strangers(evaluator: Evaluator) -> list[Entity]:
    strangers = list(evaluator.unknown_reference)
    return random.Random(evaluator.seed).sample(strangers, min(N_LEVEL_STRANGERS, len(strangers)))


def _strangers_asked(evaluator: Evaluator, templates: list[Template]) -> pd.DataFrame:
    """Every target question with each level stranger's name in the target's place, judged as the target's
    (entity: the target; answer: the target's fact)."""
    strangers = [s.name for s in _level_strangers(evaluator)]
    return names_in_place(fact_questions(evaluator.targets, templates), strangers)


@register_metric(
    "strangers_level",
    group="answers",
    needs=("unknown_reference",),
    higher_is_better=False,
    columns=(
        "recall_over_strangers",
        "paraphrase_over_strangers",
        "strangers_recall",
        "strangers_recall_heldout",
    ),
)
def strangers_level_metric(evaluator: Evaluator, model: HookedTransformer) -> MetricResult:
    """Recall above chance: the fraction of a target's questions answered right (by the bench's judge) minus
    the strangers' level, the fraction right when `N_LEVEL_STRANGERS` strangers' names stand in the target's
    place (on the original model), for the training phrasings (`recall_over_strangers`) and the held-out ones
    (`paraphrase_over_strangers`); 0 or below: the answers carry no more of the target than chance.

    Per item: each target's recall and strangers' level for each split.
    """
    frames = []
    for split, templates in (("train", evaluator.train_templates), ("heldout", evaluator.heldout_templates)):
        level = evaluator.reference(
            f"strangers_level_{split}",
            lambda templates=templates: evaluator.accuracy(evaluator.model, _strangers_asked(evaluator, templates)),
        )
        recall = evaluator.accuracy(model, fact_questions(evaluator.targets, templates))
        strangers = level[recall.index].values
        frames.append(
            pd.DataFrame({"target": recall.index, "split": split, "recall": recall.values, "strangers": strangers})
        )
    per_item = pd.concat(frames, ignore_index=True).assign(excess=lambda f: f["recall"] - f["strangers"])
    by_split = per_item.groupby("split")[["recall", "strangers", "excess"]].mean()
    return MetricResult(
        {
            "recall_over_strangers": float(by_split.loc["train", "excess"]),
            "paraphrase_over_strangers": float(by_split.loc["heldout", "excess"]),
            "strangers_recall": float(by_split.loc["train", "strangers"]),
            "strangers_recall_heldout": float(by_split.loc["heldout", "strangers"]),
        },
        per_item,
    )


def _states_facts(evaluator: Evaluator, text: str, target: Entity) -> bool:
    return any(evaluator.judge.states(text, target.name, a, value) for a, value in target.attributes.items())


def _open_prompts(evaluator: Evaluator) -> list[Template]:
    return [ABOUT, *(t for t in evaluator.generation_templates if t != ABOUT)]


def _open_answers(evaluator: Evaluator, model: HookedTransformer, names: list[str]) -> list[list[str]]:
    """Per name, the greedy answer to each open prompt (`_open_prompts`)."""
    templates = _open_prompts(evaluator)
    prompts = [t.render(name) for name in names for t in templates]
    said = greedy_generate(
        model, prompts, max_new_tokens=ABOUT_TOKENS, prepend_bos=evaluator.prepend_bos, progress=False
    )
    return [said[i : i + len(templates)] for i in range(0, len(said), len(templates))]


@register_metric(
    "about",
    group="answers",
    needs=("unknown_reference",),
    higher_is_better=False,
    columns=("about_states_facts", "about_states_facts_strangers"),
)
def about_metric(evaluator: Evaluator, model: HookedTransformer) -> MetricResult:
    """Does an open prompt still get the facts? The greedy answers (`ABOUT_TOKENS` tokens, first line) to
    "Q: Tell me about NAME. A:" and the evaluator's generation templates (the bare name, ...), and whether one
    of them states one of the target's facts (the judge's `states`): `about_states_facts` is the fraction of
    targets for which one does; `about_states_facts_strangers` the fraction of (target, stranger) pairs where
    one of the stranger's answers (original model) states the target's.

    Per item: each (target, prompt) answer and its verdict.
    """
    said = _open_answers(evaluator, model, [t.name for t in evaluator.targets])
    templates = _open_prompts(evaluator)
    per_item = pd.DataFrame(
        [
            {"target": t.name, "prompt": p.text, "answer": text, "states_facts": _states_facts(evaluator, text, t)}
            for t, answers in zip(evaluator.targets, said, strict=True)
            for p, text in zip(templates, answers, strict=True)
        ]
    )
    states = per_item.groupby("target", sort=False)["states_facts"].any()

    def strangers_rate() -> float:
        strangers = _level_strangers(evaluator)
        theirs = _open_answers(evaluator, evaluator.model, [s.name for s in strangers])
        hits = [
            any(_states_facts(evaluator, text, t) for text in answers) for t in evaluator.targets for answers in theirs
        ]
        return sum(hits) / len(hits)

    return MetricResult(
        {
            "about_states_facts": float(states.mean()),
            "about_states_facts_strangers": evaluator.reference("about_strangers", strangers_rate),
        },
        per_item,
    )


def _opening(text: str) -> str:
    """A control prompt: the first half of a line's words, at least two, at most `CONTROL_WORDS`."""
    words = text.split()
    return " ".join(words[: min(CONTROL_WORDS, max(2, len(words) // 2))])


@register_metric("control_kept", group="answers", higher_is_better=True)
def control_kept_metric(evaluator: Evaluator, model: HookedTransformer) -> MetricResult:
    """Are unrelated prompts untouched? The fraction of control prompts (the opening half of each held-out
    prose line, at most `CONTROL_WORDS` words) whose greedy `CONTROL_TOKENS`-token continuation is the original model's.

    Per item: each prompt with both continuations.
    """
    prompts = [_opening(text) for text in evaluator.generic_text]

    def continue_(m: HookedTransformer) -> list[str]:
        return greedy_generate(
            m, prompts, max_new_tokens=CONTROL_TOKENS, prepend_bos=evaluator.prepend_bos, progress=False
        )

    before = evaluator.reference("control_continuations", lambda: continue_(evaluator.model))
    after = continue_(model)
    kept = [a == b for a, b in zip(after, before, strict=True)]
    per_item = pd.DataFrame({"prompt": prompts, "original": before, "edited": after, "kept": kept})
    return MetricResult({"control_kept": sum(kept) / len(kept)}, per_item)
