"""How deep is the forgetting? Where a model keeps a person's facts, and whether an edit removed them or
only moved their key.

An edit can make a target read and answer as a stranger while every layer after the edited ones still maps
the old key (the name's residual) to the old facts. These measurements tell the two apart:

- `locate`: on the original model, patch a stranger's mean residual at each name token (and at the question
  tokens after it) at each layer, and record how much the gold answer's log-probability drops: where the
  facts are read from.
- key restoration: patch the ORIGINAL model's residual at the target's name tokens into the edited model,
  layer by layer up to the SAE's; answers that come back were left downstream.
- forced choice: rank the true value of each attribute against the attribute's other values by answer
  log-probability; a model that forgot ranks the target's true value first no more often than a stranger's.
  With it, the answer-loss membership AUROC (target vs strangers given the same facts).
- relearning attacks (UNDO protocol): fine-tune on (a) half the target's facts, (b) one fact, (c) other
  people's facts only, (d) sentences that merely mention the target, with a swept learning rate, and read
  the held-out facts at checkpoints; the attacker's best over the sweep is reported.
- retain of held-out people who share a name word with a target, apart from everyone else: an average over
  many people hides the few an edit of shared name tokens reaches.

Each is a registered metric of group "depth" (`Evaluator.metrics(model, [...])`); the functions under them
take plain models and entities so analysis scripts can call them directly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from sae_lens import SAE
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from irunlearn.activations import patched_logits, resid_hooks, sae_hook_name, stop_layer
from irunlearn.attacks import ATTACKS, Attack, build_attack
from irunlearn.entities import Entity, attribute_values
from irunlearn.evaluation import Evaluator
from irunlearn.io import weights_hash
from irunlearn.lm import encode_lines, lm_loss
from irunlearn.methods.base import AnswerBatch
from irunlearn.methods.sae_guided import shares_a_name_word
from irunlearn.methods.sae_guided_deep import NamedFacts
from irunlearn.metrics import MetricResult, register_metric
from irunlearn.probes import auroc
from irunlearn.prompts import Template, fact_questions

ATTACK_STEPS = (10, 25, 50, 100, 200)
ATTACK_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
N_OTHER_PEOPLE = 4  # attack (c): whose facts (every training phrasing) the attacker teaches
N_STRANGERS = 10  # forced choice and membership: strangers given the targets' facts, in turn


def question_facts(entities: Sequence[Entity], templates: Sequence[Template]) -> pd.DataFrame:
    """`fact_questions` with each row's template text (`template`), which aligns the same phrasing across people."""
    questions = [t for t in templates if t.kind == "question"]
    return fact_questions(entities, questions).assign(
        template=[t.text for e in entities for t in questions if t.attribute in e.attributes]
    )


# Locating the facts -----------------------------------------------------------------------------------


