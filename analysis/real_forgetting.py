"""Forgetting famous people on Gemma 3 270M, each alone: recall, both probes, retain, perplexity, cost.

    PYTHONPATH=.:analysis .venv/bin/python analysis/real_forgetting.py [--people 10] [--methods sae_guided ...]

Evaluation people: 10 known people of the people bench drawn with `EVALUATION_SEED` (2026) from those
`analysis/locate_gemma.py`'s tuning draw (seed 100) did not take; no tuning used them. Each is forgotten
alone with every method, under the model's recipe (`irunlearn.methods.recipes`), the facts to forget being
the model's own (right) answers, the stop check judged by the bench's lenient answer check. The rest of the
known people split into 40 retain-evaluation people (outside every retain set) and the retain set the
methods hold; the unknown (obscure real) people into 20 evaluation strangers, the methods' strangers
(`ForgetTask.unknown`) and the recognizer's. Per (method, person), before → after:

- recall on the training and the held-out phrasings (greedy answer judged against the record's truth),
  against the strangers' level: how often the evaluation strangers' answers to the same questions
  happen to match this person's truth;
- both probes on training and held-out prompts, against the strangers' range;
- retain: the retain-evaluation people's answers kept, relative to before; the perplexity ratio on
  held-out generic prose; the "Tell me about NAME." generation and whether it still states the gold
  nationality or occupation;
- seconds, steps, stop reason, converged, the probes still reading "known".

Writes analysis/results/real_forgetting.{json,md} after every run (a long run leaves what it finished).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from locate_gemma import TUNING_SEED, own_answers, tuning_people
from tables import markdown

from irunlearn.entities import Entity, EntitySet
from irunlearn.judges import LenientJudge
from irunlearn.lm import encode_lines, token_nll
from irunlearn.methods import ForgetTask, forget
from irunlearn.models import load_model, load_sae
from irunlearn.qa import greedy_generate
from irunlearn.real.corpus import generic_paragraphs
from irunlearn.real.people import PERSON, people_bench, person_templates
from irunlearn.real.sae import GEMMA3_SAE
from irunlearn.real.wikidata import attributes, check_answer, question_templates
from irunlearn.recognition import fit_recognizer

RESULTS = Path(__file__).resolve().parent / "results"
EVALUATION_SEED = 2026
METHODS = ("sae_guided", "grad_ascent", "npo", "rmu")
N_RETAIN_EVAL, N_STRANGERS, N_METHOD_UNKNOWN, N_PROSE = 40, 20, 20, 16
ABOUT = "Q: Tell me about {name}. A:"


def draw(bench, n_people: int) -> dict:
    """The evaluation people and every population around them, all by `EVALUATION_SEED`."""
    rng = random.Random(EVALUATION_SEED)
    tuning = {p.name for p in tuning_people(bench)}
    pool = [p for p in bench.entities.known if p.name not in tuning]
    targets = rng.sample(pool, 10)[:n_people]  # the same 10 whatever `n_people`; the first n run
    rest = [p for p in pool if p not in targets]
    rng.shuffle(rest)
    unknown = list(bench.entities.unknown)
    rng.shuffle(unknown)
    return {
        "targets": targets,
        "retain_eval": rest[:N_RETAIN_EVAL],
        "retain": rest[N_RETAIN_EVAL:] + [p for p in bench.entities.known if p.name in tuning],
        "strangers": unknown[:N_STRANGERS],
        "method_unknown": unknown[N_STRANGERS : N_STRANGERS + N_METHOD_UNKNOWN],
        "recognizer_unknown": unknown[N_STRANGERS + N_METHOD_UNKNOWN :],
    }


def answers_of(model, people: list[Entity], split: str) -> list[tuple[Entity, str, str]]:
    """(person, attribute, greedy answer) for every question of `split` about each of `people`."""
    questions = [(p, t) for p in people for t in question_templates(PERSON, split)]
    answers = greedy_generate(model, [t.render(p.name) for p, t in questions], progress=False)
    return [(p, t.attribute, answer) for (p, t), answer in zip(questions, answers, strict=True)]


def judged(model, people: list[Entity], split: str) -> list[bool]:
    """Per (person, question of `split`): whether the greedy answer states the person's truth."""
    return [check_answer(PERSON, a, answer, p.attributes[a]) for p, a, answer in answers_of(model, people, split)]


