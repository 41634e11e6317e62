"""The shared part of suppression baselines: push the target's answers down, stop when they are gone.

Subclasses supply only `forget_loss` (and `retain_loss`); the step, the stop check and the probe tracking
that shows what happened inside live here once. The stop check: every target's training-template answers
are no longer produced (`forget_acc ≤ max_forget_acc`), by teacher-forced exact tokens and, where the task
has an `answer_judge`, by judging the greedy answer itself (checked only when the exact tokens are gone,
since an answer still given token for token is still right). The loop then asks both probes whether the
target is forgotten (`base._forgotten_check`): answers gone with the residual still "known" is suppression,
reported as "still_known", not converged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer

from irunlearn.activations import sae_hook_name
from irunlearn.lm import encode_lines, token_nll
from irunlearn.methods.base import ForgetConfig, Method, StepOutput, latent_readings
from irunlearn.prompts import per_entity_accuracy


@dataclass
class SuppressionConfig(ForgetConfig):
    lr: float = 1e-3
    max_steps: int = 150
    extra_steps: int = 0
    max_forget_acc: float = 0.05
    retain_weight: float = 0.0
    n_retain_text: int = 96
    track_probe: bool = True


class Suppression(Method):
    """Base of the weight-editing baselines (grad_ascent, grad_diff, npo, rmu)."""

    config: SuppressionConfig
    done_reason = "suppressed"

    def setup(self, model: HookedTransformer) -> None:
        task, cfg = self.task, self.config
        self.hook_name = sae_hook_name(self.sae)
        self.forget = task.answer_batch(model, task.targets)
        self.target_facts = task.facts(task.targets)
        self.target_batch, self.target_names = task.entity_batch(model, task.targets)
        rng = random.Random(cfg.seed)
        lines = task.retain_lines(task.retain, cfg.n_retain_text, rng)
        self.retain_tokens, self.retain_mask = encode_lines(
            model.tokenizer, lines, model.cfg.n_ctx, task.prepend_bos, device=model.cfg.device
        )

    def forget_loss(self, model: HookedTransformer, logits: Float[torch.Tensor, "batch pos vocab"]) -> torch.Tensor:
        raise NotImplementedError

    def retain_loss(self, model: HookedTransformer) -> torch.Tensor:
        """Mean NLL on retain facts and generic text (used when `retain_weight > 0`)."""
        logits = model(self.retain_tokens, return_type="logits")
        return token_nll(logits, self.retain_tokens, self.retain_mask).sum() / self.retain_mask[:, 1:].sum()

    def step(self, model: HookedTransformer) -> StepOutput:
        cfg = self.config
        logits = model(self.forget.tokens, return_type="logits")
        forget = self.forget_loss(model, logits)
        terms = {"loss_forget": forget.item()}
        loss = forget
        if cfg.retain_weight > 0:
            retain = self.retain_loss(model)
            loss = loss + cfg.retain_weight * retain
            terms["loss_retain"] = retain.item()
        forget_acc = self.forget.forget_acc(model, logits.detach())
        per_target = pd.DataFrame({"target": forget_acc.index, "forget_acc_train": forget_acc.to_numpy()})
        if cfg.track_probe:
            with torch.no_grad():
                resid = self.target_batch.read(model, self.hook_name)
                readings = latent_readings(self.task.recognizer, self.sae.encode(resid), resid, self.target_names)
            per_target = per_target.merge(readings, on="target")
        done = bool((forget_acc <= cfg.max_forget_acc).all())
        if done and self.task.answer_judge is not None:
            judged = self.judged_forget_acc(model)
            per_target["forget_acc_judged"] = per_target["target"].map(judged)
            done = bool((judged <= cfg.max_forget_acc).all())
        return StepOutput(loss, terms, per_target, done=done)

    def judged_forget_acc(self, model: HookedTransformer) -> pd.Series:
        """Per target: fraction of its training questions whose greedy answer the task's judge calls right."""
        facts = self.target_facts
        return per_entity_accuracy(facts, self.task.answer_judge.correct(model, facts, self.task.prepend_bos))