@torch.no_grad()
def locate(
    model: HookedTransformer,
    entities: Sequence[Entity],
    templates: Sequence[Template],
    strangers: Sequence[Entity],
    prepend_bos: bool = True,
    answer_eos: bool = True,
    first_token: bool = False,
) -> pd.DataFrame:
    """Where does `model` read `entities`' facts from? One row per (layer, position): the mean drop of the
    gold answer's log-probability when the residual there is replaced by strangers' mean residual.

    Positions are the name's tokens counted from its last (`name[-1]`, `name[-2]`, ...) and all prompt
    tokens after the name together (`question`). The replacement is the mean of `strangers`' residuals in
    the same phrasing at the same position (name tokens aligned from the end, question tokens by distance
    from the answer), so it is what the model holds there for a name it never learned. A large drop at
    (L, p) means the answer depends on what position p holds at layer L. The gold answer's log-probability
    is summed over its tokens (and the EOS after it with `answer_eos`), or with `first_token` that of its
    first token only (a real model's few-shot answer, whose later tokens follow from the first; this also
    unembeds only that position, which matters with a 262k vocabulary on a CPU).

    >>> heat = locate(ew.model, targets, ew.world.question_templates("train"), ew.world.unknown_eval[-50:])
    >>> locate_figure(heat).show()
    """
    if not strangers:
        raise ValueError("locate needs strangers (names the model never learned) for the replacement residual.")
    lines, reference = _located_lines(model, entities, templates, strangers, prepend_bos, answer_eos)
    hooks = resid_hooks(model)
    _, ref_cache = model.run_with_cache(reference.batch.tokens, names_filter=hooks, return_type=None)
    clean = _gold_logprob(model, lines, [], first_token)
    if first_token:  # a patch at block L changes nothing before it: run on from the clean residual there
        _, line_cache = model.run_with_cache(lines.batch.tokens, names_filter=hooks, return_type=None)
    positions = [(f"name[-{k + 1}]", lines.name_offsets == k) for k in range(int(lines.name_offsets.max()) + 1)]
    records = []
    for layer, hook in enumerate(hooks):
        means = _stranger_means(lines, reference, ref_cache[hook])
        for label, chosen in [*positions, ("question", None)]:
            if chosen is None:
                rows, cols, values = lines.question_rows, lines.question_cols, means["question"]
            else:
                rows, cols, values = lines.name_rows[chosen], lines.name_cols[chosen], means["name"][chosen]
            known = ~values.isnan().any(-1)
            if first_token:
                resid = line_cache[hook].clone()
                resid[rows[known], cols[known]] = values[known]
                drop = clean - _first_answer_token(model, lines, [], resid, layer + 1)[0]
            else:
                patch = _patch_hook(rows[known], cols[known], values[known])
                drop = clean - _gold_logprob(model, lines, [(hook, patch)], first_token)
            touched = torch.zeros(len(clean), dtype=torch.bool, device=clean.device)
            touched[rows[known]] = True
            records.append(
                {
                    "layer": layer,
                    "position": label,
                    "logprob_drop": float(drop[touched].mean()),
                    "rows": int(touched.sum()),
                }
            )
    return pd.DataFrame(records)


def _located_lines(
    model: HookedTransformer,
    entities: Sequence[Entity],
    templates: Sequence[Template],
    strangers: Sequence[Entity],
    prepend_bos: bool,
    answer_eos: bool,
) -> tuple[NamedFacts, NamedFacts]:
    """`entities`' fact lines and the same phrasings about `strangers` (given the first entity's answers,
    which only fill the answer slot), with the names located."""
    lines = NamedFacts.build(model, question_facts(entities, templates), prepend_bos, answer_eos)
    reference = NamedFacts.build(
        model,
        question_facts([Entity(s.name, entities[0].attributes) for s in strangers], templates),
        prepend_bos,
        answer_eos,
    )
    return lines, reference


def _patch_hook(rows: Int[torch.Tensor, " n"], cols: Int[torch.Tensor, " n"], values: Float[torch.Tensor, "n d"]):
    """A hook replacing the activation at (`rows`, `cols`) by `values`."""

    def patch(activation: torch.Tensor, hook) -> torch.Tensor:
        activation = activation.clone()
        activation[rows, cols] = values.to(activation.dtype)
        return activation

    return patch


def _gold_logprob(
    model: HookedTransformer, lines: NamedFacts, fwd_hooks: list, first_token: bool
) -> Float[torch.Tensor, " batch"]:
    """Each line's gold answer log-probability under `fwd_hooks`: summed over the answer's tokens, or of its
    first token only (`first_token`; only that position is unembedded)."""
    if not first_token:
        return lines.answer_logprob(model.run_with_hooks(lines.batch.tokens, fwd_hooks=fwd_hooks, return_type="logits"))
    logprobs, _ = _first_answer_token(model, lines, fwd_hooks)
    return logprobs


