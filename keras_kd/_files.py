"""Files and folders written atomically, never replacing one silently.

Everything keras_kd writes (students, exports, caches, their records) goes
through `atomic_path`: the content is written beside the destination under a
temporary name, then renamed onto it, so a run killed mid-write leaves either
the previous file or the new one, never a truncated mix.
"""

import contextlib
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


@contextlib.contextmanager
def atomic_path(path, force=False):
    """Yields a temporary path beside `path`; moves it onto `path` on success.

    The temporary name keeps `path`'s suffix (Keras checks `.keras`). If the
    block raises, the temporary file or folder is removed and `path` is left
    as it was.

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
    stem, suffix = os.path.splitext(name)
    token = uuid.uuid4().hex[:8]
    partial = os.path.join(folder, f".{stem}.partial-{token}{suffix}")
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
