"""Does the model know this entity? Latent separation scores, centroids and probes (DESIGN §3)."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer

from irunlearn.activations import check_pairing, encode_latents, extract_activations, forward_to_hook
from irunlearn.entities import Entity, EntitySet
from irunlearn.io import atomic_dir, weights_hash
from irunlearn.probes import LinearProbe, auroc
from irunlearn.prompts import Template

# The SAE probe reads latents firing in at least this fraction of its fitting rows (see `fit_recognizer`).
SAE_PROBE_MIN_SUPPORT = 0.02


class NoProbeSignalWarning(UserWarning):
    """A recognizer's probe found no known / unknown signal at its hook (its readings are the base rate)."""


def separation_scores(
    latents: Float[torch.Tensor, "n d_sae"],
    labels: Int[torch.Tensor, " n"],
    generic_latents: Float[torch.Tensor, "m d_sae"] | None = None,
    max_generic_freq: float = 0.02,
) -> pd.DataFrame:
    """Per-latent firing frequencies on known / unknown rows and the scores of Ferrando et al.

    `s_known = f_known − f_unknown`, `s_unknown = −s_known`. With `generic_latents` (latents on generic,
    entity-free tokens), latents firing on more than `max_generic_freq` of them get `generic=True` and are
    left out of the top-k lists.
    """
    if (labels == 1).sum() == 0 or (labels == 0).sum() == 0:
        raise ValueError("Separation scores need both known (label 1) and unknown (label 0) rows.")
    fires = latents > 0
    freq_known = fires[labels == 1].float().mean(0)
    freq_unknown = fires[labels == 0].float().mean(0)
    generic_freq = (generic_latents > 0).float().mean(0) if generic_latents is not None else None
    return pd.DataFrame(
        {
            "latent": range(latents.shape[1]),
            "freq_known": freq_known.cpu().numpy(),
            "freq_unknown": freq_unknown.cpu().numpy(),
            "s_known": (freq_known - freq_unknown).cpu().numpy(),
            "s_unknown": (freq_unknown - freq_known).cpu().numpy(),
            "generic": (generic_freq > max_generic_freq).cpu().numpy() if generic_freq is not None else False,
        }
    )


