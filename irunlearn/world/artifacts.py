"""The shipped embedded world on disk: tokenizer, model, SAE and world data, checked on load."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sae_lens import SAE
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerFast

from irunlearn.entities import Entity, EntitySet
from irunlearn.io import atomic_dir
from irunlearn.prompts import Template
from irunlearn.world.generator import World
from irunlearn.world.tokenizer import load_tokenizer
from irunlearn.world.train_model import ModelTrainConfig, make_model

DEFAULT_ARTIFACTS = Path(__file__).parent / "artifacts"
MANIFEST = "manifest.json"


class CorruptArtifactError(RuntimeError):
    """An artifact file is missing or does not match the checksum recorded when it was built."""


@dataclass
class EmbeddedWorld:
    """What `irunlearn.load_world()` returns: the trained model, its tokenizer and SAE, and the world."""

    model: HookedTransformer
    tokenizer: PreTrainedTokenizerFast
    sae: SAE
    world: World
    build_info: dict
    path: Path

    @property
    def hook_name(self) -> str:
        return self.sae.cfg.metadata.hook_name


def world_to_json(world: World) -> dict:
    return {
        "seed": world.seed,
        "known": [asdict(e) for e in world.known],
        "unknown_eval": [asdict(e) for e in world.unknown_eval],
        "first_names": world.first_names,
        "last_names": world.last_names,
        "templates": [asdict(t) for t in world.templates],
        "generic_train": world.generic_train,
        "generic_heldout": world.generic_heldout,
        "forget_sets": world.forget_sets,
    }


def world_from_json(data: dict) -> World:
    return World(
        seed=data["seed"],
        entities=EntitySet([Entity(**e) for e in data["known"]], [Entity(**e) for e in data["unknown_eval"]]),
        first_names=data["first_names"],
        last_names=data["last_names"],
        templates=[Template(**t) for t in data["templates"]],
        generic_train=data["generic_train"],
        generic_heldout=data["generic_heldout"],
        forget_sets=data.get("forget_sets", {}),  # absent in worlds written before forget sets existed
    )


def save_world(
    out: Path,
    world: World,
    tokenizer_dir: Path,
    model: HookedTransformer,
    model_cfg: ModelTrainConfig,
    sae: SAE,
    build_info: dict,
    overwrite: bool = False,
) -> None:
    """Write all artifacts into `out` atomically, with a sha256 manifest that `load_world` checks."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "tokenizer").mkdir()
        for file in tokenizer_dir.iterdir():
            (tmp / "tokenizer" / file.name).write_bytes(file.read_bytes())
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        (tmp / "model_config.json").write_text(json.dumps(asdict(model_cfg), indent=2))
        sae.save_model(tmp / "sae")
        (tmp / "world.json").write_text(json.dumps(world_to_json(world)))
        (tmp / "build.json").write_text(json.dumps(build_info, indent=2))
        write_manifest(tmp)


def write_manifest(folder: Path) -> None:
    """Record the sha256 of every file under `folder` in its manifest, for `verify_artifacts`."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(folder)): sha256_file(p) for p in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def load_world(path: str | Path | None = None, verify: bool = True) -> EmbeddedWorld:
    """Load the embedded world (the shipped one by default): model, tokenizer, SAE, world data.

    With `verify`, every file is checked against the build's sha256 manifest first, so a truncated or
    edited artifact fails with `CorruptArtifactError` naming the file, not with a confusing shape error.

    >>> ew = irunlearn.load_world()
    >>> ew.model, ew.sae, ew.world.known[0]
    """
    path = Path(path) if path is not None else DEFAULT_ARTIFACTS
    if not (path / MANIFEST).exists():
        raise FileNotFoundError(
            f"No embedded world at {path} (no {MANIFEST}). Build one with `irunlearn world build --out {path}`."
        )
    if verify:
        verify_artifacts(path)
    tokenizer = load_tokenizer(path / "tokenizer")
    model_cfg = ModelTrainConfig(**json.loads((path / "model_config.json").read_text()))
    model = make_model(model_cfg, tokenizer)
    model.load_state_dict(load_file(path / "model.safetensors"))
    model.eval()
    sae = SAE.load_from_disk(str(path / "sae"), device="cpu")
    sae.eval()
    world = world_from_json(json.loads((path / "world.json").read_text()))
    build_info = json.loads((path / "build.json").read_text())
    return EmbeddedWorld(model, tokenizer, sae, world, build_info, path)


def verify_artifacts(path: Path) -> None:
    """Raise `CorruptArtifactError` if any file listed in the manifest is missing or altered."""
    manifest = json.loads((path / MANIFEST).read_text())
    for name, digest in manifest.items():
        file = path / name
        if not file.exists():
            raise CorruptArtifactError(f"Artifact {file} is missing. Rebuild with `irunlearn world build`.")
        if sha256_file(file) != digest:
            raise CorruptArtifactError(
                f"Artifact {file} does not match its checksum (corrupted or edited). Restore it from git "
                "(`git checkout -- irunlearn/world/artifacts`) or rebuild with `irunlearn world build --force`."
            )


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
