"""Files and folders written atomically, never replacing one silently.

Everything keras_kd writes (students, exports, caches, their records) goes
through `atomic_path`: the content is written beside the destination under a
temporary name, then renamed onto it, so a run killed mid-write leaves either
the previous file or the new one, never a truncated mix.
"""

import contextlib
import errno
import os
import shutil
import uuid


def check_destination(path, force=False, what="Output", kind="file"):
    """Raises `ValueError` if `path` cannot receive a new file or folder.

    Called before any long work (training, conversion), so that a bad
    destination fails first, not after the work is done.

    Args:
        path: the destination.
        force: whether an existing destination may be replaced.
        what: what is written there, for messages (e.g. `"Student"`).
        kind: `"file"` or `"folder"`: what will be written at `path`.

    Raises:
        ValueError: if `path` exists (and `force` is false), is a folder
            where a file goes or a file where a folder goes, or its parent
            folder cannot be created or written.
    """
    path = os.fspath(path)
    if os.path.isdir(path) and kind == "file":
        raise ValueError(
            f"{what} path '{path}' is a folder, but a file is written there. "
            f"Pass a file path."
        )
    if os.path.exists(path) and not os.path.isdir(path) and kind == "folder":
        raise ValueError(
            f"{what} path '{path}' is a file, but a folder is written there. "
            f"Pass a folder path."
        )
    if os.path.exists(path) and not force:
        raise ValueError(
            f"{what} '{path}' already exists and is not replaced silently. "
            f"Pass another path, or force the overwrite (--force, force=True)."
        )
    parent = _existing_parent(path)
    if not os.path.isdir(parent):
        raise ValueError(
            f"{what} path '{path}' is inside '{parent}', which is a file, not "
            f"a folder. Pass a path in a folder."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"{what} path '{path}' cannot be written: no write permission in "
            f"'{parent}'. Pass a path in a folder you can write to."
        )


def check_output_folder(folder, names, force=False, what="Output folder"):
    """Checks a folder and every file a run will write in it, before the run.

    An existing folder is fine; a file of `names` already in it is replaced
    only with `force`, so a run never overwrites work it did not write.

    Args:
        folder: the output folder (created later if missing).
        names: the file names the run writes in `folder`.
        force: whether existing files of `names` may be replaced.
        what: what the folder is, for messages.

    Raises:
        ValueError: if `folder` is a file, cannot be written, or holds one of
            `names` while `force` is false (all such files are named).
    """
    check_destination(folder, True, what, "folder")
    if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} '{folder}' cannot be written: no write permission. "
                         f"Pass a folder you can write to.")
    existing = [name for name in names if os.path.exists(os.path.join(folder, name))]
    if existing and not force:
        raise ValueError(
            f"{what} '{folder}' already holds {', '.join(existing)}, which are not replaced "
            f"silently. Pass another folder, or force the overwrite (--force, force=True)."
        )


@contextlib.contextmanager
def atomic_path(path, force=False):
    """Yields a temporary path beside `path`; moves it onto `path` on success.

    The temporary name keeps `path`'s suffix (Keras checks `.keras` and
    `.weights.h5`) and holds `PARTIAL`, so a write killed before its rename
    is recognized later (`remove_partial_writes`). If the block raises, the
    temporary file or folder is removed and `path` is left as it was.

    Args:
        path: the destination file or folder.
        force: replace an existing destination (else `ValueError`).

    Yields:
        The temporary path to write to.

    Raises:
        ValueError: if `path` exists and `force` is false.

    Example:

    ```python
    with atomic_path("student.keras") as partial:
        student.save(partial)
    ```
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not force:
        check_destination(path, force)
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    stem, suffix = _split_suffixes(name)
    token = uuid.uuid4().hex[:8]
    partial = os.path.join(folder, f".{stem}{PARTIAL}{token}{suffix}")
    try:
        yield partial
        if os.path.isdir(partial) and os.path.exists(path):
            # A folder cannot be renamed onto another: move the old one
            # aside first, so that one of the two is always complete.
            old = os.path.join(folder, f".{stem}.old-{token}{suffix}")
            os.replace(path, old)
            os.replace(partial, path)
            _remove(old)
        else:
            if os.path.isdir(path):
                _remove(path)
            os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            _remove(partial)


PARTIAL = ".partial-"
"""Marks the temporary name of a write in progress (`atomic_path`)."""


class WriteFailed(OSError):
    """A file could not be written (e.g. a full disk); the message says what
    was kept. Raised with the `errno` of the underlying `OSError`."""

    def __str__(self):
        return str(self.strerror)


def remove_partial_writes(folder):
    """Removes what writes killed before their rename left in `folder`.

    `atomic_path` removes its temporary file when the write raises; a
    process killed mid-write (or crashed in a native library) cannot, and
    leaves a hidden file whose name holds `PARTIAL`. Nothing else has such
    a name, so these are removed without being read.

    Args:
        folder: the folder to clean (nothing happens if it does not exist).

    Returns:
        The names removed, sorted.
    """
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.startswith(".") and PARTIAL in n)
    for name in names:
        _remove(os.path.join(folder, name))
    return names


def check_free_space(folder, needed):
    """Raises `WriteFailed` (ENOSPC) if `folder`'s file system has less than
    `needed` bytes free, before a write that would fail halfway.

    Args:
        folder: an existing folder.
        needed: bytes the write needs.
    """
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise WriteFailed(errno.ENOSPC, f"no space left on device: {needed / 2**20:.1f} MiB needed, "
                                        f"{free / 2**20:.1f} MiB free")


def _split_suffixes(name):
    """`("student", ".keras")`; Keras's compound `("epoch-3", ".weights.h5")`."""
    if name.endswith(".weights.h5") and len(name) > len(".weights.h5"):
        return name[:-len(".weights.h5")], ".weights.h5"
    return os.path.splitext(name)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _existing_parent(path):
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return parent


__all__ = [
    "PARTIAL",
    "WriteFailed",
    "atomic_path",
    "check_destination",
    "check_free_space",
    "check_output_folder",
    "remove_partial_writes",
]