def _first_answer_token(
    model: HookedTransformer,
    lines: NamedFacts,
    fwd_hooks: list,
    resid: Float[torch.Tensor, "batch pos d_model"] | None = None,
    start_at_layer: int | None = None,
) -> tuple[Float[torch.Tensor, " batch"], Float[torch.Tensor, " batch"]]:
    """Per line: the log-probability of the gold answer's first token and whether it is the greedy choice
    (1.0 / 0.0), from the final residual at the position before the answer, unembedded there only. From
    the lines' tokens, or from `resid` entering block `start_at_layer`."""
    final: dict[str, torch.Tensor] = {}

    def keep(activation: torch.Tensor, hook) -> None:
        final["resid"] = activation

    model.run_with_hooks(
        lines.batch.tokens if resid is None else resid,
        fwd_hooks=[*fwd_hooks, ("ln_final.hook_normalized", keep)],
        return_type=None,
        start_at_layer=start_at_layer,
    )
    rows = torch.arange(len(lines.batch.tokens), device=lines.batch.tokens.device)
    before = lines.batch.first_answer_position()
    logits = final["resid"][rows, before] @ model.W_U + model.b_U
    if model.cfg.output_logits_soft_cap > 0:
        cap = model.cfg.output_logits_soft_cap
        logits = cap * torch.tanh(logits / cap)
    logprobs = logits.log_softmax(-1)
    gold = lines.batch.tokens[rows, before + 1]
    return logprobs[rows, gold], (logits.argmax(-1) == gold).float()


def _stranger_means(
    lines: NamedFacts, reference: NamedFacts, ref_resid: Float[torch.Tensor, "batch pos d"]
) -> dict[str, Float[torch.Tensor, "n d"]]:
    """Strangers' mean residual per (template, name offset) and per (template, question token from the
    answer), looked up for each name token / question token of `lines` (NaN where no stranger has one)."""

    def keyed(facts: NamedFacts, rows, cols, offsets) -> list[tuple[str, int]]:
        return [(facts.facts["template"][r], o) for r, o in zip(rows.tolist(), offsets.tolist(), strict=True)]

    def answer_distance(facts: NamedFacts, rows, cols) -> torch.Tensor:
        start = facts.batch.first_answer_position() + 1
        return start[rows] - cols

    def lookup(ref_keys, ref_values, want_keys) -> torch.Tensor:
        sums: dict[tuple[str, int], torch.Tensor] = {}
        counts: dict[tuple[str, int], int] = {}
        for key, value in zip(ref_keys, ref_values, strict=True):
            sums[key] = sums.get(key, 0) + value
            counts[key] = counts.get(key, 0) + 1
        nan = torch.full((ref_values.shape[-1],), float("nan"), device=ref_values.device)
        return torch.stack([sums[k] / counts[k] if k in sums else nan for k in want_keys])

    name_means = lookup(
        keyed(reference, reference.name_rows, reference.name_cols, reference.name_offsets),
        ref_resid[reference.name_rows, reference.name_cols],
        keyed(lines, lines.name_rows, lines.name_cols, lines.name_offsets),
    )
    question_means = lookup(
        keyed(
            reference,
            reference.question_rows,
            reference.question_cols,
            answer_distance(reference, reference.question_rows, reference.question_cols),
        ),
        ref_resid[reference.question_rows, reference.question_cols],
        keyed(
            lines,
            lines.question_rows,
            lines.question_cols,
            answer_distance(lines, lines.question_rows, lines.question_cols),
        ),
    )
    return {"name": name_means, "question": question_means}