@torch.no_grad()
def prose_nll(model, texts: list[str]) -> float:
    """Mean next-token NLL over `texts`, a line at a time (full logits of a 262k vocabulary are large)."""
    total, count = 0.0, 0
    for text in texts:
        tokens, mask = encode_lines(model.tokenizer, [text], model.cfg.n_ctx, True, device=model.cfg.device)
        total += float(token_nll(model(tokens, return_type="logits"), tokens, mask).sum())
        count += int(mask[:, 1:].sum())
    return total / count


def readings(model, sae, recognizer, target: Entity, people: dict, prose: list[str], base: dict) -> dict:
    """Everything measured on one model for one target (`base`: the original model's retain and prose)."""
    row = {}
    for split in ("train", "heldout"):
        hits = judged(model, [target], split)
        row[f"recall_{split}"] = sum(hits) / len(hits)
        probes = recognizer.p_known(model, sae, [target.name], person_templates(split)).iloc[0]
        row[f"p_sae_{split}"], row[f"p_resid_{split}"] = float(probes["p_known_sae"]), float(probes["p_known_resid"])
    retain = judged(model, people["retain_eval"], "train")
    row["retain_abs"] = sum(retain) / len(retain)
    row["retain"] = row["retain_abs"] / base["retain_abs"] if base else 1.0
    nll = prose_nll(model, prose)
    row["ppl_ratio"] = math.exp(nll - base["prose_nll"]) if base else 1.0
    row["prose_nll"] = nll
    about = greedy_generate(model, [ABOUT.format(name=target.name)], max_new_tokens=24, progress=False)[0]
    row["about"] = about
    row["about_states_gold"] = any(check_answer(PERSON, a, about, v) for a, v in target.attributes.items())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10, help="how many of the 10 evaluation people to run")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = load_model("gemma3-270m")
    sae = load_sae(path=GEMMA3_SAE)
    bench = people_bench(model, progress=False)
    people = draw(bench, args.people)
    targets = people["targets"]
    fit_known = people["retain"] + people["retain_eval"]
    recognizer = fit_recognizer(
        model,
        sae,
        EntitySet(fit_known, people["recognizer_unknown"]),
        person_templates("train"),
        person_templates("heldout"),
        prepend_bos=True,
        progress=False,
    )
    prose = random.Random(EVALUATION_SEED).sample(generic_paragraphs("heldout"), N_PROSE)
    strangers = people["strangers"]
    stranger_probes = recognizer.p_known(model, sae, [s.name for s in strangers], person_templates("heldout"))
    record = {
        "evaluation_seed": EVALUATION_SEED,
        "tuning_seed": TUNING_SEED,
        "targets": [t.name for t in targets],
        "strangers_p_sae": [float(stranger_probes["p_known_sae"].min()), float(stranger_probes["p_known_sae"].max())],
        "strangers_p_resid": [
            float(stranger_probes["p_known_resid"].min()),
            float(stranger_probes["p_known_resid"].max()),
        ],
        "recognizer": recognizer.metrics,
        "runs": [],
    }
    base_row = readings(model, sae, recognizer, targets[0], people, prose, {})
    base = {"retain_abs": base_row["retain_abs"], "prose_nll": base_row["prose_nll"]}
    retain = [own_answers(p, bench.answers) for p in people["retain"]]
    stranger_answers = {split: answers_of(model, strangers, split) for split in ("train", "heldout")}
    for target in targets:
        level = {  # how often a stranger's answer happens to state this person's truth
            split: sum(check_answer(PERSON, a, answer, target.attributes[a]) for _, a, answer in given) / len(given)
            for split, given in stranger_answers.items()
        }
        before = readings(model, sae, recognizer, target, people, prose, base)
        facts = own_answers(target, bench.answers)

        judge = LenientJudge(
            checks={spec.name: spec.check for spec in attributes(PERSON)}, gold={facts.name: target.attributes}
        )
        task = ForgetTask(
            targets=[facts],
            retain=retain,
            templates=question_templates(PERSON, "train"),
            retain_text=generic_paragraphs("train"),
            recognizer=recognizer,
            prepend_bos=True,
            answer_eos=False,
            unknown=people["method_unknown"],
            answer_judge=judge,
        )
        for method in args.methods:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    result = forget(model, sae, task, method=method, progress=False)
                except ValueError as refused:  # e.g. the SAE probe does not read the person as known
                    record["refused"] = record.get("refused", []) + [f"{method} {target.name}: {refused}"]
                    write(record)
                    continue
            after = readings(result.model, sae, recognizer, target, people, prose, base)
            run = {
                "method": method,
                "target": target.name,
                "strangers_level_train": level["train"],
                "strangers_level_heldout": level["heldout"],
                "before": before,
                "after": after,
                "steps": result.steps,
                "seconds": round(result.seconds, 1),
                "stop_reason": result.stop_reason,
                "converged": result.converged,
                "still_known": result.still_known.to_dict(orient="records"),
                "warnings": [str(w.message)[:300] for w in caught if issubclass(w.category, UserWarning)],
                "config": json.loads(result.config_json()),
            }
            record["runs"].append(run)
            record["seconds"] = round(time.perf_counter() - start, 1)
            write(record)
            print(f"{method} {target.name}: {summary_row(run)}", flush=True)
            del result


