"""Writing outputs safely: checked before any work, appearing whole or not at all, never silently replaced.

`check_output_dir` (and `check_output_file`) say before a long run whether its output path can be
written, naming the path and the fix. `atomic_dir` writes a folder into a temporary sibling and renames it
into place; replacing an existing folder moves the old one to a backup sibling first, so a kill at any
moment leaves either the old or the new folder at the path, or the backup that `recover` (run by the next
write or load of that path) moves back. Temporary siblings of writers that are no longer running are
removed by the next write. Everything is created with the user's umask (not `mkdtemp`'s 0700).
`weights_hash` and `tensor_sha256` are the digests that tie saved artifacts to the weights they belong to.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

FORCE_HINT = "pass --force (Python: force=True / overwrite=True) to replace it"


class CorruptArtifactError(RuntimeError):
    """An artifact file is missing, unreadable, or does not match the checksum recorded when it was written."""


def check_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """`path` as a Path if a folder can be written there, else an error naming it and the fix.

    Raises NotADirectoryError if `path` (or a parent) is a file, FileExistsError if it is a non-empty folder
    and not `overwrite`, PermissionError if its nearest existing parent cannot be written (tried for real).
    """
    path = Path(path)
    recover(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"Output {path} is a file, not a folder: choose a folder path or remove the file.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"Output {path} exists and is not empty; {FORCE_HINT}.")
    _check_writable_parent(path)
    return path


def check_output_file(path: str | Path) -> Path:
    """`path` as a Path if a file can be written there (not a folder, parent writable), else an error naming it."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"Output {path} is a folder, not a file: give a file path.")
    _check_writable_parent(path)
    return path


def _check_writable_parent(path: Path) -> None:
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"Cannot create output {path}: {parent} is a file, not a folder.")
    try:
        probe = parent / f".irunlearn-write-test.{os.getpid()}.{secrets.token_hex(4)}"
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise PermissionError(
            f"Cannot create output {path}: {parent} is not writable ({err.strerror}). Choose another path."
        ) from None


def recover(path: str | Path) -> None:
    """Finish a replacement of `path` that was killed halfway: restore the backup if `path` is gone, else
    drop it; and remove temporary siblings whose writer is no longer running."""
    path = Path(path)
    backup = _backup(path)
    if backup.exists():
        if path.exists():
            shutil.rmtree(backup)
        else:
            os.replace(backup, path)
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.partial.*"):
            if not _running(stale.name.split(".")[-2]):
                shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success, move it to `path` (see the module docstring).

    An existing non-empty `path` is an error unless `overwrite`; then it is replaced only after the new
    contents are complete. On an exception the temporary folder is removed and `path` is untouched.
    """
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.{os.getpid()}.{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        yield tmp
        _apply_umask(tmp)
        if path.exists():
            backup = _backup(path)
            os.replace(path, backup)
            os.replace(tmp, path)
            shutil.rmtree(backup)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _apply_umask(folder: Path) -> None:
    """Give `folder` and everything in it the modes a plain mkdir / open would (some writers, e.g.
    safetensors, create their files 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for item in [folder, *folder.rglob("*")]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def _backup(path: Path) -> Path:
    return path.with_name(f".{path.name}.backup")


def _running(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer of `model` (a model, an SAE), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (with its dtype and shape, so a reinterpretation does not match)."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()
