"""SAE-guided forgetting (ours, arXiv 2509.15631): make the target's latents look like an unknown's.

    L_forget = mean_{t,τ} [ d(z_t, μ_U) − β · min(d(z_t, μ_K), m) ]
    L_act    = mean_{r,τ} ‖z_r(θ) − z_r(θ₀)‖² / ‖μ_U − μ_K‖²
    L_lm     = mean_c KL(p_θ₀(·|c) ‖ p_θ(·|c))          (retain facts and generic text)
    L        = L_forget + λ_act · L_act + λ_lm · L_lm

Stops once every target in every training context reads as unknown to the SAE probe (p < 0.5) and sits
closer to μ_U than to μ_K, then runs `extra_steps` more for margin (DESIGN §4).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import torch
from transformer_lens import HookedTransformer

from irunlearn.activations import EntityBatch, sae_hook_name
from irunlearn.lm import encode_lines, pad_id
from irunlearn.methods.base import ForgetConfig, Method, StepOutput, kl_to_reference, latent_readings


@dataclass
class SAEGuidedConfig(ForgetConfig):
    lr: float = 5e-4
    beta: float = 0.5
    margin: float = 1.0
    lambda_act: float = 1.0
    lambda_lm: float = 5.0
    latents: Literal["all", "selected"] = "all"
    n_retain_entities: int = 32
    retain_templates_per_entity: int = 3
    n_retain_text: int = 32


class SAEGuided(Method):
    name = "sae_guided"
    config_class = SAEGuidedConfig
    done_reason = "flipped"
    config: SAEGuidedConfig

    def setup(self, model: HookedTransformer) -> None:
        task, cfg = self.task, self.config
        self.hook_name = sae_hook_name(self.sae)
        self.subset = task.recognizer.selected_latents if cfg.latents == "selected" else None
        self.gap = task.recognizer.centroid_gap
        rng = random.Random(cfg.seed)
        retain = rng.sample(task.retain, min(cfg.n_retain_entities, len(task.retain)))
        target_batch, self.target_names = task.entity_batch(model, task.targets)
        retain_batch, _ = task.entity_batch(model, retain, cfg.retain_templates_per_entity, cfg.seed)
        # targets and retain entities go through the model together, once per step, only up to the hook
        self.entity_rows = EntityBatch.concat([target_batch, retain_batch], pad_id(model.tokenizer))
        self.n_target_rows = len(target_batch.positions)
        lines = task.retain_lines(retain, cfg.n_retain_text, rng)
        self.lm_tokens, self.lm_mask = encode_lines(model.tokenizer, lines, model.cfg.n_ctx, task.prepend_bos)
        with torch.no_grad():
            self.retain_latents = self.sae.encode(self.entity_rows.read(model, self.hook_name)[self.n_target_rows :])
            self.ref_logprobs = model(self.lm_tokens, return_type="logits").log_softmax(-1)

    def step(self, model: HookedTransformer) -> StepOutput:
        cfg, recognizer = self.config, self.task.recognizer
        all_resid = self.entity_rows.read(model, self.hook_name)
        all_latents = self.sae.encode(all_resid)
        resid, latents = all_resid[: self.n_target_rows], all_latents[: self.n_target_rows]
        retain_latents = all_latents[self.n_target_rows :]
        dist_unknown, dist_known = recognizer.distances(latents, self.subset)
        loss_forget = (dist_unknown - cfg.beta * dist_known.clamp(max=cfg.margin)).mean()
        loss_act = (retain_latents - self.retain_latents).square().sum(-1).mean() / self.gap
        logits = model(self.lm_tokens, return_type="logits")
        loss_lm = kl_to_reference(logits, self.ref_logprobs, self.lm_mask)
        loss = loss_forget + cfg.lambda_act * loss_act + cfg.lambda_lm * loss_lm
        with torch.no_grad():
            p_known = recognizer.sae_probe.predict_proba(latents)
            done = bool(((p_known < 0.5) & (dist_unknown < dist_known)).all())
        return StepOutput(
            loss=loss,
            terms={
                "loss_forget": loss_forget.item(),
                "loss_act": loss_act.item(),
                "loss_lm": loss_lm.item(),
                "retain_kl": loss_lm.item(),
            },
            per_target=latent_readings(recognizer, latents, resid, self.target_names),
            done=done,
        )
