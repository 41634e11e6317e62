"""Saving and loading an edited model as the weights it changed, tied to the base model they apply to."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer

from irunlearn.io import CorruptArtifactError, atomic_dir, check_output_dir, recover, tensor_sha256, weights_hash
from irunlearn.methods.base import UnlearnResult

EDIT_TENSORS, EDIT_META = "edit.safetensors", "edit.json"


def save_edit(result: UnlearnResult, base: HookedTransformer, out: str | Path, force: bool = False) -> Path:
    """Write the tensors that differ from `base` (`edit.safetensors`) and `edit.json` into `out`, atomically.

    The JSON records the method, targets, config, stop reason, the hash of the base weights and the sha256
    of every saved tensor, which `load_edit` checks. `out` is checked (`check_output_dir`) before anything
    is computed; with `force` an existing edit is replaced recoverably (`irunlearn.io.atomic_dir`).
    """
    if not result.persistent:
        raise ValueError(f"{result.method} edits no weights (inference-time hooks); there is nothing to save.")
    out = check_output_dir(out, overwrite=force)
    base_state = base.state_dict()
    changed = {
        name: tensor.detach().contiguous()
        for name, tensor in result.model.state_dict().items()
        if not torch.equal(tensor, base_state[name])
    }
    meta = {
        "method": result.method,
        "targets": result.targets,
        "stop_reason": result.stop_reason,
        "steps": result.steps,
        "config": json.loads(result.config_json()),
        "base_weights_sha256": weights_hash(base),
        "changed": sorted(changed),
        "tensor_sha256": {name: tensor_sha256(tensor) for name, tensor in sorted(changed.items())},
    }
    with atomic_dir(out, overwrite=force) as tmp:
        save_file(changed, tmp / EDIT_TENSORS)
        (tmp / EDIT_META).write_text(json.dumps(meta, indent=2))
    return out


def load_edit(base: HookedTransformer, path: str | Path) -> tuple[HookedTransformer, dict]:
    """A copy of `base` with the saved edit applied, and the edit's metadata.

    Raises ValueError if `base` is not the model the edit was made from (weights hash differs), and
    `CorruptArtifactError` naming the file if either file is missing, unreadable (truncated) or does not
    hold exactly the recorded tensors with their recorded sha256 (a flipped bit, an extra tensor).
    """
    path = Path(path)
    recover(path)
    meta_file, tensor_file = path / EDIT_META, path / EDIT_TENSORS
    for file in (meta_file, tensor_file):
        if not file.is_file():
            raise CorruptArtifactError(f"{file} is missing: {path} is not a saved edit (see `save_edit`).")
    try:
        meta = json.loads(meta_file.read_text())
        recorded, base_sha = meta["tensor_sha256"], meta["base_weights_sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CorruptArtifactError(
            f"{meta_file} is not a valid edit record ({type(err).__name__}: {err}); save the edit again."
        ) from None
    if weights_hash(base) != base_sha:
        raise ValueError(
            f"The edit in {path} was made from a different base model (weights hash mismatch). "
            "Load the base model it was made from (see edit.json)."
        )
    try:
        tensors = load_file(tensor_file)
    except Exception as err:  # safetensors raises its own error types for truncated or garbled files
        raise CorruptArtifactError(f"{tensor_file} cannot be read ({err}); it is truncated or corrupted.") from None
    if set(tensors) != set(recorded):
        extra, missing = sorted(set(tensors) - set(recorded)), sorted(set(recorded) - set(tensors))
        raise CorruptArtifactError(
            f"{tensor_file} does not hold the tensors {meta_file} records (extra: {extra}, missing: {missing})."
        )
    altered = [name for name, tensor in tensors.items() if tensor_sha256(tensor) != recorded[name]]
    if altered:
        raise CorruptArtifactError(f"{tensor_file}: tensor {altered[0]} does not match its sha256 (corrupted).")
    edited = copy.deepcopy(base)
    state = edited.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise CorruptArtifactError(f"{tensor_file} holds tensors the base model does not have: {unknown[:5]}.")
    edited.load_state_dict(state | tensors, strict=True)
    return edited, meta
