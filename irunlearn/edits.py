"""Saving and loading an edited model as the weights it changed, tied to the base model they apply to."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer

from irunlearn.io import atomic_dir
from irunlearn.methods.base import UnlearnResult


def weights_hash(model: HookedTransformer) -> str:
    """sha256 over every parameter and buffer of `model`, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_edit(result: UnlearnResult, base: HookedTransformer, out: str | Path, force: bool = False) -> Path:
    """Write the tensors that differ from `base` (`edit.safetensors`) and `edit.json` into `out`, atomically.

    The JSON records the method, targets, config, stop reason and the hash of the base weights.
    """
    if not result.persistent:
        raise ValueError(f"{result.method} edits no weights (inference-time hooks); there is nothing to save.")
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
    }
    out = Path(out)
    with atomic_dir(out, overwrite=force) as tmp:
        save_file(changed, tmp / "edit.safetensors")
        (tmp / "edit.json").write_text(json.dumps(meta, indent=2))
    return out


def load_edit(base: HookedTransformer, path: str | Path) -> tuple[HookedTransformer, dict]:
    """A copy of `base` with the saved edit applied, and the edit's metadata.

    Raises ValueError if `base` is not the model the edit was made from (weights hash differs).
    """
    path = Path(path)
    meta = json.loads((path / "edit.json").read_text())
    if weights_hash(base) != meta["base_weights_sha256"]:
        raise ValueError(
            f"The edit in {path} was made from a different base model (weights hash mismatch). "
            "Load the base model it was made from (see edit.json)."
        )
    edited = copy.deepcopy(base)
    edited.load_state_dict(load_file(path / "edit.safetensors"), strict=False)
    return edited, meta
