"""Real models and real entities: the SmolLM2 fixture, Wikidata records, known/unknown labelling."""

from irunlearn.real.fixture import load_smollm2, smollm2_path
from irunlearn.real.labelling import greedy_generate, label_entities
from irunlearn.real.wikidata import attributes, check_answer, load_entities, question_templates

__all__ = [
    "attributes",
    "check_answer",
    "greedy_generate",
    "label_entities",
    "load_entities",
    "load_smollm2",
    "question_templates",
    "smollm2_path",
]
