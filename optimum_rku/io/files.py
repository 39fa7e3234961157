"""Atomic writes: a file or a directory is written beside its target and moved into place in one step, so readers
never see a half-written output, a failure leaves the previous one untouched, and so does a killed process.

A staged entry is named `.{target name}.tmp-{host}-{pid}-{random}` (a directory being replaced is parked as
`.{target name}.old-...`). A process killed at any point leaves the target holding either the previous state or the
complete new one, plus at most such a hidden sibling. The next write to the same target removes the leftovers of
processes that are gone (one log line each) and, if a kill fell between the two renames of a replace (only where the
kernel cannot swap two directories in one step), first renames the parked previous directory back (`clean_stale`);
readers of a missing local checkpoint do the same (`restore_interrupted`). Leftovers of live processes, or of another
host sharing the directory, are left alone.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_KINDS = ("tmp", "old")


# ------------------------------------------------------------------------------------------------ staged names
def _host_token() -> str:
    """Six hex digits naming this machine, so a shared directory never mistakes another host's process for dead."""
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def staging_name(target: Path, kind: str = "tmp", suffix: str = "") -> str:
    """A fresh hidden sibling name for `target` owned by this process (`kind`: "tmp" staged, "old" parked)."""
    if kind not in _KINDS:
        raise ValueError(f"kind={kind!r}; allowed: {_KINDS}.")
    return f".{target.name}.{kind}-{_host_token()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def _pattern(target: Path) -> re.Pattern[str]:
    name = re.escape(target.name)
    return re.compile(rf"^\.{name}\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{{6}})-(?P<pid>\d+)-[0-9a-f]{{8}}(\.\w+)?$")


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a process of another user counts as alive)."""
    if pid == os.getpid() or sys.platform == "win32":  # Windows: signal 0 is CTRL_C_EVENT, never probe with it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # no permission (another user's process), or no signal 0 here: never delete what may be in use
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the staged / parked siblings of `target` left by dead processes of this host; return what was handled.

    If `target` is missing and a parked previous directory exists (a kill between the two renames of a replace), it
    is renamed back to `target` first: the previous state, never a half-written one.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    pattern, host = _pattern(target), _host_token()
    stale: list[tuple[str, Path, int]] = []
    for entry in parent.iterdir():
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid = int(match["pid"])
        if match["host"] != host:
            logger.info("Leaving %s alone: it was written on another host (process %d there).", entry, pid)
        elif not _alive(pid):
            stale.append((match["kind"], entry, pid))
    handled = []
    parked = sorted((e for e in stale if e[0] == "old"), key=lambda e: e[1].stat().st_mtime, reverse=True)
    if parked and not os.path.lexists(target):
        _, entry, pid = parked[0]
        os.rename(entry, target)
        logger.warning(
            "Restored %s from %s: process %d was killed while replacing it; this is the previous state.",
            target,
            entry.name,
            pid,
        )
        handled.append(entry)
        stale = [e for e in stale if e[1] != entry]
    for _, entry, pid in stale:
        _remove(entry)
        logger.warning("Removed %s, left by an interrupted write of %s (process %d is gone).", entry, target.name, pid)
        handled.append(entry)
    return handled


def restore_interrupted(path: str | os.PathLike) -> bool:
    """Before reading a local directory that is missing, restore it from an interrupted replace; True if restored."""
    path = Path(path).expanduser()
    if os.path.lexists(path) or not path.parent.is_dir():
        return False
    clean_stale(path)
    return path.exists()


def _new_sibling(target: Path, kind: str, directory: bool, suffix: str = "") -> Path:
    """Create a staged sibling (mode from the umask, like a normal file or directory) and return its path."""
    for _ in range(100):
        path = target.parent / staging_name(target, kind, suffix)
        try:
            if directory:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a staging name beside {str(target)!r}.")


# ------------------------------------------------------------------------------------------------ scratch dirs
def scratch_dir(prefix: str) -> Path:
    """A new private directory in the system temp dir named `{prefix}{host}-{pid}-...`; the ones earlier processes of
    this host left there under the same prefix (killed before they could remove them) are removed first."""
    import tempfile

    mine = f"{prefix}{_host_token()}-"
    own = re.compile(rf"^{re.escape(mine)}(?P<pid>\d+)-")
    root = Path(tempfile.gettempdir())
    for entry in root.iterdir():
        match = own.match(entry.name)
        if match is not None and entry.is_dir() and not _alive(int(match["pid"])):
            _remove(entry)
            logger.info("Removed %s, left by process %s (gone).", entry, match["pid"])
    return Path(tempfile.mkdtemp(prefix=f"{mine}{os.getpid()}-", dir=root))


# ------------------------------------------------------------------------------------------------------ files
def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = ".tmp") -> Path:
    """Call `write(tmp)` on a staged sibling of `path` (parents created), then rename it onto `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    tmp = _new_sibling(target, "tmp", directory=False, suffix=suffix)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write indented JSON (and a final newline) atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------------ directories
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux renameat2 RENAME_EXCHANGE); False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    sys.audit("optimum_rku.io.files.exchange", os.fspath(a), os.fspath(b))  # like os.rename's audit event
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False  # the file system cannot swap: fall back to two renames
    raise OSError(code, os.strerror(code), str(b))


def install_directory(staged: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a fully written directory `staged` (beside `target`, or inside a staged sibling) to `target`.

    An existing `target` is swapped out in one step where the kernel can; elsewhere it is parked beside, and a kill
    between the two renames is undone by the next run or reader (`clean_stale`).
    """
    staged, target = Path(staged), Path(target)
    if not os.path.lexists(target):
        os.rename(staged, target)
        return
    if _exchange(staged, target):
        _remove(staged)  # now the previous state under a staged name: a kill here leaves a stale sibling only
        return
    parked = target.parent / staging_name(target, "old")
    os.rename(target, parked)
    try:
        os.rename(staged, target)
    except BaseException:
        os.rename(parked, target)
        raise
    _remove(parked)


def new_staging_directory(target: str | os.PathLike, *, private: bool = False) -> Path:
    """An empty staged directory beside `target` owned by this process (removed by `clean_stale` once it is gone).

    World-readable like a normal directory unless `private` (0700).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = _new_sibling(target, "tmp", directory=True)
    if private:
        path.chmod(0o700)
    return path


@contextmanager
def staged_directory(target: str | os.PathLike, *, private: bool = False) -> Iterator[Path]:
    """Yield an empty staged sibling of `target`; on success it replaces `target`, on failure it is removed.

    Callers check beforehand whether replacing `target` is allowed (`check_save_dir`).
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = new_staging_directory(final, private=private)
    try:
        yield tmp
        install_directory(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