@torch.no_grad()
def sae_split(
    model: HookedTransformer,
    sae: SAE,
    entities: Sequence[Entity],
    templates: Sequence[Template],
    strangers: Sequence[Entity],
    prepend_bos: bool = True,
    answer_eos: bool = True,
) -> pd.DataFrame:
    """Can this SAE at this hook carry forgetting at all? Patches at the SAE's hook, before any weight edit.

    The residual x at a name token is the SAE's reconstruction x̂ = decode(encode(x)) plus its error
    e = x − x̂. At the name's last token (`name[-1]`) and at every name token (`name`), each patch replaces:

    - `residual`: x by the strangers' mean residual (what a genuinely forgotten name could at most reach
      at this hook);
    - `reconstruction`: x̂ by the strangers' mean reconstruction, the target's own error kept;
    - `error`: e by the strangers' mean error, the target's own reconstruction kept;
    - `latents_to_mu_U`: the activation-level upper bound of an SAE-latent edit: the latents set to μ_U
      (the strangers' mean latents at the name's last token over every phrasing), the error kept,
      x ← decode(μ_U) + e.

    One row per (positions, patch) (and `none`, unpatched): the mean gold first-answer-token
    log-probability, its drop from unpatched, and `kept`, the fraction of lines whose greedy first answer
    token is still the gold one. If `latents_to_mu_U` keeps the answers while `residual` removes them, what
    the answers read at this hook lies outside what the SAE's latents carry (its error term, other layers).
    """
    hook = sae_hook_name(sae)
    lines, reference = _located_lines(model, entities, templates, strangers, prepend_bos, answer_eos)
    end = stop_layer(hook)
    _, cache = model.run_with_cache(lines.batch.tokens, names_filter=[hook], stop_at_layer=end, return_type=None)
    _, ref_cache = model.run_with_cache(
        reference.batch.tokens, names_filter=[hook], stop_at_layer=end, return_type=None
    )
    resid, ref_resid = cache[hook], ref_cache[hook]
    recon, ref_recon = sae.decode(sae.encode(resid)), sae.decode(sae.encode(ref_resid))
    means = {
        "residual": _stranger_means(lines, reference, ref_resid)["name"],
        "reconstruction": _stranger_means(lines, reference, ref_recon)["name"],
        "error": _stranger_means(lines, reference, ref_resid - ref_recon)["name"],
    }
    last = reference.name_offsets == 0
    mu_unknown = sae.encode(ref_resid[reference.name_rows[last], reference.name_cols[last]]).mean(0)
    rows, cols = lines.name_rows, lines.name_cols
    own_recon, own_error = recon[rows, cols], (resid - recon)[rows, cols]
    patched = {
        "residual": means["residual"],
        "reconstruction": means["reconstruction"] + own_error,
        "error": own_recon + means["error"],
        "latents_to_mu_U": sae.decode(mu_unknown[None])[0] + own_error,
    }
    clean, clean_hits = _first_answer_token(model, lines, [])
    records = [
        {"positions": "none", "patch": "none", "logprob": float(clean.mean()), "logprob_drop": 0.0}
        | {"kept": float(clean_hits.mean()), "rows": len(clean)}
    ]
    for positions, chosen in (("name[-1]", lines.name_offsets == 0), ("name", lines.name_offsets >= 0)):
        for patch, values in patched.items():
            ok = chosen & ~values.isnan().any(-1)
            logprob, hits = _first_answer_token(model, lines, [(hook, _patch_hook(rows[ok], cols[ok], values[ok]))])
            records.append(
                {
                    "positions": positions,
                    "patch": patch,
                    "logprob": float(logprob.mean()),
                    "logprob_drop": float((clean - logprob).mean()),
                    "kept": float((hits * clean_hits).sum() / clean_hits.sum().clamp(min=1)),
                    "rows": len(clean),
                }
            )
    return pd.DataFrame(records)


def suggest_window(heat: pd.DataFrame, fraction: float = 0.5) -> tuple[int, int]:
    """The layers whose name tokens the answers still read: (first, last) layer at which patching a name
    token (the largest drop over the name's tokens) costs at least `fraction` of its largest drop anywhere.

    Past the last such layer the facts have been carried to the question tokens and an edit of the name
    representation there no longer reaches them; the window is where to edit, its last layer where a
    hook (an SAE) that should see the key before it is read belongs.
    """
    name = heat[heat["position"].str.startswith("name")]
    per_layer = name.groupby("layer")["logprob_drop"].max()
    strong = per_layer[per_layer >= fraction * per_layer.max()].index
    return int(strong.min()), int(strong.max())


def locate_figure(heat: pd.DataFrame, title: str = "Where the answers are read from") -> go.Figure:
    """Heat map of `locate`'s drop of the gold answer's log-probability, layer × position."""
    order = list(dict.fromkeys(heat["position"]))
    grid = heat.pivot(index="layer", columns="position", values="logprob_drop")[order]
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=order,
            y=[f"blocks.{layer}" for layer in grid.index],
            colorscale="Blues",
            colorbar={"title": "log-prob drop"},
            text=grid.round(2).to_numpy(),
            texttemplate="%{text}",
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title="position patched with a stranger's mean residual",
        yaxis_title="layer (hook_resid_post)",
    )
    return fig


# Key restoration --------------------------------------------------------------------------------------


