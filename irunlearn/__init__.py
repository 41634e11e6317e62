"""irunlearn: interpretability-first genuine unlearning with TransformerLens and SAELens."""

from irunlearn.entities import Entity, EntitySet
from irunlearn.prompts import Template, entity_token_index
from irunlearn.world.artifacts import EmbeddedWorld, load_world

__version__ = "0.1.0"

__all__ = ["EmbeddedWorld", "Entity", "EntitySet", "Template", "entity_token_index", "load_world"]
