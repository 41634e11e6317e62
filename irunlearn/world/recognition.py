"""Recognition fitted on the embedded world with its standard splits."""

from __future__ import annotations

from collections.abc import Collection

from irunlearn.activations import extraction_throughput
from irunlearn.entities import EntitySet
from irunlearn.recognition import Recognizer, fit_recognizer
from irunlearn.world.artifacts import EmbeddedWorld


def recognize_world(
    ew: EmbeddedWorld,
    top_k: int = 20,
    seed: int = 0,
    progress: bool = True,
    measure_throughput: bool = False,
    exclude: Collection[str] = (),
) -> tuple[Recognizer, float | None]:
    """The world's `Recognizer`: its known people vs held-out unknown names.

    The world ships the one fit at build (`ew.recognizer`, seed 0, `top_k` 20); `fit_recognizer` returns it
    when it was fit for these weights, people and settings, else fits one (the same computation).
    Probes train on training question templates and are reported on held-out entities × held-out
    templates. The known people in `exclude` take no part (an oracle never learned them, so they are
    neither known nor training strangers to it). Returns the recognizer and, with `measure_throughput`,
    the extraction throughput in prompt tokens per second from one extra timed pass over every entity
    (else None).
    """
    world = ew.world
    train, heldout = world.question_templates("train"), world.question_templates("heldout")
    entities = EntitySet([e for e in world.known if e.name not in set(exclude)], world.unknown_eval)
    recognizer = fit_recognizer(
        ew.model,
        ew.sae,
        entities,
        train,
        heldout,
        top_k=top_k,
        seed=seed,
        generic_texts=world.generic_train,
        progress=progress,
        reuse=ew.recognizer,
    )
    if not measure_throughput:
        return recognizer, None
    return recognizer, extraction_throughput(ew.model, ew.hook_name, list(world.entities), train)
