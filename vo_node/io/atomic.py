"""Atomic file writes: a temporary file in the target folder, flushed, then renamed over."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


_DEFAULT_MODE = 0o666


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
