"""Entity-token activations: equal to a full forward's, computed only as far as the hook."""

import copy

import pytest
import torch

from irunlearn.activations import check_pairing, encode_latents, extract_activations, stop_layer
from irunlearn.entities import Entity
from irunlearn.prompts import entity_token_index


def test_extraction_equals_full_run_with_cache(ew):
    world = ew.world
    entities = world.known[:5] + world.unknown_eval[:5]
    templates = world.question_templates("train")[:3]
    acts = extract_activations(ew.model, ew.hook_name, entities, templates, labels=[1] * 5 + [0] * 5, progress=False)
    assert acts.resid.shape == (30, ew.model.cfg.d_model)
    assert acts.labels.tolist() == [1] * 15 + [0] * 15
    for row in (0, 17, 29):
        item = acts.index.iloc[row]
        full_prompt = next(t for t in templates if t.text == item["template"]).render(item["entity"])
        tokens = ew.model.to_tokens(full_prompt)
        _, cache = ew.model.run_with_cache(tokens)
        position = entity_token_index(ew.tokenizer, full_prompt, item["entity"])
        assert position == item["position"]
        torch.testing.assert_close(acts.resid[row], cache[ew.hook_name][0, position], atol=1e-5, rtol=1e-5)


def test_stop_layer_parses_block_hooks():
    assert stop_layer("blocks.2.hook_resid_post") == 3
    assert stop_layer("blocks.0.mlp.hook_post") == 1
    assert stop_layer("hook_embed") is None


def test_sae_latents_are_sparse(ew):
    acts = extract_activations(ew.model, ew.hook_name, ew.world.known[:4], ew.world.templates[:2], progress=False)
    latents = encode_latents(ew.sae, acts.resid)
    assert latents.shape == (8, ew.sae.cfg.d_sae)
    assert ((latents > 0).sum(-1) <= ew.sae.cfg.d_sae // 8).all()


def test_mismatched_sae_is_a_clear_error(ew):
    wrong_hook = copy.deepcopy(ew.sae)
    wrong_hook.cfg.metadata.hook_name = "blocks.9.hook_resid_post"
    with pytest.raises(ValueError, match=r"blocks\.9\.hook_resid_post.*does not exist"):
        check_pairing(ew.model, wrong_hook)
    wrong_width = copy.deepcopy(ew.sae)
    wrong_width.cfg.d_in = ew.model.cfg.d_model + 1
    with pytest.raises(ValueError, match=rf"d_in={ew.model.cfg.d_model + 1}.*width {ew.model.cfg.d_model}"):
        check_pairing(ew.model, wrong_width)
    assert check_pairing(ew.model, ew.sae) == ew.hook_name


def test_empty_inputs_are_errors(ew):
    with pytest.raises(ValueError, match="No entities"):
        extract_activations(ew.model, ew.hook_name, [], ew.world.templates, progress=False)
    with pytest.raises(ValueError, match="No templates"):
        extract_activations(ew.model, ew.hook_name, [Entity("Ka Lo")], [], progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        extract_activations(ew.model, "blocks.1.hook_nope", [Entity("Ka Lo")], ew.world.templates, progress=False)
