"""What the report's figures draw, read from the models once and saved with the run: `EntityReadings`.

The latent map, the probe distributions, the feature shifts and the genuineness-at-a-glance figure need
per-entity readings of the original model and of every edited one (mean SAE latents over templates,
probe p_known, centroid distances). `read_entities` computes them from the models; `EntityReadings.save`
and `load` write and read them as plain files (safetensors + CSV + JSON), so `irunlearn report --from DIR`
draws every figure from a saved run without loading a model.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Float
from sae_lens import SAE
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from irunlearn.activations import encode_latents, extract_activations
from irunlearn.entities import EntitySet
from irunlearn.methods.base import UnlearnResult
from irunlearn.prompts import Template
from irunlearn.recognition import Recognizer

FILES = ("readings.safetensors", "probes.csv", "readings.json")


@dataclass
class EntityReadings:
    """Per-entity mean latents and probe readings of the original model and of each run's edited model.

    `probes` has one row per (entity, model): `model` ("original" or a method), `role` ("known",
    "stranger", "target"), probe p_known and centroid distances (means over the templates). Strangers are
    read by every edited model too, since indistinguishability compares targets and strangers under the
    same model. `after` maps each method to its targets' mean latents.
    """

    targets: list[str]
    known_names: list[str]
    unknown_names: list[str]
    known_latents: Float[torch.Tensor, "n_known d_sae"]
    unknown_latents: Float[torch.Tensor, "n_unknown d_sae"]
    before: Float[torch.Tensor, "n_targets d_sae"]
    after: dict[str, Float[torch.Tensor, "n_targets d_sae"]]
    probes: pd.DataFrame

    def save(self, folder: str | Path) -> None:
        """Write `readings.safetensors`, `probes.csv` and `readings.json` into `folder` (created; meant to be
        a part of a folder written atomically, such as `RunResults.save`'s)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=False)
        tensors = {"known": self.known_latents, "unknown": self.unknown_latents, "before": self.before}
        tensors |= {f"after.{i}": latents for i, latents in enumerate(self.after.values())}
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, folder / FILES[0])
        self.probes.to_csv(folder / FILES[1], index=False)
        meta = {
            "targets": self.targets,
            "known_names": self.known_names,
            "unknown_names": self.unknown_names,
            "methods": list(self.after),
        }
        (folder / FILES[2]).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> EntityReadings:
        """Readings as `save` wrote them; FileNotFoundError naming what is missing."""
        folder = Path(folder)
        missing = [name for name in FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} holds no saved entity readings: {missing} missing.")
        tensors = load_file(folder / FILES[0])
        meta = json.loads((folder / FILES[2]).read_text(encoding="utf-8"))
        return cls(
            targets=meta["targets"],
            known_names=meta["known_names"],
            unknown_names=meta["unknown_names"],
            known_latents=tensors["known"],
            unknown_latents=tensors["unknown"],
            before=tensors["before"],
            after={method: tensors[f"after.{i}"] for i, method in enumerate(meta["methods"])},
            probes=pd.read_csv(folder / FILES[1]),
        )


def read_entities(
    model: HookedTransformer,
    sae: SAE,
    recognizer: Recognizer,
    results: Sequence[UnlearnResult],
    entities: EntitySet,
    templates: Sequence[Template] | None = None,
    n_cloud: int = 200,
    seed: int = 0,
    progress: bool = False,
) -> EntityReadings:
    """Read `n_cloud` known people and strangers (targets excluded, drawn with `seed`) and the targets with
    the original model, then the targets and the strangers with each run's model (one progress bar).

    All `results` must forget the same targets (they share one latent map). Readings average over
    `templates` (default: the recognizer's training templates).
    """
    if not results:
        raise ValueError("No results: run at least one forgetting method first.")
    target_names = results[0].targets
    if any(r.targets != target_names for r in results):
        raise ValueError("All results must forget the same targets to share a latent map.")
    templates = list(templates or recognizer.templates)
    targets = [entities.get(name) for name in target_names]
    rng = random.Random(seed)
    known = [e for e in entities.known if e.name not in target_names]
    known = rng.sample(known, min(n_cloud, len(known)))
    unknown = rng.sample(entities.unknown, min(n_cloud, len(entities.unknown)))
    passes = [("original", "known", known, model), ("original", "stranger", unknown, model)]
    passes.append(("original", "target", targets, model))
    for r in results:
        passes += [(r.method, "target", targets, r.model), (r.method, "stranger", unknown, r.model)]
    frames, latents = [], {}
    for label, role, people, edited in tqdm(passes, desc="reading entities", disable=not progress, leave=True):
        acts = extract_activations(
            edited, recognizer.hook_name, people, templates, prepend_bos=recognizer.prepend_bos, progress=False
        )
        z = encode_latents(sae, acts.resid)
        frames.append(recognizer.describe(acts.resid, z, acts.index["entity"]).assign(model=label, role=role))
        latents[label, role] = z.reshape(len(people), len(templates), -1).mean(1)
    return EntityReadings(
        targets=list(target_names),
        known_names=[e.name for e in known],
        unknown_names=[e.name for e in unknown],
        known_latents=latents["original", "known"],
        unknown_latents=latents["original", "stranger"],
        before=latents["original", "target"],
        after={r.method: latents[r.method, "target"] for r in results},
        probes=pd.concat(frames, ignore_index=True),
    )
