"""Writing files safely: a file appears under its final name complete, or not at all.

Every file mvpseg writes (checkpoints, label maps, overlays, metrics, configs) goes through
:func:`atomic_write`: written to a temporary sibling, flushed to disk, then renamed onto the final
name, so a crash, a kill or a power loss never leaves an empty or partial file that looks finished.
Files get the permissions any new file of the user gets (``0o666`` less the umask), even when the
writer replaces the temporary file with its own (safetensors 0.8 renames a ``0600`` file of its making
over the path it is given): the mode the kernel gave the temporary file is put back before the rename.

A folder of many files (a prepared dataset split) is built under :func:`staging_dir`'s hidden name and given
its own by :func:`publish_dir` once complete, so that a killed run never leaves a folder that looks finished.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "publish_dir", "read_state_dict", "staging_dir", "write_text"]


def _fsync(path: str | os.PathLike[str], directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        descriptor = os.open(path, flags)
    except OSError:  # e.g. directories cannot be opened on Windows: nothing to flush there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # file systems without fsync (some network mounts): the rename is still atomic
    finally:
        os.close(descriptor)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)``, flush the file to disk, then rename it onto ``path``.

    Args:
        path: the final file; its folder is created if needed.
        write: writes the whole file to the temporary path it is given (same folder, so the rename
            is atomic).

    Returns:
        The final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    # Created by the kernel with mode 0o666 filtered by the umask: the user's normal permissions.
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = stat.S_IMODE(os.fstat(descriptor).st_mode)
    os.close(descriptor)
    try:
        write(str(tmp))
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # the writer replaced our file with one of its own
            os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)  # the rename itself survives a power loss
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a UTF-8 text file atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def staging_dir(final: str | os.PathLike[str]) -> Path:
    """The hidden sibling ``.<name>.partial`` in which the folder ``final`` is built (see :func:`publish_dir`).

    Args:
        final: the folder's final path.

    Returns:
        The staging folder's path (not created).
    """
    final = Path(final)
    return final.parent / f".{final.name}.partial"


def publish_dir(staging: str | os.PathLike[str], final: str | os.PathLike[str]) -> Path:
    """Give a completely written staging folder its final name, in one rename.

    Args:
        staging: the folder the files were written to (their writes already flushed, e.g. by :func:`atomic_write`).
        final: its name once complete; must not exist yet.

    Returns:
        The final path.

    Raises:
        FileExistsError: ``final`` exists already.
    """
    staging, final = Path(staging), Path(final)
    if final.exists():
        raise FileExistsError(f"{final} exists already: remove it or keep it, not both")
    _fsync(staging, directory=True)
    os.rename(staging, final)
    _fsync(final.parent, directory=True)
    return final


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A state dict from a safetensors file or a ``torch.save`` file (``weights_only=True``: nothing is unpickled).

    A ``{"state_dict": ...}`` wrapper is opened. A ValueError naming the file when it cannot be read or holds
    no state dict.
    """
    import torch  # here, not at the top: this module is imported where torch is not
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(
            path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors and torch raise several kinds for a file that is not a state dict
        raise ValueError(f"{path} is not a readable state dict of tensors ({type(error).__name__})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state
