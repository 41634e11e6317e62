"""The `irunlearn` command line. Every command defaults to the embedded world; `--json` prints one object."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from irunlearn import __version__
from irunlearn.comparison import BATTERY_COLUMNS, COST_COLUMNS
from irunlearn.io import CorruptArtifactError, check_output_dir, check_output_file
from irunlearn.methods import METHODS
from irunlearn.sources import RECORD_KINDS

EPILOG = """errors: a bad input (argument, name, path, corrupt file) exits with code 2, an internal error with
code 1, each with a message naming the problem on stderr; with --json the message is printed on stdout as
{"error": MESSAGE, "type": EXCEPTION_NAME} instead. Output paths (--out, --csv) are checked before any model
is loaded."""
USER_ERRORS = (ValueError, KeyError, OSError, CorruptArtifactError)  # OSError: paths (exists, not a folder, ...)
MODEL_HELP = (
    "'world' (the shipped embedded world), a built world folder, 'smollm2' or 'gemma3-270m' (offline "
    "fixtures), a local HF folder, a GGUF file, or a TransformerLens registry name (default: world)"
)
SAE_HELP = (
    "a shipped SAE ('smollm2', 'gemma3-270m'), a folder written by sae.save_model, or RELEASE/SAE_ID of "
    "SAELens's registry (default: the world's own SAE, or the shipped SAE of a fixture model)"
)
REPORT_COLUMNS = ("method", "stop_reason", *COST_COLUMNS, *BATTERY_COLUMNS)  # what `report` prints


class UsageError(ValueError):
    """A command line argparse rejects (unknown option, bad value)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises `UsageError` instead of exiting, so `main` can report it as JSON."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, unless its help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text}")
    return value


def _count(text: str) -> int:
    return _whole(text, 0)


def _positive(text: str) -> int:
    return _whole(text, 1)


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"empty name {text!r}: give a known person's name")
    return text


def _seeds(text: str) -> list[int]:
    try:
        return [_count(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers >= 0, got {text!r}") from None


def _methods(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",")] if text != "all" else list(METHODS)
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    return names


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=float))
    else:
        for key, value in result.items():
            print(f"{key:>36}: {value}")


def cmd_world_build(args: argparse.Namespace) -> dict:
    from irunlearn.world.build import BuildConfig, build_world, rebuild_sae

    if args.forget_set:
        from irunlearn.world.oracle import build_oracle

        if args.small or args.sae_only or args.seed != 0:
            raise ValueError(
                "--forget-set builds the oracle of an existing world (--path, default: the shipped one) with that "
                "world's own configuration; drop --small / --sae-only / --seed (build a --small world first, then "
                "its oracle with --path)."
            )
        return build_oracle(args.forget_set, args.path, args.out, force=args.force, progress=not args.quiet)
    cfg = BuildConfig.small(args.seed) if args.small else BuildConfig(seed=args.seed)
    if args.sae_only:
        return rebuild_sae(args.out, cfg.sae, progress=not args.quiet)
    return build_world(args.out, cfg, force=args.force, progress=not args.quiet)


def cmd_world_stats(args: argparse.Namespace) -> dict:
    from irunlearn.world.artifacts import load_world
    from irunlearn.world.stats import world_stats

    return world_stats(load_world(args.path), progress=not args.quiet)


def _source(args: argparse.Namespace):
    """The checked `--model` / `--sae` / `--questions` / `--kind` of a command, its targets checked too
    where that needs no model (`irunlearn.sources.Source`)."""
    from irunlearn.sources import Source

    source = Source.parse(args.model, args.sae, args.questions, args.kind)
    source.check_targets(getattr(args, "target", None) or [])
    return source


def _n_random(args: argparse.Namespace, default: int) -> int:
    """How many random targets to draw: 0 with --target names, else --random-targets (or `default`)."""
    if args.target and args.random_targets:
        raise ValueError("Give --target names or --random-targets N, not both.")
    if args.target:
        return 0
    n = default if args.random_targets is None else args.random_targets
    if n == 0:
        raise ValueError("No targets: give --target NAME (repeatable) or --random-targets N.")
    return n


