"""Real models and real entities: the Gemma 3 and SmolLM2 fixtures, Wikidata records, famous people, labelling.

No pipeline of its own: `irunlearn.EntityBench.from_records(kind, model)` builds a bench from these records
and `irunlearn.run` runs it, as it runs the embedded world.
"""

from irunlearn.qa import greedy_generate
from irunlearn.real.fixture import gemma3_path, load_fixture, load_gemma3, load_smollm2, smollm2_path
from irunlearn.real.labelling import label_counts, label_entities
from irunlearn.real.people import load_people, people_bench, person_templates
from irunlearn.real.wikidata import attributes, check_answer, cities_above, load_entities, question_templates

__all__ = [
    "attributes",
    "check_answer",
    "cities_above",
    "gemma3_path",
    "greedy_generate",
    "label_counts",
    "label_entities",
    "load_entities",
    "load_fixture",
    "load_gemma3",
    "load_people",
    "load_smollm2",
    "people_bench",
    "person_templates",
    "question_templates",
    "smollm2_path",
]
