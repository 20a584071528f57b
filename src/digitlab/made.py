"""Training data digitlab makes itself, kept for the next training that needs the same.

A CNN's training makes digits written with hollow strokes and photographed, read back through
preprocessing, and draws non-digits: about a minute and a half on 2 cores before its first
epoch. The same digits, seed and code make the same data, so a teacher running the demo again,
``make ready-models`` or the tests take it from ``$DIGITLAB_HOME/made/`` in a second.

An entry's name is a hash of everything that made it: the function, its arguments (the digits'
bytes too), the source of the modules that draw and prepare, the installed fonts and the
versions of NumPy, SciPy and Pillow. A change to any of them makes a new entry; the
KEPT_ENTRIES used last are kept (a CNN's training makes five, ~20 MB in all). Deleting the
folder only costs the time to make them again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from digitlab import config, fileio

KEPT_ENTRIES = 16
UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def folder() -> Path:
    return config.digitlab_home() / "made"


@functools.cache
def _code() -> bytes:
    """What made data depends on besides the arguments."""
    import PIL
    import scipy

    from digitlab import augment, preprocess, synthetic

    digest = hashlib.sha256()
    for module in (augment, preprocess, synthetic):
        digest.update(Path(module.__file__).read_bytes())
    for version in (np.__version__, scipy.__version__, PIL.__version__):
        digest.update(version.encode())
    fonts = synthetic.training_font_paths().values()
    for path in sorted(str(path) for paths in fonts for path in paths):
        digest.update(path.encode())
    return digest.digest()


def _key(make: Callable, arguments: tuple) -> str:
    digest = hashlib.sha256(_code())
    digest.update(f"{make.__module__}.{make.__qualname__}".encode())
    for argument in arguments:
        if isinstance(argument, np.ndarray):
            digest.update(f"{argument.dtype}{argument.shape}".encode())
            digest.update(np.ascontiguousarray(argument).tobytes())
        else:
            digest.update(repr(argument).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def made(make: Callable, *arguments) -> tuple[np.ndarray | tuple[np.ndarray, ...], bool]:
    """``make(*arguments)`` (an array or a tuple of arrays, the same for the same arguments)
    -> (it, whether it was kept from before). Kept afterwards when the folder is writable."""
    path = folder() / f"{_key(make, arguments)}.npz"
    with contextlib.suppress(*UNREADABLE):  # absent, or damaged: make it again
        with np.load(path, allow_pickle=False) as stored:
            arrays = tuple(stored[f"arr_{index}"] for index in range(len(stored.files)))
        os.utime(path)  # used last: kept longest
        return (arrays if len(arrays) > 1 else arrays[0]), True
    result = make(*arguments)
    with contextlib.suppress(OSError):  # a read-only or full disk: made, only not kept
        with fileio.atomic_path(path) as temporary:
            np.savez(temporary, *(result if isinstance(result, tuple) else (result,)))
        _trim(path.parent)
    return result, False


def _trim(where: Path) -> None:
    """Delete all but the KEPT_ENTRIES used last, and killed writers' leftovers."""
    fileio.remove_leftovers(where)
    entries = [entry for entry in where.glob("*.npz") if not entry.name.startswith(".")]
    entries.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
    for entry in entries[KEPT_ENTRIES:]:
        entry.unlink(missing_ok=True)
