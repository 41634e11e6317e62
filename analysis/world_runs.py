"""The embedded world as the tuning scripts use it: loaded once, and one method scored on some targets.

`WorldRuns.load()` reads the shipped world, its bench and recognizer on one torch thread (so two scripts
can share the machine); `score` runs one method on named targets through `irunlearn.run`, without the
genuineness checks and progress bars, with the metrics asked for and the method's config overrides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

import irunlearn
from irunlearn import EntityBench, load_world
from irunlearn.recognition import Recognizer
from irunlearn.world.artifacts import EmbeddedWorld
from irunlearn.world.recognition import recognize_world


@dataclass
class WorldRuns:
    world: EmbeddedWorld
    bench: EntityBench
    recognizer: Recognizer

    @classmethod
    def load(cls) -> WorldRuns:
        torch.set_num_threads(1)
        world = load_world()
        return cls(world, EntityBench.from_world(world), recognize_world(world, progress=False)[0])

    def score(self, method: str, targets: Sequence[str], metrics: Sequence[str], **overrides) -> irunlearn.RunResults:
        """`method` on `targets` (names) forgotten together, scored by `metrics`."""
        return irunlearn.run(
            self.bench,
            self.world.model,
            self.world.sae,
            [method],
            targets=list(targets),
            recognizer=self.recognizer,
            genuineness=False,
            progress=False,
            metrics=list(metrics),
            **overrides,
        )
