"""Atomic writes: a temporary file or folder next to the target, then renamed over it."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


_DEFAULT_MODE = 0o666
_DEFAULT_FOLDER_MODE = 0o777


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask briefly changes process state, which is not thread-safe.
_UMASK = _read_umask()


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path`` and rename it onto ``path`` on success.

    A reader never sees a partial file: if the block raises (or the process is killed), the
    target keeps its old content and the temporary file is removed where possible.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates the file readable by the owner only; give it the usual permissions.
    os.chmod(temporary, _DEFAULT_MODE & ~_UMASK)
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def staging_folder(target: str | Path) -> Path:
    """Create an empty temporary folder next to ``target`` for :func:`replace_folder`.

    Its permissions follow the umask, as for a folder made with ``mkdir``, so the folder that
    replaces ``target`` is not left readable by the owner only as ``mkdtemp`` makes it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    os.chmod(folder, _DEFAULT_FOLDER_MODE & ~_UMASK)
    return folder


def replace_folder(staging: str | Path, folder: str | Path) -> None:
    """Move ``staging`` to ``folder``; an existing ``folder`` is moved aside, then deleted.

    Readers see the old folder or the new one, never a mix, except in the moment between the
    two renames when ``folder`` does not exist.
    """
    staging, folder = Path(staging), Path(folder)
    if not folder.exists():
        os.replace(staging, folder)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.replace(folder, retired / folder.name)
    os.replace(staging, folder)
    shutil.rmtree(retired, ignore_errors=True)


def output_file_problem(path: str | Path, example_name: str) -> str | None:
    """Return why :func:`atomic_write` cannot write ``path``, or None when it can.

    The writer creates missing parent folders, so the nearest existing ancestor must be a
    writable folder. The message starts with ``path``'s repr; a folder given in place of a file
    gets ``path / example_name`` as the suggested file name.
    """
    path = Path(path)
    fix = "choose a file path in a writable folder that exists or can be created"
    try:
        if path.is_dir():
            return f"{str(path)!r} is a folder; give a file path such as {path / example_name}"
        folder = path.parent
        while not folder.exists():
            folder = folder.parent
    except OSError as error:
        return f"{str(path)!r} cannot be checked ({error}); {fix}"
    if not folder.is_dir():
        return f"{str(path)!r} cannot be written because {folder} is not a folder; {fix}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{str(path)!r} cannot be written because folder {folder} is not writable; {fix}"
    return None
