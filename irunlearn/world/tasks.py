"""Forgetting tasks on the embedded world: choosing targets, the task, and its evaluator."""

from __future__ import annotations

import random
from collections.abc import Sequence

from irunlearn.entities import Entity
from irunlearn.evaluation import Evaluator
from irunlearn.methods.base import ForgetTask
from irunlearn.recognition import Recognizer
from irunlearn.world.artifacts import EmbeddedWorld
from irunlearn.world.generator import ATTRIBUTE_VALUES
from irunlearn.world.generator import N_RETAIN_EVAL as N_RETAIN_EVAL  # re-exported: the tasks' figure

N_UNKNOWN_EVAL = 50  # the last unknown names are the evaluator's strangers; the task's references come before


def retain_eval_people(ew: EmbeddedWorld) -> list[Entity]:
    """The known people held out of every world task's retain set, so retain accuracy is measured on people
    no method trained to keep (targets drawn among them are forgotten, and left out of the evaluation)."""
    return ew.world.retain_eval_people()


def resolve_targets(ew: EmbeddedWorld, names: Sequence[str] = (), n_random: int = 0, seed: int = 0) -> list[Entity]:
    """Targets by name (each must be a known person of the world) or `n_random` known people drawn with `seed`."""
    entities = ew.world.entities
    if names and n_random:
        raise ValueError("Give target names or a number of random targets, not both.")
    if n_random:
        return entities.sample_known(n_random, seed)
    if not names:
        raise ValueError("No targets: pass --target NAME (repeatable) or --random-targets N.")
    targets = []
    for name in names:
        entity = entities.get(name)
        if not entities.is_known(name):
            raise ValueError(
                f"{name!r} is not a known person in this world (the model never learned facts about them)."
            )
        targets.append(entity)
    return targets


def world_task(ew: EmbeddedWorld, targets: Sequence[Entity], recognizer: Recognizer) -> ForgetTask:
    """Forget `targets`; retain the other known people not held out for evaluation; keep the generic text.

    The unknown names not kept for evaluation are the task's reference strangers (`ForgetTask.unknown`).
    """
    left_out = {t.name for t in targets} | {e.name for e in retain_eval_people(ew)}
    return ForgetTask(
        targets=list(targets),
        retain=[e for e in ew.world.known if e.name not in left_out],
        templates=ew.world.question_templates("train"),
        retain_text=ew.world.generic_train,
        recognizer=recognizer,
        unknown=ew.world.unknown_eval[:-N_UNKNOWN_EVAL],
    )


def world_evaluator(ew: EmbeddedWorld, task: ForgetTask, n_retain_eval: int | None = None, seed: int = 0) -> Evaluator:
    """An `Evaluator` for `task`: retain accuracy over the held-out people (`retain_eval_people`) other than the
    targets, or `n_retain_eval` of them (seeded); held-out generic text."""
    targets = {t.name for t in task.targets}
    retain_eval = [e for e in retain_eval_people(ew) if e.name not in targets]
    if n_retain_eval is not None:
        if n_retain_eval > len(retain_eval):
            raise ValueError(f"n_retain_eval={n_retain_eval}, but only {len(retain_eval)} held-out people are left.")
        retain_eval = random.Random(seed).sample(retain_eval, n_retain_eval)
    return Evaluator(
        model=ew.model,
        sae=ew.sae,
        recognizer=task.recognizer,
        targets=task.targets,
        retain_eval=retain_eval,
        train_templates=ew.world.question_templates("train"),
        heldout_templates=ew.world.question_templates("heldout"),
        generic_text=ew.world.generic_heldout,
        unknown_reference=ew.world.unknown_eval[-N_UNKNOWN_EVAL:],
        seed=seed,
        attribute_values={attribute: list(values) for attribute, values in ATTRIBUTE_VALUES.items()},
    )
