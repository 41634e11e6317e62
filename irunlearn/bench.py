"""One description of a forgetting experiment, whatever the model: `EntityBench`.

A bench holds the populations (known entities, unknown ones, the known ones held out to measure retain
on, the strangers the evaluator compares a target with and the ones `sae_guided` aims at), the training
and held-out question templates, the retain text and held-out generic text, and the answer judge. It
builds the `Recognizer`, the `ForgetTask` and the `Evaluator` of a run, reading BOS and device from the
model it is given, so a run on the embedded world, on SmolLM2 or on a user's own model and questions is
the same code (`irunlearn.run`).

>>> bench = EntityBench.from_world(irunlearn.load_world())
>>> bench = EntityBench.from_frame(rows, unknown_names=["Tomasz Wierzbicki", ...])   # your own questions
>>> bench = EntityBench.from_records("person", model)                                 # labelled by the model
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from sae_lens import SAE
from transformer_lens import HookedTransformer

from irunlearn.entities import UNKNOWN_ANSWER, Entity, EntitySet
from irunlearn.evaluation import Evaluator
from irunlearn.judges import get_judge
from irunlearn.methods.base import ForgetTask
from irunlearn.prompts import NAME_SLOT, Template
from irunlearn.recognition import Recognizer, fit_recognizer
from irunlearn.world.generator import ATTRIBUTE_VALUES

FRAME_COLUMNS = ("entity", "question", "answer")
N_STRANGERS = 50  # world: the last unknown names are the evaluator's strangers; the task's references precede
MIN_PER_SIDE = 5  # recognition splits each population 60/20/20 into fit / calibration / test
N_RECORDS = 300  # from_records: Wikidata records drawn per kind by default
N_PLAYERS = 120  # from_records("person"): obscure basketball players labelled as candidate unknowns
N_GENERIC_TRAIN, N_GENERIC_HELDOUT = 48, 40  # generic paragraphs: retain text (and latent filter), perplexity


@dataclass
class EntityBench:
    """The populations, phrasings, texts and answer judge of a forgetting experiment.

    - `entities`: known and unknown entities; recognition is fit on them.
    - `retain_eval`: known entities no task retains, on which `retain_acc` is measured (targets drawn
      among them are forgotten and left out of that evaluation).
    - `references`: unknown entities `sae_guided` aims the target's questions at (`ForgetTask.unknown`);
      `strangers`: the unknown entities the evaluator compares the target with (disjoint from them).
    - `idk_answer`: the answer a stranger gets (`unknown` in the embedded world); None for a real model,
      where "answered like a stranger" is judged by the gold answer's probability (see `Evaluator`).
    - `answer_eos`: whether an exact answer ends with the end-of-sequence token (the world's format).
    - `attribute_values`: every value each attribute can take (perturbed answers, strangers' invented
      facts, forced choice); empty: the evaluator uses the values seen among the bench's people.
    - `judge`: the registered answer judge (`irunlearn.judges`) that decides whether an answer is right:
      `"exact"` (teacher-forced exact match, with `answer_eos`) or `"lenient"` (free-form greedy answers
      checked per attribute; real models).
    - `gold_answers`: per entity and attribute, the reference value a lenient judge also accepts besides the
      entity's own fact (from records, whose facts are the model's own answers; empty otherwise).
    - `shipped_recognizer`: a recognizer already fit on this bench (the world's, fit at build), which
      `recognizer` returns for the weights and seed it was fit for instead of fitting again.
    """

    name: str
    entities: EntitySet
    train_templates: list[Template]
    heldout_templates: list[Template]
    retain_text: list[str]
    heldout_text: list[str]
    retain_eval: list[Entity]
    references: list[Entity]
    strangers: list[Entity]
    idk_answer: str | None = UNKNOWN_ANSWER
    answer_eos: bool = True
    attribute_values: dict[str, list[str]] = field(default_factory=dict)
    judge: str = "exact"
    gold_answers: dict[str, dict[str, str]] = field(default_factory=dict)
    shipped_recognizer: Recognizer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        get_judge(self.judge)  # an unknown judge fails here, naming the registered ones
        for label, items in (
            ("train_templates", self.train_templates),
            ("retain_text", self.retain_text),
            ("heldout_text", self.heldout_text),
            ("strangers", self.strangers),
        ):
            if not items:
                raise ValueError(f"EntityBench {self.name!r} has no {label}; every run needs some.")
        if overlap := {e.name for e in self.references} & {e.name for e in self.strangers}:
            raise ValueError(f"references and strangers must be disjoint; both hold {sorted(overlap)[:5]}.")

    # Constructors ---------------------------------------------------------------------------------

    @classmethod
    def from_world(cls, ew) -> EntityBench:
        """The embedded world's bench: ground-truth known people vs never-seen names, `unknown` answers.

        150 known people (a fixed draw) are held out of every retain set; the last 50 unknown names are
        the evaluator's strangers, the others `sae_guided`'s references.
        """
        world = ew.world
        unknown = world.unknown_eval
        return cls(
            name="world",
            entities=world.entities,
            train_templates=world.question_templates("train"),
            heldout_templates=world.question_templates("heldout"),
            retain_text=world.generic_train,
            heldout_text=world.generic_heldout,
            retain_eval=world.retain_eval_people(),
            references=unknown[:-N_STRANGERS],
            strangers=unknown[-N_STRANGERS:],
            attribute_values={attribute: list(values) for attribute, values in ATTRIBUTE_VALUES.items()},
            shipped_recognizer=ew.recognizer,
        )

    @classmethod
    def from_frame(
        cls,
        rows: pd.DataFrame,
        unknown_names: Sequence[str],
        retain_text: Sequence[str] | None = None,
        heldout_text: Sequence[str] | None = None,
        retain_eval_fraction: float = 0.25,
        name: str = "frame",
        seed: int = 0,
    ) -> EntityBench:
        """A bench from your own table: one row per `(entity, question, answer[, split][, attribute])`.

        Each question must contain its entity's name once; it becomes a template with the name as its slot.
        `split` is `train` (default) or `heldout` (paraphrases the edit never sees). Rows of one entity with
        the same answer are one fact (give `attribute` to say otherwise). Every entity of the table is
        *known*; `unknown_names` are entities the model has never heard of. Prefer obscure real names of
        the same kind over invented ones: on real models invented names separate from real ones already at
        layer 0, from their word pieces, so a probe against them learns spelling, not recognition. Half of
        them are the strangers the evaluator compares a target with, half `sae_guided`'s references.
        `retain_text` / `heldout_text` default to the package's generic prose (`irunlearn.real.corpus`).
        Answers are judged exactly (greedy, teacher-forced) without an end-of-sequence token, and
        "answered like a stranger" by the gold answer's probability (`Evaluator`, `idk_answer=None`).
        """
        entities, train, heldout = _frame_entities(rows)
        unknown = [Entity(n.strip()) for n in dict.fromkeys(unknown_names) if n and n.strip()]
        if len(entities) < MIN_PER_SIDE or len(unknown) < 2 * MIN_PER_SIDE:
            raise ValueError(
                f"from_frame needs at least {MIN_PER_SIDE} known entities in the table and {2 * MIN_PER_SIDE} "
                f"unknown names (recognition splits each side 60/20/20; the unknown ones are also halved into "
                f"strangers and references); got {len(entities)} and {len(unknown)}."
            )
        if clash := {e.name for e in entities} & {u.name for u in unknown}:
            raise ValueError(f"Names both in the table (known) and in unknown_names: {sorted(clash)[:5]}.")
        if retain_text is None or heldout_text is None:
            from irunlearn.real.corpus import generic_paragraphs

            retain_text = generic_paragraphs("train") if retain_text is None else retain_text
            heldout_text = generic_paragraphs("heldout") if heldout_text is None else heldout_text
        rng = random.Random(seed)
        n_eval = max(1, round(retain_eval_fraction * len(entities)))
        shuffled = rng.sample(unknown, len(unknown))
        half = len(shuffled) // 2
        return cls(
            name=name,
            entities=EntitySet(entities, unknown),
            train_templates=train,
            heldout_templates=heldout,
            retain_text=list(retain_text),
            heldout_text=list(heldout_text),
            retain_eval=rng.sample(entities, n_eval),
            references=shuffled[:half],
            strangers=shuffled[half:],
            idk_answer=None,
            answer_eos=False,
        )

    @classmethod
    def from_records(
        cls,
        kind: str,
        model: HookedTransformer,
        *,
        n: int | None = None,
        seed: int = 0,
        data_dir: str | Path | None = None,
        progress: bool = True,
    ) -> EntityBench:
        """A bench of real entities, labelled known / unknown by `model`'s own answers (Ferrando et al.).

        `kind` is a Wikidata kind (`city`, `player`, `song`, `movie`: `n` records drawn with `seed`, default
        `N_RECORDS`; for cities every city of a million inhabitants or more joins them, since a random draw
        is mostly small towns) or `"person"` (the famous people of `../shared/data/people/` as candidate
        known entities and `n` obscure real basketball players, default 120, as candidate unknown ones:
        `irunlearn.real.people.people_bench`). `data_dir`: the records folder (Wikidata, or the people folder
        for `"person"`); default: the shared data. Each candidate is asked its kind's labelling questions
        and labelled by `label_entities` (cached on disk by the model's `weights_hash`): *known* with at
        least two right answers, of which at least one differs from the answer the model gives most often
        to the unknown candidates (known for more than a lucky default guess); *unknown* with none right;
        the rest is left out. Unknown entities are obscure real entities of the same kind, not invented
        names: on real models invented names separate from real ones at layer 0, by their word pieces, so a
        probe against them would learn spelling, not recognition.

        The facts of a known entity are the model's own correct answers ("China", "2.1 million"): what the
        suppression methods push down and relearning teaches, since the record's wording ("People's
        Republic of China", "2148000") is often not what the model says. The `lenient` judge accepts an
        answer that matches the model's own answer or passes the attribute's check against the record's
        value (`gold_answers`). Templates are the kind's training and held-out questions (`question_templates`;
        for people `person_templates`, which add open "Tell me about NAME" prompts for recognition); retain
        and held-out text are `N_GENERIC_TRAIN` / `N_GENERIC_HELDOUT` paragraphs of generic prose drawn
        with `seed` (`irunlearn.real.corpus`). A quarter of the known entities are held out for retain
        accuracy; the unknown ones are halved into the evaluator's strangers and `sae_guided`'s references.

        >>> bench = EntityBench.from_records("person", load_model("smollm2"))
        >>> irunlearn.run(bench, model, sae, ["sae_guided"], targets=["Elon Musk"])
        """
        from irunlearn.real.corpus import generic_paragraphs
        from irunlearn.real.labelling import label_entities
        from irunlearn.real.people import PERSON, people_bench, person_templates
        from irunlearn.real.wikidata import KINDS, cities_above, load_entities, question_templates

        if kind not in (*KINDS, PERSON):
            raise ValueError(f"from_records knows the kinds {[*KINDS, PERSON]}, not {kind!r}.")
        if n is not None and (not isinstance(n, int) or n < 2 * MIN_PER_SIDE):
            raise ValueError(f"n={n!r}: draw at least {2 * MIN_PER_SIDE} records (or None for the default).")
        if kind == PERSON:
            people = people_bench(model, n_players=n or N_PLAYERS, seed=seed, people_data=data_dir, progress=progress)
            entity_set, answers = people.entities, people.answers
            defaults = _default_answers(people.made_up_answers)
            train, heldout = person_templates("train"), person_templates("heldout")
        else:
            records = load_entities(kind, n=n or N_RECORDS, seed=seed, data_dir=data_dir)
            if kind == "city":
                drawn = {c.name for c in records}
                records += [c for c in cities_above(1e6, data_dir) if c.name not in drawn]
            entity_set, answers = label_entities(model, records, progress=progress)
            defaults = _default_answers(answers[answers["label"] == "unknown"])
            train, heldout = question_templates(kind, "train"), question_templates(kind, "heldout")
        table = answers.drop_duplicates("name").set_index("name")
        known = [
            _own_facts(e, table.loc[e.name]) for e in entity_set.known if _beyond_default(table.loc[e.name], defaults)
        ]
        unknown = list(entity_set.unknown)
        if len(known) < 2 * MIN_PER_SIDE or len(unknown) < 2 * MIN_PER_SIDE:
            raise ValueError(
                f"{model.cfg.model_name} knows {len(known)} and does not know {len(unknown)} of the {kind} records "
                f"drawn (seed {seed}); a bench needs at least {2 * MIN_PER_SIDE} of each (recognition splits each "
                "side 60/20/20 and a quarter of the known ones measure retain). Draw more records with n=."
            )
        rng = random.Random(seed)
        shuffled = rng.sample(unknown, len(unknown))
        half = len(shuffled) // 2
        return cls(
            name=f"records:{kind}",
            entities=EntitySet(known, unknown),
            train_templates=train,
            heldout_templates=heldout,
            retain_text=rng.sample(generic_paragraphs("train"), N_GENERIC_TRAIN),
            heldout_text=rng.sample(generic_paragraphs("heldout"), N_GENERIC_HELDOUT),
            retain_eval=rng.sample(known, max(1, round(0.25 * len(known)))),
            references=shuffled[:half],
            strangers=shuffled[half:],
            idk_answer=None,
            answer_eos=False,
            judge="lenient",
            gold_answers={e.name: dict(e.attributes) for e in entity_set.known},
        )

    def with_rows(self, rows: pd.DataFrame) -> EntityBench:
        """This bench plus the entities of your own `(entity, question, answer[, split][, attribute])` table,
        as extra known entities (a new bench; this one is unchanged).

        The table is read as `from_frame` reads it (each question names its entity once and becomes a
        template; `train` and `heldout` rows both needed). Its entities can then be targets, forgotten
        against the bench's own unknown entities: a person in no record, asked your questions. Their answers
        are judged by the bench's judge against your answers (a lenient judge checks names loosely).

        >>> bench = EntityBench.from_records("person", model).with_rows(pd.read_csv("my_questions.csv"))
        >>> irunlearn.run(bench, model, sae, ["sae_guided"], targets=["Ada Quill"])
        """
        entities, train, heldout = _frame_entities(rows)
        if clash := sorted({e.name for e in entities} & {e.name for e in self.entities}):
            raise ValueError(
                f"The table's entities {clash[:5]} are already in bench {self.name!r}; rename them or drop those rows."
            )
        return replace(
            self,
            name=f"{self.name}+rows",
            entities=EntitySet([*self.entities.known, *entities], list(self.entities.unknown)),
            train_templates=[*self.train_templates, *(t for t in train if t not in self.train_templates)],
            heldout_templates=[*self.heldout_templates, *(t for t in heldout if t not in self.heldout_templates)],
            shipped_recognizer=None,  # fit on other entities
        )

    # What a run needs -----------------------------------------------------------------------------

    def targets(self, names: Sequence[str] = (), n_random: int = 0, seed: int = 0) -> list[Entity]:
        """Targets by name (each a known entity of the bench) or `n_random` known entities drawn with `seed`."""
        if names and n_random:
            raise ValueError("Give target names or a number of random targets, not both.")
        if n_random:
            return self.entities.sample_known(n_random, seed)
        if not names:
            raise ValueError("No targets: give target names or n_random > 0.")
        targets = []
        for name in names:
            if not name or not name.strip():
                raise ValueError("A target name is empty: give the entity's name as the bench spells it.")
            if not self.entities.is_known(name):  # an unknown name: `get` names it, with similar ones
                raise ValueError(
                    f"{name!r} is not a known entity of bench {self.name!r} (the model was never shown to know "
                    "it): choose one of bench.entities.known, or add its questions with from_frame."
                )
            targets.append(self.entities.get(name))
        return targets

    def recognizer(self, model: HookedTransformer, sae: SAE, seed: int = 0, progress: bool = True) -> Recognizer:
        """Recognition (separation scores, centroids, both probes) for `model` + `sae` on this bench: the
        shipped recognizer where it was fit for exactly this (`fit_recognizer(reuse=...)`), else fit now."""
        return fit_recognizer(
            model,
            sae,
            self.entities,
            self.train_templates,
            self.heldout_templates,
            seed=seed,
            prepend_bos=model.cfg.default_prepend_bos,
            generic_texts=self.retain_text,
            progress=progress,
            reuse=self.shipped_recognizer,
        )

    def task(self, model: HookedTransformer, targets: Sequence[Entity], recognizer: Recognizer) -> ForgetTask:
        """Forget `targets`; retain the other known entities not held out for evaluation; keep the retain text.
        Suppression baselines stop on the bench's judge where it is not the exact-token check."""
        left_out = {t.name for t in targets} | {e.name for e in self.retain_eval}
        return ForgetTask(
            targets=list(targets),
            retain=[e for e in self.entities.known if e.name not in left_out],
            templates=self.train_templates,
            retain_text=self.retain_text,
            recognizer=recognizer,
            prepend_bos=model.cfg.default_prepend_bos,
            answer_eos=self.answer_eos,
            unknown=self.references,
            answer_judge=None if self.judge == "exact" else get_judge(self.judge).from_bench(self),
        )

    def evaluator(
        self, model: HookedTransformer, sae: SAE, task: ForgetTask, n_retain_eval: int | None = None, seed: int = 0
    ) -> Evaluator:
        """An `Evaluator` for `task`: retain accuracy over `retain_eval` other than the targets (or
        `n_retain_eval` of them, seeded), held-out generic text, the bench's strangers and answer judge."""
        targets = {t.name for t in task.targets}
        retain_eval = [e for e in self.retain_eval if e.name not in targets]
        if n_retain_eval is not None:
            if n_retain_eval > len(retain_eval):
                raise ValueError(f"n_retain_eval={n_retain_eval}, but only {len(retain_eval)} held-out entities left.")
            retain_eval = random.Random(seed).sample(retain_eval, n_retain_eval)
        if not retain_eval:
            raise ValueError(f"Bench {self.name!r} has no held-out known entity left to measure retain on.")
        return Evaluator(
            model=model,
            sae=sae,
            recognizer=task.recognizer,
            targets=task.targets,
            retain_eval=retain_eval,
            train_templates=self.train_templates,
            heldout_templates=self.heldout_templates,
            generic_text=self.heldout_text,
            unknown_reference=self.strangers,
            idk_answer=self.idk_answer,
            prepend_bos=model.cfg.default_prepend_bos,
            answer_eos=self.answer_eos,
            seed=seed,
            attribute_values=self.attribute_values,
            judge=get_judge(self.judge).from_bench(self),
        )


def _frame_entities(rows: pd.DataFrame) -> tuple[list[Entity], list[Template], list[Template]]:
    """Entities (attribute → answer) and the train / held-out templates of a user's question table."""
    missing = [c for c in FRAME_COLUMNS if c not in rows]
    if missing:
        raise ValueError(f"The question table lacks columns {missing}; it needs {list(FRAME_COLUMNS)} (+ split).")
    rows = rows.assign(split=rows.get("split", "train")).fillna({"split": "train"})
    bad_split = sorted(set(rows["split"]) - {"train", "heldout"})
    if bad_split:
        raise ValueError(f"split must be 'train' or 'heldout'; the table has {bad_split}.")
    parsed = []
    for i, row in enumerate(rows.itertuples(index=False), start=1):
        entity, question, answer = str(row.entity).strip(), str(row.question), str(row.answer).strip()
        if not entity or not answer:
            raise ValueError(f"Row {i}: entity and answer must be non-empty.")
        if question.count(entity) != 1:
            raise ValueError(f"Row {i}: the question must contain the entity's name {entity!r} once: {question!r}")
        text = question.replace(entity, NAME_SLOT).rstrip()
        parsed.append((entity, text, answer, row.split, str(getattr(row, "attribute", "") or "")))
    # A fact is named by its training question's phrasing, so entities asked the same thing share a
    # template; a held-out paraphrase joins the training fact of the same entity with the same answer.
    fact_of = {(e, a.lower()): attr or text for e, text, a, split, attr in parsed if split == "train"}
    templates: dict[tuple[str, str, str], Template] = {}
    facts: dict[str, dict[str, str]] = {}
    for entity, text, answer, split, attribute in parsed:
        attribute = attribute or fact_of.get((entity, answer.lower()), text)
        templates.setdefault((text, attribute, split), Template(text, attribute, split=split))
        facts.setdefault(entity, {})[attribute] = answer
    entities = [Entity(name, attrs) for name, attrs in facts.items()]
    train = [t for t in templates.values() if t.split == "train"]
    heldout = [t for t in templates.values() if t.split == "heldout"]
    if not train or not heldout:
        raise ValueError(
            "The question table needs 'train' rows (what the edit works on) and 'heldout' rows (paraphrases it "
            f"never sees, to check the forgetting holds under another phrasing); it has {len(train)} train and "
            f"{len(heldout)} held-out phrasings."
        )
    return entities, train, heldout


def _default_answers(answers: pd.DataFrame) -> dict[str, str]:
    """Per attribute, the answer given most often in `label_entities`' table `answers` (the strangers')."""
    defaults = {}
    for column in answers.columns:
        if column.endswith("_answer") and answers[column].notna().any():
            defaults[column.removesuffix("_answer")] = answers[column].dropna().value_counts().index[0]
    return defaults


def _answered_right(row: pd.Series, attribute: str) -> bool:
    """Whether `label_entities`' row says `attribute` was asked and answered right (NaN: not asked)."""
    verdict = row.get(f"{attribute}_correct")
    return bool(pd.notna(verdict) and verdict)


def _beyond_default(row: pd.Series, defaults: dict[str, str]) -> bool:
    """Whether a labelled entity has a right answer that is not the strangers' most common one."""
    attributes = [c.removesuffix("_answer") for c in row.index if c.endswith("_answer")]
    return any(_answered_right(row, a) and row[f"{a}_answer"] != defaults.get(a) for a in attributes)


def _own_facts(entity: Entity, row: pd.Series) -> Entity:
    """`entity` with only the attributes the model answered right, valued by the model's own answers."""
    facts = {a: row[f"{a}_answer"] for a in entity.attributes if _answered_right(row, a)}
    return Entity(entity.name, facts, entity.kind)
