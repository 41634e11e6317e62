"""Locating the entity's last token, for any tokenization of the name."""

import pytest

from irunlearn.prompts import Template, entity_token_index, entity_token_positions

NAME = "Kalomi Renvisa"


@pytest.fixture(scope="module")
def tok(ew):
    return ew.tokenizer


def name_tokens(tok, prompt: str, name: str, prepend_bos: bool = False) -> list[str]:
    """The decoded tokens of the shortest span ending at the located token that still spells the name."""
    ids, last = entity_token_positions(tok, [prompt], [name], prepend_bos)[0]
    first = max(i for i in range(last + 1) if name in tok.decode(ids[i : last + 1]))
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


class WithoutOffsets:
    """The world's tokenizer seen through the interface of a slow tokenizer: no offset mapping."""

    is_fast = False

    def __init__(self, tok):
        self._tok = tok
        self.bos_token_id = tok.bos_token_id

    def __call__(self, text, **kwargs):
        assert "return_offsets_mapping" not in kwargs
        return self._tok(text, **kwargs)

    def decode(self, ids):
        return self._tok.decode(ids)


def test_incremental_decoding_agrees_with_offsets(tok):
    slow = WithoutOffsets(tok)
    for prompt in (f"Q: Where was {NAME} born? A:", f"{NAME} plays golf.", f'"{NAME}"', f"Q: What is {NAME}'s job?"):
        for bos in (False, True):
            assert entity_token_index(slow, prompt, NAME, bos) == entity_token_index(tok, prompt, NAME, bos)


def test_template_prefix_and_render():
    template = Template("Q: Where was {name} born? A:", "birth_city")
    assert template.prefix("Tor Vi") == "Q: Where was Tor Vi"
    assert template.render("Tor Vi", "Lyon") == "Q: Where was Tor Vi born? A: Lyon"
    statement = Template("{name} plays {answer}.", "sport", kind="statement")
    assert statement.render("Tor Vi", "golf") == "Tor Vi plays golf."
    with pytest.raises(ValueError, match="exactly once"):
        Template("no slot here")