def _run(args: argparse.Namespace, bench, model, sae, n_random: int, seeds: list[int], genuineness: bool):
    """`irunlearn.run` of the command's methods on its targets and seeds, with its step budget."""
    import irunlearn

    results = irunlearn.run(
        bench,
        model,
        sae,
        args.method,
        args.target or (),
        n_random,
        seeds,
        genuineness=genuineness,
        progress=not args.quiet,
        **_method_settings(args),
    )
    results.provenance["command"] = args.command_line
    return results


def _method_settings(args: argparse.Namespace) -> dict:
    """The method settings the command line overrides (today `--max-steps`), for `run` and the report."""
    return {} if args.max_steps is None else {"max_steps": args.max_steps}


def cmd_recognize(args: argparse.Namespace) -> dict:
    from irunlearn.activations import extraction_throughput
    from irunlearn.recognition import fit_recognizer

    bench, model, sae = _source(args).load(progress=not args.quiet)
    recognizer = fit_recognizer(
        model,
        sae,
        bench.entities,
        bench.train_templates,
        bench.heldout_templates,
        top_k=args.top_k,
        seed=args.seed,
        prepend_bos=model.cfg.default_prepend_bos,
        generic_texts=bench.retain_text,
        progress=not args.quiet,
    )
    throughput = extraction_throughput(
        model, recognizer.hook_name, list(bench.entities), bench.train_templates, recognizer.prepend_bos
    )
    if args.out:
        recognizer.save(args.out, overwrite=args.force)

    def top(which: str) -> list[dict]:
        frame = recognizer.top_latents(which)
        return [{"latent": int(r["latent"]), "score": float(r[f"s_{which}"])} for r in frame.to_dict("records")]

    return {
        "bench": bench.name,
        "hook_name": recognizer.hook_name,
        "top_known_latents": top("known"),
        "top_unknown_latents": top("unknown"),
        **recognizer.metrics,
        "extract_tokens_per_s": throughput,
    }


def cmd_forget(args: argparse.Namespace) -> dict:
    n_random = _n_random(args, 0)
    if args.out and len(args.method) > 1:
        raise ValueError(f"--out saves one edited model: give one --method, not {len(args.method)}.")
    bench, model, sae = _source(args).load(progress=not args.quiet)
    results = _run(args, bench, model, sae, n_random, [args.seed], genuineness=args.genuineness)
    if args.out:
        from irunlearn.edits import save_edit

        save_edit(next(iter(results.edits.values())), model, args.out, force=args.force)
    runs = []
    for row in results.summary.to_dict("records"):
        per_target = results.per_target[results.per_target["run"] == row["run"]].drop(columns=["run", "seed", "method"])
        runs.append(row | {"per_target": per_target.to_dict(orient="records")})
    return {"bench": bench.name, "targets": runs[0]["targets"].split(", "), "runs": runs}


def cmd_compare(args: argparse.Namespace) -> dict:
    from irunlearn.comparison import summarise

    n_random = _n_random(args, 1)
    bench, model, sae = _source(args).load(progress=not args.quiet)
    results = _run(args, bench, model, sae, n_random, args.seeds, genuineness=True)
    table = summarise(results.summary)
    if args.out:
        results.save(args.out, force=args.force)
    if args.csv:
        table.to_csv(args.csv, index=False)
    return {"rows": table.to_dict(orient="records"), "runs": results.summary.to_dict(orient="records")}