@torch.no_grad()
def key_restoration(
    original: HookedTransformer,
    edited: HookedTransformer,
    targets: Sequence[Entity],
    templates: Sequence[Template],
    up_to_layer: int,
    prepend_bos: bool = True,
) -> pd.DataFrame:
    """Per layer L ≤ `up_to_layer` and target: the fraction of the target's answers (of those the original
    gives) that the edited model gives again when its `blocks.L.hook_resid_post` at the target's name tokens
    is replaced by the original model's. 1 means the edit left the facts downstream and moved only the key.
    """
    lines = NamedFacts.build(original, question_facts(targets, templates), prepend_bos)
    tokens, hooks = lines.batch.tokens, resid_hooks(original, up_to=up_to_layer)
    original_logits, cache = original.run_with_cache(tokens, names_filter=hooks)
    known = lines.batch.greedy_hits(original_logits)
    entity = lines.facts["entity"]
    records = []
    for layer, hook in enumerate(hooks):
        values = cache[hook][lines.name_rows, lines.name_cols]
        logits = patched_logits(edited, tokens, hook, lines.name_rows, lines.name_cols, values)
        hits = lines.batch.greedy_hits(logits) & known
        per_target = pd.Series(hits.float().cpu().numpy()).groupby(entity).sum() / pd.Series(
            known.float().cpu().numpy()
        ).groupby(entity).sum().clip(lower=1)
        records += [{"layer": layer, "target": t, "restored": float(v)} for t, v in per_target.items()]
    return pd.DataFrame(records)


def sae_layer(evaluator: Evaluator) -> int:
    """The block the evaluator's SAE reads (its hook's block)."""
    layer = stop_layer(sae_hook_name(evaluator.sae))
    return (evaluator.model.cfg.n_layers if layer is None else layer) - 1


@register_metric("key_restoration", group="depth", higher_is_better=False, columns=("key_restoration",))
def key_restoration_metric(evaluator: Evaluator, model: HookedTransformer) -> MetricResult:
    """Were the facts removed, or only their key moved? The original model's residual at the targets' name
    tokens is patched into the edited model at each `blocks.L.hook_resid_post` up to the SAE's layer;
    `key_restoration` is the largest fraction of the targets' answers that comes back at any layer
    (0: nothing downstream still holds the facts). Per item: the fraction per layer and target."""
    per_item = key_restoration(
        evaluator.model,
        model,
        evaluator.targets,
        evaluator.train_templates,
        sae_layer(evaluator),
        evaluator.prepend_bos,
    )
    per_layer = per_item.groupby("layer")["restored"].mean()
    return MetricResult({"key_restoration": float(per_layer.max())}, per_item)


# Forced choice and membership -------------------------------------------------------------------------


@torch.no_grad()
def forced_choice(
    model: HookedTransformer,
    entities: Sequence[Entity],
    templates: Sequence[Template],
    choices: dict[str, list[str]],
    prepend_bos: bool = True,
    batch_size: int = 512,
) -> pd.DataFrame:
    """One row per (entity, question): whether the true value has the highest answer log-probability among
    the attribute's `choices`, and the true answer's NLL (`answer_nll`, summed over its tokens)."""
    questions = question_facts(entities, templates)
    questions = questions[questions["attribute"].isin(choices)].reset_index(drop=True)
    if questions.empty:
        raise ValueError(f"No question of {[e.name for e in entities]} asks an attribute among {sorted(choices)}.")
    candidates = pd.DataFrame(
        [
            {"question": i, "entity": q.entity, "prompt": q.prompt, "answer": value, "is_true": value == q.answer}
            for i, q in enumerate(questions.itertuples())
            for value in choices[q.attribute]
        ]
    )
    scores = []
    for start in range(0, len(candidates), batch_size):
        chunk = candidates.iloc[start : start + batch_size]
        batch = AnswerBatch.build(model, chunk, prepend_bos)
        scores.append(-batch.answer_nll(model(batch.tokens, return_type="logits")))
    candidates["logprob"] = torch.cat(scores).cpu().numpy()
    best = candidates.loc[candidates.groupby("question")["logprob"].idxmax()].set_index("question")
    truth = candidates[candidates["is_true"]].set_index("question")
    return questions.assign(ranked_first=best["is_true"].to_numpy(), answer_nll=-truth["logprob"].to_numpy())


