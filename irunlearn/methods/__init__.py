"""Unlearning methods, found by name: `forget(model, sae, task, method="grad_ascent")`.

A method is a `Method` subclass with a `name` and a `config_class` (its `ForgetConfig` dataclass); the
optimisation loop, stop rule and history are shared (`irunlearn.methods.base`). Register your own with
`register_method` and `forget(..., method=name)`, `irunlearn.run` and the CLI find it; no package file
needs editing.

>>> @register_method
... class Louder(GradAscent):
...     name = "louder"
>>> irunlearn.run(bench, model, sae, ["louder"])
"""

from __future__ import annotations

from dataclasses import fields, replace

from sae_lens import SAE
from transformer_lens import HookedTransformer

from irunlearn.activations import check_pairing
from irunlearn.methods.base import ForgetConfig, ForgetTask, Method, UnlearnResult, run
from irunlearn.methods.grad_ascent import GradAscent
from irunlearn.methods.grad_diff import GradDiff
from irunlearn.methods.npo import NPO
from irunlearn.methods.recipes import Recipe, recipe_for
from irunlearn.methods.rmu import RMU
from irunlearn.methods.sae_guided import SAEGuided, SAEGuidedConfig
from irunlearn.methods.sae_guided_deep import SAEGuidedDeep
from irunlearn.methods.sae_guided_tar import SAEGuidedTAR
from irunlearn.methods.sae_steer import SAESteer

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Register a method class under its `name` (a decorator, or a plain call); returns the class.

    Checked here: it subclasses `Method`, names itself, and its `config_class` is a `ForgetConfig`
    dataclass. Re-registering a name replaces the method, so a notebook cell can be rerun.
    """
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{cls!r} is not a Method subclass: subclass irunlearn.methods.base.Method (or a method).")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs its own class attribute `name` (what forget(method=...) is given).")
    if not (isinstance(cls.config_class, type) and issubclass(cls.config_class, ForgetConfig)):
        raise TypeError(f"{cls.__name__}.config_class must be a ForgetConfig subclass, not {cls.config_class!r}.")
    METHODS[name] = cls
    return cls


for _builtin in (SAEGuided, SAEGuidedDeep, SAEGuidedTAR, GradAscent, GradDiff, NPO, RMU, SAESteer):
    register_method(_builtin)
del _builtin


def get_method(name: str) -> type[Method]:
    """The method class registered under `name`."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}. Available: {sorted(METHODS)}")
    return METHODS[name]


def make_config(method: str, config: ForgetConfig | None = None, **overrides) -> ForgetConfig:
    """The method's config: its defaults, or `config`, with `overrides` applied (unknown keys are errors)."""
    cls = get_method(method).config_class
    config = config if config is not None else cls()
    if not isinstance(config, cls):
        raise TypeError(f"{method} needs a {cls.__name__}, got {type(config).__name__}.")
    valid = {f.name for f in fields(cls)}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}; valid: {sorted(valid)}")
    return replace(config, **overrides)


def forget(
    model: HookedTransformer,
    sae: SAE,
    task: ForgetTask,
    method: str = "sae_guided",
    config: ForgetConfig | None = None,
    recipe: Recipe | None = None,
    **overrides,
) -> UnlearnResult:
    """Forget `task.targets` with the named method; the original `model` is untouched unless `in_place`.

    Without a `config`, the method's defaults are adjusted by the model's `recipe` (by default
    `recipe_for(model)`: the layer window, learning rate, retain batch sizes and step budget registered for
    this model; none for the embedded world), then by `overrides`. A given `config` is used as it is
    (with `overrides`), no recipe applied.

    Checked before any work: the config, the model/SAE pairing (the SAE's hook exists in the model with its
    input width), that the recognizer was fit at the SAE's hook, and that the model recognises every target
    (SAE probe p_known ≥ 0.5; otherwise there is nothing to forget).

    >>> result = forget(model, sae, task, method="sae_guided", max_steps=300)
    >>> result.model, result.history, result.stop_reason
    """
    hook_name = check_pairing(model, sae)
    if config is None:
        recipe = recipe if recipe is not None else recipe_for(model)
        overrides = recipe.overrides(method, hook_name, model.cfg.n_layers) | overrides
    config = make_config(method, config, **overrides)
    if task.recognizer.hook_name != hook_name:
        raise ValueError(
            f"The task's recognizer was fit at {task.recognizer.hook_name!r} but the SAE reads {hook_name!r}. "
            "Fit the recognizer with this SAE (e.g. `recognize_world(ew)` or `fit_recognizer(model, sae, ...)`)."
        )
    readings = task.recognizer.p_known(model, sae, [e.name for e in task.targets], task.templates)
    unknown = readings[readings["p_known_sae"] < 0.5]
    if len(unknown):
        listed = ", ".join(f"{r.entity!r} (p_known={r.p_known_sae:.2f})" for r in unknown.itertuples())
        raise ValueError(f"The model does not recognise {listed}: nothing to forget. Choose known entities.")
    return run(get_method(method)(task, sae, config), model)


__all__ = [
    "METHODS",
    "ForgetConfig",
    "ForgetTask",
    "SAEGuidedConfig",
    "UnlearnResult",
    "forget",
    "get_method",
    "make_config",
    "register_method",
]