@dataclass
class Recognizer:
    """Known/unknown recognition at one hook: scores, centroids, an SAE probe and a residual probe.

    `metrics` holds the held-out evaluation (held-out entities × held-out templates). `p_known` asks it
    about any name. `fit_for` records what it was fit on (the model's and SAE's `weights_hash`, the seed,
    settings and `inputs_digest`), so a saved recognizer is reused only for what it belongs to (`fits`).
    """

    hook_name: str
    prepend_bos: bool
    templates: list[Template]  # the training templates: what p_known averages over
    scores: pd.DataFrame
    mu_known: Float[torch.Tensor, " d_sae"]
    mu_unknown: Float[torch.Tensor, " d_sae"]
    sae_probe: LinearProbe
    resid_probe: LinearProbe
    top_k: int = 20
    metrics: dict[str, float] = field(default_factory=dict)
    fit_for: dict[str, str | int | float] = field(default_factory=dict)

    def fits(self, model: HookedTransformer, sae: SAE, **settings: str | int | float) -> bool:
        """Whether this recognizer was fit for exactly these weights (and these `settings`, e.g. `seed=0`)."""
        wanted = {"model": weights_hash(model), "sae": weights_hash(sae), **settings}
        return all(self.fit_for.get(key) == value for key, value in wanted.items())

    def top_latents(self, which: str = "known") -> pd.DataFrame:
        """The `top_k` latents by `s_known` (which="known") or `s_unknown`, generic latents left out."""
        column = {"known": "s_known", "unknown": "s_unknown"}[which]
        eligible = self.scores[~self.scores["generic"].astype(bool)]
        return eligible.nlargest(self.top_k, column)[["latent", column, "freq_known", "freq_unknown"]]

    @property
    def selected_latents(self) -> Int[torch.Tensor, " k"]:
        """Indices of the top known and top unknown latents together."""
        chosen = pd.concat([self.top_latents("known"), self.top_latents("unknown")])["latent"]
        return torch.tensor(sorted(set(chosen.tolist())), device=self.mu_known.device)

    @property
    def centroid_gap(self) -> Float[torch.Tensor, ""]:
        return (self.mu_unknown - self.mu_known).square().sum()

    def distances(
        self, latents: Float[torch.Tensor, "n d_sae"], latent_subset: Int[torch.Tensor, " k"] | None = None
    ) -> tuple[Float[torch.Tensor, " n"], Float[torch.Tensor, " n"]]:
        """`(d(z, μ_U), d(z, μ_K))`, squared distances divided by `‖μ_U − μ_K‖²` (DESIGN §4).

        Differentiable in `latents`; with `latent_subset`, over those latents only.
        """
        mu_u, mu_k = self.mu_unknown, self.mu_known
        if latent_subset is not None:
            latents, mu_u, mu_k = latents[:, latent_subset], mu_u[latent_subset], mu_k[latent_subset]
        gap = (mu_u - mu_k).square().sum()
        return (latents - mu_u).square().sum(-1) / gap, (latents - mu_k).square().sum(-1) / gap

    @torch.no_grad()
    def p_known(
        self,
        model: HookedTransformer,
        sae: SAE,
        names: str | Sequence[str],
        templates: Sequence[Template] | None = None,
        progress: bool = False,
    ) -> pd.DataFrame:
        """Per name: mean probe probabilities (SAE and residual), centroid distances and their ratio over templates.

        >>> recognizer.p_known(model, sae, ["Kalo Renvi"])  # columns p_known_sae, p_known_resid, ...
        """
        names = [names] if isinstance(names, str) else list(names)
        acts = extract_activations(
            model,
            self.hook_name,
            [Entity(n) for n in names],
            templates or self.templates,
            prepend_bos=self.prepend_bos,
            progress=progress,
        )
        return self.describe(acts.resid, encode_latents(sae, acts.resid), acts.index["entity"])

    def describe(
        self,
        resid: Float[torch.Tensor, "n d_model"],
        latents: Float[torch.Tensor, "n d_sae"],
        entity: Sequence[str] | pd.Series,
    ) -> pd.DataFrame:
        """Probe outputs and distances for given activations, averaged per entity (order kept), and
        `dist_ratio`, the ratio of the averaged distances (below 1: nearer the unknown centroid)."""
        dist_unknown, dist_known = self.distances(latents)
        rows = pd.DataFrame(
            {
                "entity": list(entity),
                "p_known_sae": self.sae_probe.predict_proba(latents).cpu().numpy(),
                "p_known_resid": self.resid_probe.predict_proba(resid).cpu().numpy(),
                "dist_to_unknown": dist_unknown.cpu().numpy(),
                "dist_to_known": dist_known.cpu().numpy(),
            }
        )
        rows = rows.groupby("entity", sort=False).mean().reset_index()
        rows["dist_ratio"] = rows["dist_to_unknown"] / rows["dist_to_known"]
        return rows

    def save(self, path: str | Path, overwrite: bool = False) -> None:
        """Write `recognizer.safetensors` + `recognizer.json` + `scores.csv` into `path`, atomically.

        A non-empty `path` is replaced only with `overwrite`, and only once the new files are complete.
        """
        tensors = {"mu_known": self.mu_known, "mu_unknown": self.mu_unknown}
        tensors |= {f"sae_probe.{k}": v for k, v in self.sae_probe.state_dict().items()}
        tensors |= {f"resid_probe.{k}": v for k, v in self.resid_probe.state_dict().items()}
        meta = {
            "hook_name": self.hook_name,
            "prepend_bos": self.prepend_bos,
            "top_k": self.top_k,
            "metrics": self.metrics,
            "fit_for": self.fit_for,
            "templates": [vars(t) for t in self.templates],
        }
        with atomic_dir(Path(path), overwrite=overwrite) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "recognizer.safetensors")
            (tmp / "recognizer.json").write_text(json.dumps(meta, indent=2))
            self.scores.to_csv(tmp / "scores.csv", index=False)

    @classmethod
    def load(cls, path: str | Path) -> Recognizer:
        path = Path(path)
        tensors = load_file(path / "recognizer.safetensors")
        meta = json.loads((path / "recognizer.json").read_text())

        def probe(prefix: str) -> LinearProbe:
            return LinearProbe.from_state_dict(
                {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            )

        return cls(
            hook_name=meta["hook_name"],
            prepend_bos=meta["prepend_bos"],
            templates=[Template(**t) for t in meta["templates"]],
            scores=pd.read_csv(path / "scores.csv"),
            mu_known=tensors["mu_known"],
            mu_unknown=tensors["mu_unknown"],
            sae_probe=probe("sae_probe."),
            resid_probe=probe("resid_probe."),
            top_k=meta["top_k"],
            metrics=meta["metrics"],
            fit_for=meta.get("fit_for", {}),  # absent in recognizers saved before it existed
        )


def fit_recognizer(
    model: HookedTransformer,
    sae: SAE,
    entities: EntitySet,
    train_templates: Sequence[Template],
    heldout_templates: Sequence[Template],
    top_k: int = 20,
    seed: int = 0,
    prepend_bos: bool | None = None,
    generic_texts: Sequence[str] = (),
    progress: bool = True,
    min_latent_support: float = SAE_PROBE_MIN_SUPPORT,
    reuse: Recognizer | None = None,
) -> Recognizer:
    """Fit recognition for `model` + `sae` on known vs unknown `entities`.

    Entities are split 60/20/20 (seeded) into fit / calibration / test. Scores, centroids and probes
    are fit on fit-entities × `train_templates`; the 0.5 threshold is calibrated on calibration-entities
    × `train_templates`; `metrics` report test-entities × `heldout_templates` (AUROC and accuracy). The SAE
    probe reads only latents that fire in at least `min_latent_support` of the fitting rows (rarer ones
    identify single entities, not recognition; see `LinearProbe`). A probe that calibration finds without
    signal warns (`NoProbeSignalWarning`) and reads every entity at the base rate. `reuse` (a shipped
    recognizer) is returned instead of fitting when it was fit for these weights, entities, seed and
    settings (`Recognizer.fits`): the same computation, so the same numbers.
    """
    if not entities.known or not entities.unknown:
        raise ValueError(
            f"Recognition needs known and unknown entities; got {len(entities.known)} known and "
            f"{len(entities.unknown)} unknown."
        )
    hook_name = check_pairing(model, sae)
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    settings = {"seed": seed, "top_k": top_k, "min_latent_support": min_latent_support}
    settings["inputs"] = inputs_digest(entities, train_templates, heldout_templates, generic_texts, bos)
    if reuse is not None and reuse.fits(model, sae, **settings):
        return reuse
    fit_set, rest = entities.split(0.6, seed)
    calib_set, test_set = rest.split(0.5, seed + 2)

    def rows(subset: EntitySet, templates: Sequence[Template]):
        acts = extract_activations(
            model,
            hook_name,
            subset.known + subset.unknown,
            templates,
            labels=[1] * len(subset.known) + [0] * len(subset.unknown),
            prepend_bos=bos,
            progress=progress,
        )
        return acts, encode_latents(sae, acts.resid)

    fit_acts, fit_latents = rows(fit_set, train_templates)
    calib_acts, calib_latents = rows(calib_set, train_templates)
    test_acts, test_latents = rows(test_set, heldout_templates)
    labels = fit_acts.labels
    generic = _generic_latents(model, sae, hook_name, generic_texts, bos) if generic_texts else None
    min_support = math.ceil(min_latent_support * len(labels))
    sae_probe = LinearProbe.fit(fit_latents, labels, calib_latents, calib_acts.labels, min_support=min_support)
    resid_probe = LinearProbe.fit(fit_acts.resid, labels, calib_acts.resid, calib_acts.labels)
    for which, probe in (("SAE", sae_probe), ("residual", resid_probe)):
        if not probe.signal:
            warnings.warn(
                f"The {which} probe at {hook_name} ranks the calibration entities backwards: it carries no "
                "recognition signal there, and reads every entity at the base rate. Try another hook or SAE "
                "(`irunlearn.real.layer_probes.layer_probe_aurocs` compares hooks).",
                NoProbeSignalWarning,
                stacklevel=2,
            )
    recognizer = Recognizer(
        hook_name=hook_name,
        prepend_bos=bos,
        templates=list(train_templates),
        scores=separation_scores(fit_latents, labels, generic),
        mu_known=fit_latents[labels == 1].mean(0),
        mu_unknown=fit_latents[labels == 0].mean(0),
        sae_probe=sae_probe,
        resid_probe=resid_probe,
        top_k=top_k,
    )
    y_test = test_acts.labels
    p_sae, p_resid = sae_probe.predict_proba(test_latents), resid_probe.predict_proba(test_acts.resid)
    top_known, top_unknown = recognizer.top_latents("known"), recognizer.top_latents("unknown")
    recognizer.metrics = {
        "probe_auroc_sae": auroc(p_sae, y_test),
        "probe_auroc_resid": auroc(p_resid, y_test),
        "probe_acc_sae": float(((p_sae > 0.5).long() == y_test).float().mean()),
        "probe_acc_resid": float(((p_resid > 0.5).long() == y_test).float().mean()),
        "top_known_score": float(top_known["s_known"].iloc[0]),
        "top_unknown_score": float(top_unknown["s_unknown"].iloc[0]),
        "n_fit_rows": len(fit_acts.index),
        "n_test_rows": len(test_acts.index),
    }
    recognizer.fit_for = {"model": weights_hash(model), "sae": weights_hash(sae), **settings}
    return recognizer


def inputs_digest(
    entities: EntitySet,
    train_templates: Sequence[Template],
    heldout_templates: Sequence[Template],
    generic_texts: Sequence[str],
    prepend_bos: bool,
) -> str:
    """sha256 of what a recognizer is fit on besides the weights: the known and unknown names, both template
    sets, the generic texts and BOS, in order."""
    inputs = [
        [e.name for e in entities.known],
        [e.name for e in entities.unknown],
        [vars(t) for t in train_templates],
        [vars(t) for t in heldout_templates],
        list(generic_texts),
        prepend_bos,
    ]
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


@torch.no_grad()
def _generic_latents(
    model: HookedTransformer, sae: SAE, hook_name: str, texts: Sequence[str], prepend_bos: bool
) -> Float[torch.Tensor, "m d_sae"]:
    """SAE latents on every token of entity-free text."""
    latents = []
    for text in texts:
        tokens = model.to_tokens(text, prepend_bos=prepend_bos)
        latents.append(encode_latents(sae, forward_to_hook(model, tokens, hook_name)[0]))
    return torch.cat(latents)
