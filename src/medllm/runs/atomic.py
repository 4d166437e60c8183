"""Files written whole or not at all: a reader, a parallel job or a kill never finds half a file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, content: str | Callable[[Path], None], *, durable: bool = False) -> None:
    """Write ``content`` (text, or a function that writes the file it is given) to a temporary file beside
    ``path``, then rename it over ``path``. ``durable``: flushed to disk before the rename, so a crash of the
    machine leaves the previous file, not an empty one (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            content(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
