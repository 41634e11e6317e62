"""Every tensor irunlearn creates is created on the model's device (checkable on a CPU-only machine).

The recognise → forget (every method) → evaluate (genuineness included) path runs under `DeviceCheck`,
which lists each place in irunlearn that made a tensor without `device=` or called `.numpy()` on a tensor
that may live on a GPU. `analysis/gpu_smoke.py` runs the same path on CUDA where one exists.
"""

import pytest
from device_check import DeviceCheck

from irunlearn import activations
from irunlearn.methods import METHODS, forget
from irunlearn.world.recognition import recognize_world
from irunlearn.world.tasks import resolve_targets, world_evaluator, world_task


@pytest.mark.slow
def test_recognise_forget_evaluate_create_every_tensor_on_the_models_device(ew):
    with DeviceCheck() as check:
        recognizer, _ = recognize_world(ew, progress=False)
        task = world_task(ew, resolve_targets(ew, n_random=1, seed=4), recognizer)
        evaluator = world_evaluator(ew, task, n_retain_eval=8)
        for method in METHODS:
            result = forget(ew.model, ew.sae, task, method=method, max_steps=2, progress=False)
            evaluator.evaluate(result.model, genuineness=method == "sae_guided")
    assert not check.sites, f"tensors created without device= at: {sorted(check.sites)}"
    assert not check.numpy_sites, f".numpy() on a tensor not moved to the CPU at: {sorted(check.numpy_sites)}"


def test_the_device_check_sees_what_it_checks():
    """The check can fail: code attributed to an irunlearn file is recorded exactly when it breaks the rule."""
    source = "import torch\nx = torch.zeros(3)\ny = torch.zeros(3, device='cpu')\nx.numpy()\ny.cpu().numpy()\n"
    with DeviceCheck() as check:
        exec(compile(source, activations.__file__, "exec"), {})
    assert check.sites == {"activations.py:2"}
    assert check.numpy_sites == {"activations.py:4"}
