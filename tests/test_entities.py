import pytest

from irunlearn.entities import Entity, EntitySet, answer_matches, normalize_answer


def test_normalize_answer_strips_case_articles_punctuation_accents():
    assert normalize_answer("  The Kraków  Tigers! ") == "krakow tigers"
    assert answer_matches("an engineer.", "Engineer")
    assert not answer_matches("engineers", "engineer")


def test_entity_set_lookup_and_errors():
    known = [Entity("Ana Bel", {"sport": "golf"}), Entity("Tor Vi", {"sport": "rugby"})]
    entities = EntitySet(known, [Entity("Mo Ru")])
    assert entities.is_known("Ana Bel") and not entities.is_known("Mo Ru")
    assert "Mo Ru" in entities and len(entities) == 3
    with pytest.raises(KeyError, match="No entity named 'Nobody Here'"):
        entities.get("Nobody Here")
    with pytest.raises(ValueError, match="repeated"):
        EntitySet(known, [Entity("Ana Bel")])
    with pytest.raises(ValueError, match="non-empty"):
        Entity("  ")


def test_split_is_reproducible_and_disjoint():
    entities = EntitySet([Entity(f"K{i} X") for i in range(20)], [Entity(f"U{i} Y") for i in range(10)])
    first, second = entities.split(0.6, seed=3)
    again, _ = entities.split(0.6, seed=3)
    assert [e.name for e in first.known] == [e.name for e in again.known]
    assert len(first.known) == 12 and len(second.unknown) == 4
    assert not {e.name for e in first} & {e.name for e in second}
    assert entities.sample_known(5, seed=1) == entities.sample_known(5, seed=1)
    with pytest.raises(ValueError, match="only 20"):
        entities.sample_known(21, seed=0)
