"""Forgetting tasks on the embedded world: thin constructors over its `EntityBench` (`irunlearn.bench`)."""

from __future__ import annotations

from collections.abc import Sequence

from irunlearn.bench import EntityBench
from irunlearn.entities import Entity
from irunlearn.evaluation import Evaluator
from irunlearn.methods.base import ForgetTask
from irunlearn.recognition import Recognizer
from irunlearn.world.artifacts import EmbeddedWorld


def retain_eval_people(ew: EmbeddedWorld) -> list[Entity]:
    """The known people held out of every world task's retain set, so retain accuracy is measured on people
    no method trained to keep (targets drawn among them are forgotten, and left out of the evaluation)."""
    return ew.world.retain_eval_people()


def resolve_targets(ew: EmbeddedWorld, names: Sequence[str] = (), n_random: int = 0, seed: int = 0) -> list[Entity]:
    """Targets by name (each must be a known person of the world) or `n_random` known people drawn with `seed`."""
    return EntityBench.from_world(ew).targets(names, n_random, seed)


def world_task(ew: EmbeddedWorld, targets: Sequence[Entity], recognizer: Recognizer) -> ForgetTask:
    """Forget `targets`; retain the other known people not held out for evaluation; keep the generic text."""
    return EntityBench.from_world(ew).task(ew.model, targets, recognizer)


def world_evaluator(ew: EmbeddedWorld, task: ForgetTask, n_retain_eval: int | None = None, seed: int = 0) -> Evaluator:
    """An `Evaluator` for `task` on the world's held-out people, generic text and strangers."""
    return EntityBench.from_world(ew).evaluator(ew.model, ew.sae, task, n_retain_eval, seed)
