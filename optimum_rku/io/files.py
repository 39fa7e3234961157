"""Atomic writes: a file or a directory is written beside its target and renamed into place, so readers never see a
half-written output and a failure leaves the previous one untouched."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = ".tmp") -> Path:
    """Call `write(tmp)` on a temporary sibling of `path` (parents created), then rename it onto `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())  # mkstemp's 0600 would make the file private
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write indented JSON (and a final newline) atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def staged_directory(target: str | os.PathLike, *, private: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling of `target`; on success it replaces `target`, on failure it is removed.

    The directory is world-readable like a normal one unless `private` (mkdtemp's 0700).
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    if not private:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make the directory private
    try:
        yield tmp
        install_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def install_directory(staged: Path, target: Path) -> None:
    """Move a fully written directory `staged` (beside `target`) to `target`, replacing an existing one by renames."""
    if target.exists():
        backup = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(backup)
        staged.rename(target)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        staged.rename(target)
