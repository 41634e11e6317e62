"""A torch function mode that records where irunlearn creates a tensor without naming its device.

CPU-only machines cannot see a tensor that would land on the wrong device, so the suite checks the cause
instead: every tensor factory (`torch.tensor`, `zeros`, `arange`, ...) called from irunlearn's own code
must pass `device=` (calls drawing from a seeded CPU `generator=` are exempt: they are moved with `.to`),
and `.numpy()` may only be called on the result of `.cpu()`.
"""

from __future__ import annotations

import os
import sys
import weakref

import torch
from torch.overrides import TorchFunctionMode

import irunlearn

PACKAGE = os.path.dirname(irunlearn.__file__)
FACTORIES = {
    torch.tensor,
    torch.as_tensor,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.empty,
    torch.arange,
    torch.linspace,
    torch.eye,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
}


class DeviceCheck(TorchFunctionMode):
    """Inside `with DeviceCheck() as check:`, `check.sites` collects `file:line` of irunlearn code that
    created a tensor without `device=`, and `check.numpy_sites` those that called `.numpy()` on a tensor
    not just moved to the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: set[str] = set()
        self.numpy_sites: set[str] = set()
        self._on_cpu: dict[int, weakref.ref] = {}  # id → the `.cpu()` result (weak: ids get reused)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func in FACTORIES and kwargs.get("device") is None and "generator" not in kwargs:
            self._record(self.sites)
        elif func is torch.Tensor.cpu:
            self._on_cpu[id(result)] = weakref.ref(result)
        elif func is torch.Tensor.numpy:
            moved = self._on_cpu.get(id(args[0]))
            if moved is None or moved() is not args[0]:
                self._record(self.numpy_sites)
        return result

    @staticmethod
    def _caller() -> str | None:
        frame = sys._getframe(3)
        while frame is not None and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
            frame = frame.f_back
        if frame is None or not frame.f_code.co_filename.startswith(PACKAGE):
            return None
        return f"{os.path.relpath(frame.f_code.co_filename, PACKAGE)}:{frame.f_lineno}"

    def _record(self, sites: set[str]) -> None:
        site = self._caller()
        if site is not None:
            sites.add(site)