def cmd_report(args: argparse.Namespace) -> dict:
    from irunlearn.experiment import RunResults
    from irunlearn.report import forgetting_report, render_report

    if args.from_dir is not None:
        path = render_report(args.from_dir, args.out, force=args.force)
        metrics = RunResults.load(args.from_dir).summary
    else:
        if args.out is None:
            raise ValueError("Give --out DIR (where the run folder and index.html go), or --from DIR.")
        n_random = _n_random(args, 1)
        source = _source(args)
        bench, model, sae = source.load(progress=not args.quiet)
        path = forgetting_report(
            args.out,
            bench,
            model,
            sae,
            args.method,
            args.target or (),
            n_random,
            args.seed,
            force=args.force,
            provenance={"command": args.command_line},
            progress=not args.quiet,
            oracle=source.oracle(args.target or ()),
            **_method_settings(args),
        )
        metrics = RunResults.load(args.out).summary
    if not args.json:
        columns = [c for c in REPORT_COLUMNS if c in metrics]
        print(metrics[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return {"report": str(path), "rows": metrics.to_dict(orient="records")}


def cmd_sae_train(args: argparse.Namespace) -> dict:
    from irunlearn.real.sae import train_real_sae

    if args.model == "smollm2":
        from irunlearn.real.fixture import load_smollm2

        model = load_smollm2(fetch=True)
    else:
        from irunlearn.models import load_model

        model = load_model(args.model)
    _, figures = train_real_sae(
        model,
        args.hook,
        args.out,
        training_tokens=args.tokens,
        d_sae=args.d_sae,
        k=args.k,
        overwrite=args.force,
        progress=not args.quiet,
    )
    return figures


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="irunlearn", description=__doc__, epilog=EPILOG, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    method_names = ", ".join(sorted(METHODS))

    def group(subparsers, name: str, help: str, dest: str):
        return subparsers.add_parser(name, help=help, formatter_class=_Formatter, epilog=EPILOG).add_subparsers(
            dest=dest, required=True
        )

    def command(subparsers, name: str, func, help: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help, description=help, formatter_class=_Formatter, epilog=EPILOG)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="print one JSON object (errors too)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        return p

    world = group(sub, "world", "build or inspect the embedded world", "world_command")
    p = command(world, "build", cmd_world_build, "train tokenizer, model and SAE from a seed")
    p.add_argument("--out", type=Path, default=None, help="folder (default: the package's shipped artifacts)")
    p.add_argument("--seed", type=_count, default=0, help="seed of the world and of every training run")
    p.add_argument("--small", action="store_true", help="a minutes-scale world (for tests)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument(
        "--sae-only", action="store_true", help="retrain only the SAE of the world at --out, in place (keeps the model)"
    )
    p.add_argument(
        "--forget-set",
        default=None,
        help="build the oracle of this forget set (forget01/forget05/forget10): the world at --path retrained "
        "without those people, saved to --out (default: <world>/oracles/NAME)",
    )
    p.add_argument("--path", type=Path, default=None, help="with --forget-set: the world (default: the shipped one)")
    p = command(world, "stats", cmd_world_stats, "accuracy, idk rate, perplexity and SAE quality")
    p.add_argument("--path", type=Path, default=None, help="a built world (default: the shipped one)")

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="world", help=MODEL_HELP)
        p.add_argument("--sae", default=None, help=SAE_HELP)
        p.add_argument(
            "--questions",
            type=Path,
            default=None,
            help="a CSV or JSONL file of rows entity,question,answer[,split]: your own known entities and their "
            "questions (world: they make the bench, against the world's strangers; a real model: added to its "
            "records) (default: none)",
        )
        p.add_argument(
            "--kind",
            choices=RECORD_KINDS,
            default=None,
            help="a real model's records: known / unknown entities labelled by its own answers (default: person)",
        )

    def target_options(p: argparse.ArgumentParser, random_help: str, random_default: int | None) -> None:
        p.add_argument("--target", type=_name, action="append", help="a known entity's name (repeatable)")
        p.add_argument("--random-targets", type=_count, default=random_default, help=random_help)

    def method_option(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument(
            "--method",
            type=_methods,
            default=default,
            help=f"comma-separated methods, or 'all'; choices: {method_names} (default: {default})",
        )

    def steps_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--max-steps", type=_positive, default=None, help="optimiser steps at most (default: the method's)"
        )

    p = command(sub, "recognize", cmd_recognize, "known/unknown latents and probes on a model's bench")
    model_options(p)
    p.add_argument("--top-k", type=_positive, default=20, help="latents kept per direction (known, unknown)")
    p.add_argument("--seed", type=_count, default=0, help="seed of the fit / calibration / test split")
    p.add_argument(
        "--out", type=Path, default=None, help="save the fitted Recognizer in this folder (default: not saved)"
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = command(sub, "forget", cmd_forget, "forget entities and print the metrics")
    model_options(p)
    target_options(p, "forget N known entities drawn with --seed", 0)
    p.add_argument("--seed", type=_count, default=0, help="seed of the target draw, recognizer and method")
    method_option(p, "sae_guided")
    steps_option(p)
    p.add_argument(
        "--no-genuineness",
        dest="genuineness",
        action="store_false",
        help="skip indistinguishability, generation health and relearning (faster; compare and report always run them)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="save the edited model in this folder (one method) (default: not saved)"
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = command(sub, "compare", cmd_compare, "methods on the same targets, mean ± std over seeds")
    model_options(p)
    target_options(p, "without --target: N known entities drawn per seed, forgotten together (default: 1)", None)
    p.add_argument("--seeds", type=_seeds, default="0", help="comma-separated seeds, one run per seed")
    method_option(p, "all")
    steps_option(p)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="save the run folder here (render it: report --from) (default: not saved)",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument(
        "--csv", type=Path, default=None, help="also write the table as CSV to this file (default: not written)"
    )

    p = command(sub, "report", cmd_report, "forget, evaluate and write a self-contained HTML report")
    model_options(p)
    target_options(p, "without --target: N known entities drawn with --seed (default: 1)", None)
    p.add_argument("--seed", type=_count, default=0, help="seed of the target draw, recognizer and methods")
    method_option(p, "sae_guided,grad_ascent")
    steps_option(p)
    p.add_argument(
        "--from",
        dest="from_dir",
        type=Path,
        default=None,
        help="render a saved run folder (report or compare --out) without loading a model (default: run anew)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the run and its index.html; with --from, where the page goes (default: the --from folder)",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    sae = group(sub, "sae", "SAEs for real models", "sae_command")
    p = command(sae, "train", cmd_sae_train, "train a TopK SAE with SAELens's runner on local Wikidata text")
    p.add_argument("--model", default="smollm2", help="'smollm2' (offline fixture), a local HF folder or GGUF file")
    p.add_argument("--hook", required=True, help="hook to train on, e.g. blocks.12.hook_resid_post (required)")
    p.add_argument("--out", type=Path, required=True, help="folder for the SAE (required)")
    p.add_argument("--tokens", type=_positive, default=1_000_000, help="training tokens")
    p.add_argument("--d-sae", type=_positive, default=4096, help="SAE width")
    p.add_argument("--k", type=_positive, default=32, help="active latents per token (TopK)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    return parser


def _check_outputs(args: argparse.Namespace) -> None:
    """Every path the command will write, checked before any model is loaded (`--out` folders, `--csv`)."""
    if getattr(args, "out", None) is not None and not getattr(args, "sae_only", False):  # --sae-only: --out is read
        check_output_dir(args.out, overwrite=args.force)
    if getattr(args, "csv", None) is not None:
        check_output_file(args.csv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
        args.command_line = "irunlearn " + " ".join(argv)
        _check_outputs(args)
        result = args.func(args)
    except Exception as err:
        user_error = isinstance(err, USER_ERRORS)
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)  # KeyError's str quotes it
        message = text if user_error else f"internal error ({type(err).__name__}: {text}); please report it"
        if not user_error:
            traceback.print_exc(file=sys.stderr)
        if as_json:
            print(json.dumps({"error": message, "type": type(err).__name__}))
        else:
            print(f"irunlearn: error: {message}", file=sys.stderr)
        return 2 if user_error else 1
    if args.json or args.command != "report":
        _print(result, args.json)
    else:
        print(f"report: {result['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