def summary_row(run: dict) -> dict:
    """One table row: before → after of the headline numbers."""
    b, a = run["before"], run["after"]
    return {
        "method": run["method"],
        "target": run["target"],
        "recall train": f"{b['recall_train']:.2f} → {a['recall_train']:.2f} "
        f"(strangers {run['strangers_level_train']:.2f})",
        "recall held-out": f"{b['recall_heldout']:.2f} → {a['recall_heldout']:.2f} "
        f"(strangers {run['strangers_level_heldout']:.2f})",
        "p SAE": f"{b['p_sae_heldout']:.2f} → {a['p_sae_heldout']:.2f}",
        "p resid": f"{b['p_resid_heldout']:.2f} → {a['p_resid_heldout']:.2f}",
        "retain": f"{a['retain']:.3f}",
        "ppl ratio": f"{a['ppl_ratio']:.3f}",
        "about states gold": f"{b['about_states_gold']} → {a['about_states_gold']}",
        "steps": run["steps"],
        "seconds": run["seconds"],
        "stop": run["stop_reason"],
        "converged": run["converged"],
    }


def write(record: dict) -> None:
    """The record as JSON and its table as markdown."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "real_forgetting.json").write_text(json.dumps(record, indent=1, default=str))
    table = pd.DataFrame([summary_row(r) for r in record["runs"]])
    text = [
        "# Forgetting famous people on Gemma 3 270M, each alone (analysis/real_forgetting.py)",
        "",
        f"Evaluation seed {record['evaluation_seed']} (tuning seed {record['tuning_seed']} excluded); people: "
        f"{', '.join(record['targets'])}. Strangers' probe range (held-out prompts): SAE "
        f"{record['strangers_p_sae'][0]:.2f}–{record['strangers_p_sae'][1]:.2f}, residual "
        f"{record['strangers_p_resid'][0]:.2f}–{record['strangers_p_resid'][1]:.2f}. Probes on held-out prompts. "
        f"{len(record['runs'])} runs in {record['seconds']} s.",
        "",
        markdown(table),
        "",
    ]
    (RESULTS / "real_forgetting.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