def strangers_with_facts(evaluator: Evaluator, n: int = N_STRANGERS) -> list[Entity]:
    """The evaluator's first `n` strangers, each given a target's facts in turn (the reference that has the
    same facts to be asked about but was never taught them)."""
    if not evaluator.unknown_reference:
        raise ValueError("This needs Evaluator.unknown_reference (strangers): give it when building the evaluator.")
    targets = evaluator.targets
    return [Entity(u.name, targets[i % len(targets)].attributes) for i, u in enumerate(evaluator.unknown_reference[:n])]


@register_metric(
    "forced_choice",
    group="depth",
    needs=("unknown_reference",),
    higher_is_better=None,
    columns=("forced_choice", "forced_choice_stranger", "answer_loss_auroc"),
)
def forced_choice_metric(evaluator: Evaluator, model: HookedTransformer) -> MetricResult:
    """Does the model still prefer the true value? Each target's question is answered by ranking the
    attribute's values (those the evaluator's people take; `unknown` is no value) by answer log-probability:
    `forced_choice` is the fraction of the targets' questions where the true value ranks first,
    `forced_choice_stranger` the same for strangers given the targets' facts (the level of a model that
    never learned them). `answer_loss_auroc`: membership inference, AUROC of −(mean true-answer NLL) per
    person, targets vs those strangers (0.5: indistinguishable). Per item: every question's ranking."""
    choices = attribute_values(evaluator.retain_eval + evaluator.targets)
    strangers = strangers_with_facts(evaluator)
    rows = pd.concat(
        [
            forced_choice(model, evaluator.targets, evaluator.train_templates, choices, evaluator.prepend_bos).assign(
                is_target=True
            ),
            forced_choice(model, strangers, evaluator.train_templates, choices, evaluator.prepend_bos).assign(
                is_target=False
            ),
        ],
        ignore_index=True,
    )
    people = rows.groupby("entity", sort=False).agg(nll=("answer_nll", "mean"), is_target=("is_target", "first"))
    values = {
        "forced_choice": float(rows.loc[rows["is_target"], "ranked_first"].mean()),
        "forced_choice_stranger": float(rows.loc[~rows["is_target"], "ranked_first"].mean()),
        "answer_loss_auroc": auroc(
            torch.tensor(-people["nll"].to_numpy(), device=model.cfg.device),
            torch.tensor(people["is_target"].to_numpy(), device=model.cfg.device),
        ),
    }
    return MetricResult(values, rows)


# Relearning attacks -----------------------------------------------------------------------------------


