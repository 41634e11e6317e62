"""The embedded world end to end on a GPU: recognise, forget with every method, evaluate with genuineness.

Run where CUDA is available (`python analysis/gpu_smoke.py [--device cuda]`); it is never needed by the
tests, which check device placement on the CPU (`tests/test_device.py`). Prints one table row per method
with the metrics and the seconds, and fails loudly on any tensor left on the wrong device.
"""

from __future__ import annotations

import argparse
import time

import torch

import irunlearn
from irunlearn import EntityBench
from irunlearn.methods import METHODS
from irunlearn.world.recognition import recognize_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda", help="torch device to run on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random target")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: run this on a GPU machine, or pass --device cpu.")
    ew = irunlearn.load_world()
    ew.model.to(args.device)
    ew.sae.to(args.device)
    start = time.perf_counter()
    recognizer, _ = recognize_world(ew, progress=False)
    print(f"recognize_world: {time.perf_counter() - start:.1f} s, metrics {recognizer.metrics}")
    results = irunlearn.run(
        EntityBench.from_world(ew), ew.model, ew.sae, list(METHODS), seeds=[args.seed], recognizer=recognizer,
        progress=False,
    )  # fmt: skip
    devices = {
        run_id: ",".join(sorted({p.device.type for p in edit.model.parameters()}))
        for run_id, edit in results.edits.items()
    }
    rows = results.summary.assign(param_devices=results.summary["run"].map(devices)).drop(columns=["run", "targets"])
    print(rows.to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
