"""irunlearn: interpretability-first genuine unlearning with TransformerLens and SAELens."""

__version__ = "0.1.0"

from irunlearn.bench import EntityBench  # noqa: E402
from irunlearn.entities import Entity, EntitySet  # noqa: E402
from irunlearn.experiment import RunResults, run  # noqa: E402
from irunlearn.prompts import Template, entity_token_index  # noqa: E402
from irunlearn.world.artifacts import EmbeddedWorld, load_world  # noqa: E402

__all__ = [
    "EmbeddedWorld",
    "Entity",
    "EntityBench",
    "EntitySet",
    "RunResults",
    "Template",
    "entity_token_index",
    "load_world",
    "run",
]
