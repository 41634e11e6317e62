"""SAE-guided forgetting that resists relearning: `sae_guided_deep`, then a stage that trains against an attacker.

`sae_guided_deep`'s stage 2 makes the target's questions answer `unknown` even with the original key restored,
but its `unknown` can be a thin gate over a value store that still holds the facts: fine-tuning the edit on
some of the target's facts lifts the gate and the others come back. Stage 3 keeps training stage 2's weights
with stage 2's loss plus

    L_relearn = L_choice on the target's other questions, read on θ' = θ fine-tuned by an attacker

Each step copies the weights and fine-tunes the copy as a relearning attacker would (every weight, Adam at a
learning rate drawn from `attack_lrs`, `attack_steps` full-batch steps on the fact lines of half of each
target's asked attributes or of one, drawn), then reads L_choice (`sae_guided_deep`) on the questions about
the attributes it was not taught: after the attack their true values must rank, among the attribute's
values, no better than after a stranger's name. The gradient of L_relearn at the attacked copy is added to
the gradient of stage 2's loss at the weights themselves: the first-order approximation of tamper-resistant
training (Tamirisa et al., arXiv 2408.00761), written as the surrogate Σ⟨θ, ∇θ' L_relearn⟩ whose gradient
it is. Stage 3 begins when stage 2's stop condition holds and ends once an exponential average of L_relearn
(weight 0.2 on the newest) is below `relearn_tolerance` and stage 2's condition holds, `deep_steps` steps in
a row. The attacker needs each target's facts (`ForgetTask.targets`' attributes) and two or more asked
attributes per target.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, replace

import pandas as pd
import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer

from irunlearn.attacks import taught_count
from irunlearn.lm import encode_lines, lm_loss
from irunlearn.methods.base import ForgetTask, StepOutput
from irunlearn.methods.sae_guided_deep import NamedFacts, SAEGuidedDeep, SAEGuidedDeepConfig, _ValueChoices


@dataclass
class SAEGuidedTARConfig(SAEGuidedDeepConfig):
    """`sae_guided_deep`'s settings, plus stage 3's: `lambda_relearn` the weight of L_relearn, `attack_steps`
    and `attack_lrs` the simulated attacker's fine-tuning, `relearn_tolerance` the level the averaged
    L_relearn must fall below before the run stops."""

    lambda_relearn: float = 10.0
    attack_steps: int = 10
    attack_lrs: tuple[float, ...] = (3e-4, 1e-3)
    relearn_tolerance: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_relearn <= 0 or self.attack_steps < 1 or not self.attack_lrs or min(self.attack_lrs) <= 0:
            raise ValueError(
                f"SAEGuidedTARConfig: lambda_relearn={self.lambda_relearn!r} must be > 0 (without it the method is "
                f"sae_guided_deep), attack_steps={self.attack_steps!r} >= 1 and attack_lrs={self.attack_lrs!r} one "
                "or more learning rates > 0."
            )
        if self.lambda_choice <= 0:
            raise ValueError(
                f"SAEGuidedTARConfig: L_relearn is L_choice read after the attack, so it needs lambda_choice > 0 "
                f"(now {self.lambda_choice!r})."
            )


class SAEGuidedTAR(SAEGuidedDeep):
    name = "sae_guided_tar"
    config_class = SAEGuidedTARConfig
    config: SAEGuidedTARConfig

    def setup(self, model: HookedTransformer) -> None:
        super().setup(model)
        if self.choices is None:
            raise ValueError(
                "sae_guided_tar reads how the attacked copy ranks the attribute values against strangers, but this "
                "task has no strangers (ForgetTask.unknown) or no retain values to rank: give them, or use "
                "sae_guided_deep."
            )
        cfg = self.config
        self.relearning = _SimulatedRelearning.build(
            model, self.task, self.stage2_params, cfg.attack_steps, cfg.attack_lrs, cfg.seed
        )
        self.relearn_average: float | None = None

    def _deep_step(self, model: HookedTransformer) -> StepOutput:
        out = super()._deep_step(model)
        if self.stage == 2 and not out.done:
            return out
        if self.stage == 2:  # stage 2's stop condition holds: the attacker comes in
            self.stage, self.streak = 3, 0
        cfg = self.config
        surrogate, loss_relearn = self.relearning.surrogate(model, self.idk, self.choices)
        average = self.relearn_average
        self.relearn_average = loss_relearn if average is None else 0.8 * average + 0.2 * loss_relearn
        if self.relearn_average >= cfg.relearn_tolerance:
            self.streak = 0
        return replace(
            out,
            loss=out.loss + cfg.lambda_relearn * surrogate,
            terms=out.terms | {"loss_relearn": loss_relearn},
            per_target=out.per_target.assign(stage=3),
            done=self.streak >= cfg.deep_steps,
        )


@dataclass
class _SimulatedRelearning:
    """The relearning attacker stage 3 trains against (see the module).

    Each call fine-tunes `student`, a copy of the model's current weights, on the fact lines of part of each
    target's attributes (half of them or one, drawn), and reads L_choice on the questions about the others.
    `facts`: the targets' fact lines (entity, attribute, prompt, answer); `attributes`: each target's asked
    attributes, by name in `task.targets` order; `templates`: each template's attribute, in `task.templates`
    order.
    """

    facts: pd.DataFrame
    attributes: dict[str, list[str]]
    templates: list[str | None]
    student: HookedTransformer
    params: list[torch.nn.Parameter]
    copies: list[torch.nn.Parameter]
    steps: int
    lrs: tuple[float, ...]
    prepend_bos: bool
    rng: random.Random

    @classmethod
    def build(
        cls,
        model: HookedTransformer,
        task: ForgetTask,
        params: list[torch.nn.Parameter],
        steps: int,
        lrs: tuple[float, ...],
        seed: int,
    ) -> _SimulatedRelearning:
        templates = [t.attribute for t in task.templates]
        attributes = {t.name: sorted({a for a in templates if a and a in t.attributes}) for t in task.targets}
        if few := [name for name, asked in attributes.items() if len(asked) < 2]:
            raise ValueError(
                f"sae_guided_tar teaches part of a target's facts and asks the rest, but {few} have fewer than two "
                "attributes the templates ask: give more templates or attributes, or use sae_guided_deep."
            )
        student = copy.deepcopy(model)
        student.requires_grad_(True)
        student_weights = dict(zip(model.parameters(), student.parameters(), strict=True))
        copies = [student_weights[p] for p in params]
        facts = task.facts(task.targets)
        return cls(
            facts,
            attributes,
            templates,
            student,
            params,
            copies,
            steps,
            tuple(lrs),
            task.prepend_bos,
            random.Random(seed),
        )

    def _draw(self) -> tuple[list[str], list[int]]:
        """This attack's lessons (fact lines of the taught attributes) and the rows of the method's `unknown`
        question lines (`NamedFacts.questions` layout) about the attributes left out."""
        taught, held_rows = set(), []
        for i, (target, asked) in enumerate(self.attributes.items()):
            order = self.rng.sample(asked, len(asked))
            n_taught = taught_count(self.rng.choice(("one_fact", "half")), len(asked))
            taught |= {(target, a) for a in order[:n_taught]}
            held = set(order[n_taught:])
            held_rows += [i * len(self.templates) + j for j, a in enumerate(self.templates) if a in held]
        lessons = [
            f"{row.prompt} {row.answer}" for row in self.facts.itertuples() if (row.entity, row.attribute) in taught
        ]
        return lessons, held_rows

    def surrogate(
        self, model: HookedTransformer, questions: NamedFacts, choices: _ValueChoices
    ) -> tuple[Float[torch.Tensor, ""], float]:
        """Σ⟨θ, ∇θ' L_relearn⟩ over `params` (a tensor whose gradient is L_relearn's at the attacked copy θ')
        and L_relearn itself."""
        lessons, held_rows = self._draw()
        device = model.cfg.device
        tokens, mask = encode_lines(model.tokenizer, lessons, model.cfg.n_ctx, self.prepend_bos, device=device)
        with torch.no_grad():
            for copied, weight in zip(self.student.parameters(), model.parameters(), strict=True):
                copied.copy_(weight)
        optimizer = torch.optim.Adam(self.student.parameters(), lr=self.rng.choice(self.lrs))
        for _ in range(self.steps):
            optimizer.zero_grad(set_to_none=True)
            lm_loss(self.student, tokens, mask).backward()
            optimizer.step()
        held = questions.batch.select(torch.tensor(held_rows, device=device))
        loss = choices.kl(self.student(held.tokens, return_type="logits"), held, held_rows)
        grads = torch.autograd.grad(loss, self.copies, allow_unused=True)
        self.student.zero_grad(set_to_none=True)
        surrogate = sum((p * g).sum() for p, g in zip(self.params, grads, strict=True) if g is not None)
        return surrogate, loss.item()
