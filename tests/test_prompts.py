"""Locating the entity's last token, for any tokenization of the name."""

import pytest
from transformers import GPT2Tokenizer

from irunlearn.prompts import Template, entity_token_index, entity_token_positions

NAME = "Kalomi Renvisa"


@pytest.fixture(scope="module")
def tok(ew):
    return ew.tokenizer


def name_tokens(tok, prompt: str, name: str, prepend_bos: bool = False) -> list[str]:
    """The decoded tokens from the name's first token through the located last token."""
    ids, last = entity_token_positions(tok, [prompt], [name], prepend_bos)[0]
    start = prompt.index(name)
    first = len(tok(prompt[:start], add_special_tokens=False)["input_ids"]) + prepend_bos
    return [tok.decode([i]) for i in ids[first : last + 1]]


@pytest.mark.parametrize(
    "prompt",
    [
        f"{NAME} plays golf.",  # sentence start (no leading space)
        f"Q: Where was {NAME} born? A:",  # mid-sentence
        f'She said "{NAME}" twice.',  # in quotes
        f"Q: What is {NAME}'s job? A:",  # possessive right after the name
        NAME,  # the whole prompt
    ],
)
def test_last_token_of_a_multi_token_name(tok, prompt):
    pieces = name_tokens(tok, prompt, NAME)
    assert len(pieces) >= 3, pieces  # the world's tokenizer splits names into syllables
    assert "".join(pieces).strip() == NAME


def test_bos_shifts_the_index_by_one(tok):
    prompt = f"Q: Where was {NAME} born? A:"
    without = entity_token_index(tok, prompt, NAME, prepend_bos=False)
    with_bos = entity_token_index(tok, prompt, NAME, prepend_bos=True)
    assert with_bos == without + 1
    ids, _ = entity_token_positions(tok, [prompt], [NAME], prepend_bos=True)[0]
    assert ids[0] == tok.bos_token_id


def test_name_absent_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="does not occur in prompt"):
        entity_token_index(tok, "Q: Where was Tor Vi born? A:", NAME)
    with pytest.raises(ValueError, match="does not occur"):
        entity_token_index(tok, f"Q: Where was {NAME.lower()} born? A:", NAME)  # case matters


def test_repeated_name_uses_first_occurrence(tok):
    prompt = f"{NAME} met {NAME}."
    first_only = entity_token_index(tok, f"{NAME} met", NAME, prepend_bos=False)
    assert entity_token_index(tok, prompt, NAME, prepend_bos=False) == first_only


def test_slow_tokenizer_by_incremental_decoding_agrees(tok, tmp_path):
    # The world's byte-level BPE, loaded as a slow (pure-Python) GPT-2 tokenizer: no offset mapping.
    tok.backend_tokenizer.model.save(str(tmp_path))
    slow = GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), bos_token=tok.bos_token)
    assert not slow.is_fast
    for prompt in (f"Q: Where was {NAME} born? A:", f"{NAME} plays golf.", f'"{NAME}"'):
        assert entity_token_index(slow, prompt, NAME, False) == entity_token_index(tok, prompt, NAME, False)


def test_template_prefix_and_render():
    template = Template("Q: Where was {name} born? A:", "birth_city")
    assert template.prefix("Tor Vi") == "Q: Where was Tor Vi"
    assert template.render("Tor Vi", "Lyon") == "Q: Where was Tor Vi born? A: Lyon"
    statement = Template("{name} plays {answer}.", "sport", kind="statement")
    assert statement.render("Tor Vi", "golf") == "Tor Vi plays golf."
    with pytest.raises(ValueError, match="exactly once"):
        Template("no slot here")
