"""Atomic writes: a reader never sees half a file, and a killed writer leaves no good-looking one.

Temporary names are ``.<name>.<pid>.<random>.tmp[suffix]`` beside the final path, so that
``remove_leftovers`` can tell a killed writer's leftovers from a live writer's work.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LEFTOVER = re.compile(r"^\..+\.(\d+)\.[^.]*\.tmp(\.[A-Za-z0-9]+)?$")
# A leftover whose writer's process id is alive is kept, unless it is older than this (the
# id may have been reused, or the writer lives on another machine sharing the folder).
LEFTOVER_MAX_AGE_SECONDS = 24 * 3600


@functools.cache
def umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def leftover_name(name: str) -> str:
    """The prefix of a temporary name for ``name``: marks it as this process's."""
    return f".{name}.{os.getpid()}."


class WriteError(OSError):
    """Writing a file failed; the message names the file (a full disk names no file)."""


def _named(error: OSError, path: Path) -> OSError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        return WriteError(error.errno, f"cannot write {path}: {error.strerror}")
    return error


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, rename."""
    with atomic_path(path) as temporary:
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise _named(error, Path(path)) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    For writers that want a file name rather than bytes (Keras, matplotlib). The temporary
    name keeps the suffix, because those writers pick the format from it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            prefix=leftover_name(path.stem), suffix=f".tmp{path.suffix}", dir=path.parent
        )
    except OSError as error:
        raise _named(error, path) from None
    os.close(handle)
    temporary = Path(name)
    os.chmod(temporary, 0o666 & ~umask())  # mkstemp makes 0600; the result is a normal file
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        raise _named(error, path) from None
    finally:
        if temporary.exists():
            temporary.unlink()


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it into place only when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(
        tempfile.mkdtemp(prefix=leftover_name(path.name), suffix=".tmp", dir=path.parent)
    )
    os.chmod(temporary, 0o777 & ~umask())
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def point_symlink(link: Path, target_name: str) -> None:
    """Make ``link`` a relative symlink to ``target_name``, replacing any old one atomically."""
    temporary = link.with_name(f"{leftover_name(link.name)}link.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    temporary.symlink_to(target_name)
    os.replace(temporary, link)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_leftovers(folder: Path, max_age: float = LEFTOVER_MAX_AGE_SECONDS) -> list[Path]:
    """Delete the temporary files and folders that killed writers left in ``folder``.

    A leftover goes when its writer's process is gone, or when it is older than ``max_age``
    seconds. Returns what was removed; a folder that cannot be listed is left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = LEFTOVER.match(entry.name)
        if not match:
            continue
        try:
            age = now - entry.lstat().st_mtime
        except OSError:
            continue
        if _alive(int(match.group(1))) and age < max_age:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            continue
    return removed


def remove_leftovers_below(root: Path) -> list[Path]:
    """``remove_leftovers`` in ``root`` and in each folder directly inside it."""
    root = Path(root)
    try:
        folders = [root, *(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())]
    except OSError:
        return []
    return [path for folder in folders for path in remove_leftovers(folder)]
