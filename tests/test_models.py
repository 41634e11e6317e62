"""Model and SAE loading: a tiny local Llama folder round trip, BOS handling, GGUF and SAE error paths."""

from __future__ import annotations

import pytest
import torch
from real_fixtures import save_tiny_llama
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformers import AutoModelForCausalLM, AutoTokenizer

from irunlearn import models

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama folder whose name contains "llama", which TransformerLens would otherwise route
    by name instead of by its config."""
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


def _tokens(folder, text="Q: In which country is the city of Venice? A:"):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


@pytest.mark.parametrize("processing", [True, False])
def test_hf_folder_matches_transformers(tiny_llama, processing):
    model = models.load_hf_folder(tiny_llama, processing=processing)
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokens = _tokens(tiny_llama)
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        theirs = reference(tokens).logits.log_softmax(-1)
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert model.cfg.original_architecture == "LlamaForCausalLM"
    assert model.cfg.n_key_value_heads == 2
    assert model.cfg.model_name == "tiny-llama"
    assert model.cfg.normalization_type == ("RMSPre" if processing else "RMS")


def test_bos_follows_the_tokenizer_unless_given(tiny_llama):
    assert not models.tokenizer_adds_bos(AutoTokenizer.from_pretrained(tiny_llama))
    assert models.load_hf_folder(tiny_llama).cfg.default_prepend_bos is False
    model = models.load_model(tiny_llama, prepend_bos=True)
    assert model.cfg.default_prepend_bos is True
    assert model.to_tokens("Venice")[0, 0].item() == model.tokenizer.bos_token_id


def test_load_model_dispatch_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model folder or GGUF file"):
        models.load_model(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="No model folder or GGUF file"):
        models.load_model("./no/such/folder")
    with pytest.raises(ValueError, match="neither an existing local path nor a TransformerLens registry name"):
        models.load_model("definitely-not-a-model-7b")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        models.load_model(tmp_path)


def test_folder_without_tokenizer(tiny_llama, tmp_path):
    (tmp_path / "config.json").write_text((tiny_llama / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no loadable tokenizer"):
        models.load_hf_folder(tmp_path)


def test_not_a_gguf_file(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip, not a GGUF")
    with pytest.raises(ValueError, match="not a GGUF file"):
        models.load_model(fake)
    with pytest.raises(FileNotFoundError, match="No GGUF file"):
        models.gguf_to_hf_folder(tmp_path / "absent.gguf")


def test_gguf_conversion_is_reused(tiny_llama, tmp_path):
    """A GGUF whose HF copy exists is not converted again: the copy is loaded as it is."""
    gguf_file = tmp_path / "tiny.gguf"
    gguf_file.write_bytes(models.GGUF_MAGIC + b"\x03\x00\x00\x00")
    assert models.gguf_to_hf_folder(gguf_file, tiny_llama) == tiny_llama
    model = models.load_gguf(gguf_file, hf_dir=tiny_llama)
    assert model.cfg.n_layers == 2


def test_cache_root_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IRUNLEARN_CACHE", str(tmp_path / "cache"))
    assert models.cache_root() == tmp_path / "cache"
    monkeypatch.delenv("IRUNLEARN_CACHE")
    assert models.cache_root().parts[-2:] == (".cache", "irunlearn")


def test_processing_flags():
    assert models._processing_flags(True) == dict.fromkeys(models._PROCESSING_FLAGS, True)
    assert models._processing_flags({"center_writing_weights": True}) == {
        "fold_ln": False,
        "center_writing_weights": True,
        "center_unembed": False,
        "fold_value_biases": False,
    }
    with pytest.raises(ValueError, match="Unknown weight-processing flags"):
        models._processing_flags({"fold_everything": True})


def _tiny_sae(folder) -> StandardSAE:
    metadata = SAEMetadata(
        model_name=str(folder),
        hook_name=HOOK,
        prepend_bos=False,
        model_from_pretrained_kwargs={"center_writing_weights": True, "n_devices": 1},
    )
    torch.manual_seed(0)
    return StandardSAE(StandardSAEConfig(d_in=64, d_sae=96, metadata=metadata))


def test_sae_round_trip_and_model_for_sae(tiny_llama, tmp_path):
    sae = _tiny_sae(tiny_llama)
    sae.save_model(tmp_path / "sae")
    loaded = models.load_sae(path=tmp_path / "sae")
    assert torch.equal(loaded.W_enc, sae.W_enc) and torch.equal(loaded.b_dec, sae.b_dec)
    assert loaded.cfg.metadata.hook_name == HOOK

    kwargs = models.model_load_kwargs_for_sae(loaded)
    assert kwargs == {"prepend_bos": False, "processing": {"center_writing_weights": True}}
    model = models.load_model(loaded.cfg.metadata.model_name, **kwargs)
    assert model.cfg.default_prepend_bos is False
    _, cache = model.run_with_cache(_tokens(tiny_llama), names_filter=HOOK, stop_at_layer=2)
    latents = loaded.encode(cache[HOOK])
    assert latents.shape == (1, cache[HOOK].shape[1], 96)


def test_load_sae_errors(tmp_path):
    with pytest.raises(ValueError, match="needs release and sae_id"):
        models.load_sae()
    with pytest.raises(ValueError, match="needs release and sae_id"):
        models.load_sae("gemma-scope-2b-pt-res-canonical")
    with pytest.raises(ValueError, match="not both"):
        models.load_sae("gpt2-small-res-jb", "blocks.0.hook_resid_pre", path=tmp_path)
    with pytest.raises(FileNotFoundError, match="No SAE at"):
        models.load_sae(path=tmp_path)