def relearn_curve(
    model: HookedTransformer,
    attack: Attack,
    lrs: Sequence[float] = ATTACK_LRS,
    steps: Sequence[int] = ATTACK_STEPS,
    prepend_bos: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Recall of `attack.held` after k fine-tuning steps on `attack.lessons` (full batch, Adam), for each
    k in `steps` and each learning rate: one run of max(steps) steps per lr, read at the checkpoints.

    One row per (lr, step); step 0 is the model before the attack.
    """
    tokens, mask = encode_lines(model.tokenizer, attack.lessons, model.cfg.n_ctx, prepend_bos, device=model.cfg.device)
    held = AnswerBatch.build(model, attack.held, prepend_bos)
    checkpoints = {0, *steps}
    records = []
    bar = tqdm(total=len(lrs) * max(steps), desc=f"relearn {attack.name}", disable=not progress, leave=False)
    for lr in lrs:
        student = copy.deepcopy(model)
        student.requires_grad_(True)
        optimizer = torch.optim.Adam(student.parameters(), lr=lr)
        torch.manual_seed(seed)
        for step in range(max(steps) + 1):
            if step in checkpoints:
                student.eval()
                with torch.no_grad():
                    recall = float(held.greedy_hits(student(held.tokens, return_type="logits")).float().mean())
                records.append({"attack": attack.name, "lr": lr, "step": step, "recall": recall})
            if step == max(steps):
                break
            optimizer.zero_grad(set_to_none=True)
            lm_loss(student, tokens, mask).backward()
            optimizer.step()
            bar.update()
        del student, optimizer
    bar.close()
    return pd.DataFrame(records)


def best_of_lr(curves: pd.DataFrame) -> pd.DataFrame:
    """The attacker's best recall over learning rates at each (attack, step), with the lr that reached it."""
    keys = [c for c in ("model", "attack", "step") if c in curves]
    best = curves.loc[curves.groupby(keys)["recall"].idxmax()]
    return best[[*keys, "recall", "lr"]].reset_index(drop=True)


def relearn_attacks(
    evaluator: Evaluator,
    model: HookedTransformer,
    attacks: Sequence[str] = ATTACKS,
    strangers: bool = False,
    lrs: Sequence[float] = ATTACK_LRS,
    steps: Sequence[int] = ATTACK_STEPS,
    progress: bool = False,
) -> pd.DataFrame:
    """Every (attack, lr, step) recall of the evaluator's targets on `model` (with `strangers`: of strangers
    given the targets' facts instead, the reference an attacker meets for a name never learned)."""
    people = strangers_with_facts(evaluator, len(evaluator.targets)) if strangers else evaluator.targets
    target_words = {w for t in evaluator.targets for w in t.name.split()}
    others = [e for e in evaluator.retain_eval if not target_words & set(e.name.split())][:N_OTHER_PEOPLE]
    curves = [
        relearn_curve(
            model,
            build_attack(name, people, evaluator.train_templates, others, evaluator.seed),
            lrs,
            steps,
            evaluator.prepend_bos,
            evaluator.seed,
            progress,
        )
        for name in attacks
    ]
    return pd.concat(curves, ignore_index=True)


_REFERENCE_CURVES: dict[tuple, pd.DataFrame] = {}  # (protocol, reference model, targets, seed) -> curves


def register_relearn_metric(
    name: str,
    attacks: Sequence[str] = ATTACKS,
    steps: Sequence[int] = ATTACK_STEPS,
    lrs: Sequence[float] = ATTACK_LRS,
    reported: Sequence[int] = (25, 100),
) -> None:
    """Register a relearning-attack metric `name` with its protocol: `attacks`, fine-tuning `steps` (the
    curve's checkpoints), the attacker's `lrs` and the steps `reported` as columns
    (`relearn_{attack}_{k}`, `_stranger`, `_oracle`).

    Protocols name their columns alike (`relearn_half_25` is attack (a) at 25 steps in any of them), so
    scoring two protocols on one row keeps the later one's values.

    The references — the original model for strangers given the targets' facts, and the evaluator's oracle
    — are the same for every edit of one task, so their curves are computed once per (protocol, reference
    weights, targets, seed) in a process and reused for the next edit.
    """
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not set(reported) <= set(steps):
        raise ValueError(f"attacks must be among {ATTACKS} (got {unknown}); reported steps among steps {steps}.")
    columns = tuple(f"relearn_{a}_{k}{s}" for a in attacks for k in reported for s in ("", "_stranger", "_oracle"))
    protocol = (tuple(attacks), tuple(steps), tuple(lrs))

    def metric(evaluator: Evaluator, model: HookedTransformer) -> MetricResult:
        runs = {"": (model, False), "_stranger": (evaluator.model, True)}
        if evaluator.oracle is not None:
            runs["_oracle"] = (evaluator.oracle, False)
        frames = []
        targets = tuple(t.name for t in evaluator.targets)
        for suffix, (reference, strangers) in runs.items():
            key = (protocol, weights_hash(reference), targets, evaluator.seed, strangers) if suffix else None
            curves = _REFERENCE_CURVES.get(key) if key else None  # the edit's own curves are never reused
            if curves is None:
                curves = relearn_attacks(evaluator, reference, attacks, strangers=strangers, lrs=lrs, steps=steps)
                if key:
                    _REFERENCE_CURVES[key] = curves
            frames.append(curves.assign(model=suffix))
        curves = pd.concat(frames, ignore_index=True)
        best = best_of_lr(curves).set_index(["model", "attack", "step"])["recall"]
        values = {f"relearn_{a}_{k}{s}": float(best[(s, a, k)]) for s in runs for a in attacks for k in reported}
        labels = {"": "edited", "_stranger": "stranger", "_oracle": "oracle"}
        return MetricResult(values, curves.replace({"model": labels}))

    metric.__doc__ = (
        f"Does fine-tuning bring the facts back? Attacks {', '.join(attacks)} (`build_attack`); recall of "
        f"the held-out facts after {' and '.join(map(str, reported))} steps, the attacker's best over lrs "
        f"{', '.join(f'{lr:g}' for lr in lrs)} (`relearn_{{attack}}_{{k}}`); the same on the original model "
        "for strangers given the targets' facts (`_stranger`) and, where `Evaluator.oracle` is set, on the "
        "oracle (`_oracle`). Genuine forgetting relearns at the oracle's level. Per item: every (model, "
        f"attack, lr, step) recall, at steps 0, {', '.join(map(str, steps))}."
    )
    register_metric(name, group="depth", needs=("unknown_reference",), higher_is_better=None, columns=columns)(metric)


# the UNDO protocol, every attack (hours on a CPU for a whole table); and the oracle table's, attacks (a), (b)
register_relearn_metric("relearn_attacks")
register_relearn_metric("relearn_ab", attacks=("half", "one_fact"), steps=(10, 25, 50, 100))


def relearn_figure(
    curves: pd.DataFrame, title: str = "Relearning attacks (attacker's best learning rate)"
) -> go.Figure:
    """Recall of the held-out facts vs fine-tuning steps, best over lr, one line per model, one panel per
    attack. `curves`: rows of `relearn_curve` with a `model` column."""
    if curves.empty:
        raise ValueError("relearn_figure needs relearning curves (rows of relearn_curve); got none.")
    best = best_of_lr(curves)
    attacks = list(dict.fromkeys(best["attack"]))
    fig = make_subplots(rows=1, cols=len(attacks), subplot_titles=attacks, shared_yaxes=True)
    for col, attack in enumerate(attacks, start=1):
        for i, (model_name, part) in enumerate(best[best["attack"] == attack].groupby("model", sort=False)):
            fig.add_trace(
                go.Scatter(
                    x=part["step"],
                    y=part["recall"],
                    mode="lines+markers",
                    name=str(model_name),
                    legendgroup=str(model_name),
                    showlegend=col == 1,
                    line={"color": _SERIES[i % len(_SERIES)]},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="fine-tuning steps", row=1, col=col)
    fig.update_yaxes(title_text="recall of held-out facts", range=[0, 1.05], row=1, col=1)
    fig.update_layout(title=title)
    return fig


_SERIES = ("#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#17BECF", "#BCBD22")


# Neighbours -------------------------------------------------------------------------------------------


@register_metric(
    "sharer_retain",
    group="depth",
    higher_is_better=True,
    columns=("retain_sharers", "retain_sharers_min", "retain_others", "n_sharers"),
)
def sharer_retain_metric(evaluator: Evaluator, model: HookedTransformer) -> MetricResult:
    """Do the neighbours keep their answers? Of each held-out person's answers the original model gives,
    the fraction `model` still gives, reported for people who share a name word with a target
    (`retain_sharers`, their mean, and `retain_sharers_min`, the worst of them) apart from everyone else
    (`retain_others`). NaN sharer columns when no held-out person shares a word. Per item: every person."""
    questions = question_facts(evaluator.retain_eval, evaluator.train_templates)
    before = evaluator.judge.correct(evaluator.model, questions, evaluator.prepend_bos)
    after = evaluator.judge.correct(model, questions, evaluator.prepend_bos)
    kept = pd.DataFrame({"entity": questions["entity"], "before": before.float(), "kept": (before & after).float()})
    people = kept.groupby("entity", sort=False).sum()
    people = people.assign(
        kept_frac=people["kept"] / people["before"].clip(lower=1),
        shares_name_word=[shares_a_name_word(Entity(n), evaluator.targets) for n in people.index],
    )
    sharers, rest = people[people["shares_name_word"]], people[~people["shares_name_word"]]
    values = {
        "retain_sharers": float(sharers["kept_frac"].mean()) if len(sharers) else float("nan"),
        "retain_sharers_min": float(sharers["kept_frac"].min()) if len(sharers) else float("nan"),
        "retain_others": float(rest["kept_frac"].mean()),
        "n_sharers": float(len(sharers)),
    }
    return MetricResult(values, people.reset_index())
