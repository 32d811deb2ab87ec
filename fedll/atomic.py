"""Atomic file writes: a reader (or a resumed run) sees the whole file or none of it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends it replaces ``path``
    (``os.replace``: atomic within one file system); when the block raises it is removed and
    ``path`` is left as it was.

    The name is hidden and unique per process and call, so concurrent writers never share
    it; it ends in ``.tmp``, so a writer that infers a format from the name must be told it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
