"""The `irunlearn` command line. Every command defaults to the embedded world; `--json` prints one object."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from irunlearn import __version__
from irunlearn.io import CorruptArtifactError, check_output_dir, check_output_file
from irunlearn.methods import METHODS

EPILOG = """errors: a bad input (argument, name, path, corrupt file) exits with code 2, an internal error with
code 1, each with a message naming the problem on stderr; with --json the message is printed on stdout as
{"error": MESSAGE, "type": EXCEPTION_NAME} instead. Output paths (--out, --csv) are checked before any model
is loaded."""
USER_ERRORS = (ValueError, KeyError, OSError, CorruptArtifactError)  # OSError: paths (exists, not a folder, ...)


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
    names = [part.strip() for part in text.split(",")]
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


def cmd_recognize(args: argparse.Namespace) -> dict:
    from irunlearn.world.artifacts import load_world
    from irunlearn.world.recognition import recognize_world

    ew = load_world(args.path)
    recognizer, throughput = recognize_world(
        ew, top_k=args.top_k, seed=args.seed, progress=not args.quiet, measure_throughput=True
    )
    if args.out:
        recognizer.save(args.out, overwrite=args.force)

    def top(which: str) -> list[dict]:
        frame = recognizer.top_latents(which)
        return [{"latent": int(r["latent"]), "score": float(r[f"s_{which}"])} for r in frame.to_dict("records")]

    return {
        "hook_name": recognizer.hook_name,
        "top_known_latents": top("known"),
        "top_unknown_latents": top("unknown"),
        **recognizer.metrics,
        "extract_tokens_per_s": throughput,
    }


def cmd_forget(args: argparse.Namespace) -> dict:
    from irunlearn.methods import forget
    from irunlearn.world.artifacts import load_world
    from irunlearn.world.recognition import recognize_world
    from irunlearn.world.tasks import resolve_targets, world_evaluator, world_task

    ew = load_world(args.path)
    targets = resolve_targets(ew, args.target or (), args.random_targets, args.seed)
    recognizer, _ = recognize_world(ew, seed=args.seed, progress=not args.quiet)
    task = world_task(ew, targets, recognizer)
    evaluator = world_evaluator(ew, task, seed=args.seed)
    overrides = {"seed": args.seed, "progress": not args.quiet}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    result = forget(ew.model, ew.sae, task, method=args.method, **overrides)
    summary, per_target = evaluator.evaluate(result.model)
    if args.out:
        from irunlearn.edits import save_edit

        save_edit(result, ew.model, args.out, force=args.force)
    return {
        "method": result.method,
        "targets": result.targets,
        "stop_reason": result.stop_reason,
        "steps": result.steps,
        "seconds": result.seconds,
        **summary,
        "per_target": per_target.to_dict(orient="records"),
    }


def cmd_compare(args: argparse.Namespace) -> dict:
    from irunlearn.world.comparison import compare_world

    runs, table = compare_world(args.path, args.random_targets, args.seeds, args.methods, progress=not args.quiet)
    if args.csv:
        table.to_csv(args.csv, index=False)
    return {"rows": table.to_dict(orient="records"), "runs": runs.to_dict(orient="records")}


def cmd_report(args: argparse.Namespace) -> dict:
    from irunlearn.methods import forget
    from irunlearn.report import evaluate_runs, forgetting_report
    from irunlearn.world.artifacts import load_world
    from irunlearn.world.recognition import recognize_world
    from irunlearn.world.tasks import resolve_targets, world_evaluator, world_task

    ew = load_world(args.path)
    targets = resolve_targets(ew, args.target or (), 0 if args.target else args.random_targets, args.seed)
    recognizer, _ = recognize_world(ew, seed=args.seed, progress=not args.quiet)
    task = world_task(ew, targets, recognizer)
    evaluator = world_evaluator(ew, task, seed=args.seed)
    results = [
        forget(ew.model, ew.sae, task, method=method, seed=args.seed, progress=not args.quiet)
        for method in args.methods
    ]
    metrics = evaluate_runs(evaluator, results, genuineness=True, progress=not args.quiet)
    path = forgetting_report(
        args.out,
        ew.model,
        ew.sae,
        recognizer,
        results,
        ew.world.entities,
        metrics,
        force=args.force,
        seed=args.seed,
        progress=not args.quiet,
        provenance={
            "command": "irunlearn " + " ".join(sys.argv[1:]),
            "world": str(ew.path),
            "evaluator seed": args.seed,
        },
    )
    if not args.json:
        columns = [
            "method",
            "stop_reason",
            "steps",
            "seconds",
            "forget_acc",
            "paraphrase_forget_acc",
            "idk_rate",
            "retain_acc",
            "probe_p_known_sae",
            "probe_p_known_resid",
            "ppl_ratio",
            "relearn_acc",
        ]
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

    p = command(sub, "recognize", cmd_recognize, "known/unknown latents and probes on the embedded world")
    p.add_argument("--path", type=Path, default=None, help="a built world (default: the shipped one)")
    p.add_argument("--top-k", type=_positive, default=20, help="latents kept per direction (known, unknown)")
    p.add_argument("--seed", type=_count, default=0, help="seed of the fit / calibration / test split")
    p.add_argument(
        "--out", type=Path, default=None, help="save the fitted Recognizer in this folder (default: not saved)"
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = command(sub, "forget", cmd_forget, "forget embedded-world people and print the metrics")
    p.add_argument("--path", type=Path, default=None, help="a built world (default: the shipped one)")
    p.add_argument("--target", type=_name, action="append", help="a known person's name (repeatable)")
    p.add_argument("--random-targets", type=_count, default=0, help="forget N known people drawn with --seed")
    p.add_argument("--seed", type=_count, default=0, help="seed of the target draw, recognizer and method")
    p.add_argument("--method", default="sae_guided", choices=sorted(METHODS), help="unlearning method")
    p.add_argument("--max-steps", type=_positive, default=None, help="optimiser steps at most (default: the method's)")
    p.add_argument("--out", type=Path, default=None, help="save the edited model in this folder (default: not saved)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = command(sub, "compare", cmd_compare, "every method on the same random targets, mean ± std over seeds")
    p.add_argument("--path", type=Path, default=None, help="a built world (default: the shipped one)")
    p.add_argument("--random-targets", type=_positive, default=1, help="known people forgotten together per seed")
    p.add_argument("--seeds", type=_seeds, default="0", help="comma-separated seeds, one run per seed")
    p.add_argument(
        "--methods", type=_methods, default=None, help=f"comma-separated subset of {method_names} (default: all)"
    )
    p.add_argument(
        "--csv", type=Path, default=None, help="also write the table as CSV to this file (default: not written)"
    )

    p = command(sub, "report", cmd_report, "forget, evaluate and write a self-contained HTML report")
    p.add_argument("--path", type=Path, default=None, help="a built world (default: the shipped one)")
    p.add_argument("--target", type=_name, action="append", help="a known person's name (repeatable)")
    p.add_argument(
        "--random-targets", type=_positive, default=1, help="without --target: N known people drawn with --seed"
    )
    p.add_argument("--seed", type=_count, default=0, help="seed of the target draw, recognizer and methods")
    p.add_argument(
        "--methods", type=_methods, default="sae_guided,grad_ascent", help=f"comma-separated, of {method_names}"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for index.html (required)")
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
