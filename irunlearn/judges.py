"""Answer judges: is a model's answer to an attribute question right? One registered judge per answer format.

The evaluator asks every question the same way and leaves the verdict to the bench's judge, so the same
metrics serve a model trained to answer in one exact form and a real model that answers in its own words:

- `exact` (the embedded world, a user's own table): teacher-forced greedy exact match of `" " + answer`
  (and the end-of-sequence token after it with `answer_eos`), one batched forward per chunk.
- `lenient` (real models): a few greedy tokens generated with a key-value cache, cut at the first newline,
  and checked by the attribute's own rule from `irunlearn.real.wikidata` (aliases, any of several listed
  values, number tolerances) against the reference answers; a refusal ("I don't know", "unknown", an
  empty answer) is never right.

A judge is built from a bench (`Judge.from_bench`), which is where it finds what it needs: the answer
format, the reference values. Register your own with `register_judge` (a class with a `name`) and name it
in `EntityBench.judge`; no package file needs editing.

>>> @register_judge
... class CaseBlind(Judge):
...     name = "case_blind"
...     def correct(self, model, questions, prepend_bos):
...         said = greedy_generate(model, list(questions["prompt"]), prepend_bos=prepend_bos, progress=False)
...         return torch.tensor([s.lower() == a.lower() for s, a in zip(said, questions["answer"])])
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import pandas as pd
import torch
from jaxtyping import Bool
from transformer_lens import HookedTransformer

from irunlearn.entities import answer_matches, normalize_answer
from irunlearn.qa import greedy_generate, greedy_matches
from irunlearn.real.wikidata import ATTRIBUTES, MULTI_SEP, name_matches

if TYPE_CHECKING:
    from irunlearn.bench import EntityBench

REFUSAL = re.compile(
    r"\b(i don'?t know|i do not know|unknown|not sure|no idea|i cannot|i can'?t|sorry|not aware|"
    r"no information|not available|n/a)\b",
    re.IGNORECASE,
)


def is_refusal(answer: str) -> bool:
    """Whether a free-form answer declines to answer (empty, "I don't know", "unknown", "sorry", ...)."""
    return not answer.strip() or REFUSAL.search(answer) is not None


class Judge(ABC):
    """Decides, per question, whether a model's answer is right.

    `correct(model, questions, prepend_bos)` reads a question table with columns `entity`, `attribute`,
    `prompt` and `answer` (the expected answer, as `irunlearn.evaluation.fact_questions` builds it) and
    returns one boolean per row, on the model's device. `from_bench(bench)` builds the judge a bench names.
    """

    name: ClassVar[str]

    @classmethod
    def from_bench(cls, bench: EntityBench) -> Judge:
        """The judge for `bench` (default: the class's defaults)."""
        return cls()

    @abstractmethod
    def correct(
        self, model: HookedTransformer, questions: pd.DataFrame, prepend_bos: bool
    ) -> Bool[torch.Tensor, " n"]: ...

    def states(self, text: str, entity: str, attribute: str, value: str) -> bool:
        """Whether free text (an open answer, a generation) states `entity`'s `attribute` as `value`: here, the
        value's normalised words appear in the text's, in order (a judge with per-attribute rules refines it)."""
        words, wanted = f" {normalize_answer(text)} ", normalize_answer(value)
        return bool(wanted) and f" {wanted} " in words


@dataclass
class ExactJudge(Judge):
    """Greedy decoding gives exactly `" " + answer`, and then the end-of-sequence token with `answer_eos`.

    Checked by teacher forcing (`irunlearn.qa.greedy_matches`): the embedded world's format, where every
    answer is one trained string, and a user's table, whose answers are the model's own words.
    """

    name: ClassVar[str] = "exact"
    answer_eos: bool = True

    @classmethod
    def from_bench(cls, bench: EntityBench) -> ExactJudge:
        return cls(answer_eos=bench.answer_eos)

    def correct(self, model: HookedTransformer, questions: pd.DataFrame, prepend_bos: bool) -> Bool[torch.Tensor, " n"]:
        prompts, answers = questions["prompt"].tolist(), questions["answer"].tolist()
        return greedy_matches(model, prompts, answers, prepend_bos, answer_eos=self.answer_eos)


@dataclass
class LenientJudge(Judge):
    """A free-form greedy answer (`max_new_tokens`, first line) that names the expected answer or a reference.

    Right when it is not a refusal and either matches the question's `answer` after normalisation (the
    model's own phrasing of a fact, "2.1 million") or passes the attribute's check (`checks`, by attribute
    name; `name_matches` by default) against the `answer` and the entity's gold value (`gold[entity]
    [attribute]`, e.g. the Wikidata "People's Republic of China; Taiwan": any listed value counts).
    """

    name: ClassVar[str] = "lenient"
    checks: Mapping[str, Callable[[str, str], bool]] = field(default_factory=dict)
    gold: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    max_new_tokens: int = 8
    batch_size: int = 32

    @classmethod
    def from_bench(cls, bench: EntityBench) -> LenientJudge:
        """The per-attribute checks of every record kind among the bench's entities, and its gold answers."""
        kinds = {e.kind for e in bench.entities} & set(ATTRIBUTES)
        checks = {spec.name: spec.check for kind in sorted(kinds) for spec in ATTRIBUTES[kind]}
        return cls(checks=checks, gold=bench.gold_answers)

    def correct(self, model: HookedTransformer, questions: pd.DataFrame, prepend_bos: bool) -> Bool[torch.Tensor, " n"]:
        said = greedy_generate(
            model,
            questions["prompt"].tolist(),
            max_new_tokens=self.max_new_tokens,
            prepend_bos=prepend_bos,
            batch_size=self.batch_size,
            progress=False,
        )
        verdicts = [
            self.accepts(answer, entity, attribute, expected)
            for answer, entity, attribute, expected in zip(
                said, questions["entity"], questions["attribute"], questions["answer"], strict=True
            )
        ]
        return torch.tensor(verdicts, dtype=torch.bool, device=model.cfg.device)

    def accepts(self, said: str, entity: str, attribute: str, expected: str) -> bool:
        """Whether the free-form answer `said` to `entity`'s `attribute` question is right (see the class)."""
        if is_refusal(said):
            return False
        if answer_matches(said, expected):
            return True
        return self.states(said, entity, attribute, expected)

    def states(self, text: str, entity: str, attribute: str, value: str) -> bool:
        """Whether free text names `value` or the entity's gold value for `attribute`, by the attribute's check
        (no refusal test: a long answer may hedge and still state the fact)."""
        gold = self.gold.get(entity, {}).get(attribute)
        accepted = value if gold is None else f"{value}{MULTI_SEP}{gold}"
        return self.checks.get(attribute, name_matches)(text, accepted)


JUDGES: dict[str, type[Judge]] = {}


def register_judge(cls: type[Judge]) -> type[Judge]:
    """Register a judge class under its `name` (a decorator, or a plain call); a bench names it in `judge`.

    Re-registering a name replaces the judge, so a notebook cell can be rerun.
    """
    if not (isinstance(cls, type) and issubclass(cls, Judge)):
        raise TypeError(f"{cls!r} is not a Judge subclass: subclass irunlearn.judges.Judge and define correct().")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a class attribute `name` (the string a bench's `judge` gives).")
    JUDGES[name] = cls
    return cls


def get_judge(name: str) -> type[Judge]:
    """The judge class registered under `name`."""
    if name not in JUDGES:
        raise ValueError(f"Unknown answer judge {name!r}. Registered: {sorted(JUDGES)} (add one with register_judge).")
    return JUDGES[name]


register_judge(ExactJudge)
register_judge(LenientJudge)
